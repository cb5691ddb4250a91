"""``daemon --metrics`` without a server: the daemon's registry, read back with prometheus-client's own parser."""

from __future__ import annotations

import math

from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from turso_sync.cli.metrics import SERIES, registry_for, render
from turso_sync.sync.daemon import ReplicaStatus


def status(path: str, **values: object) -> ReplicaStatus:
    base: dict[str, object] = {
        "path": path,
        "revision": "1",
        "pending_changes": 0,
        "bytes_sent": 0,
        "bytes_received": 0,
        "pulls": 0,
        "pushes": 0,
        "conflicts": 0,
        "errors": 0,
        "last_pull_unix_time": None,
        "last_push_unix_time": None,
        "connected": True,
        "lag_seconds": 0.0,
        "last_error": None,
    }
    base.update(values)
    return ReplicaStatus(**base)  # type: ignore[arg-type]


def samples(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels["replica"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_series_of_every_replica_parses_back_with_its_value():
    text = render([status("/a.db", pulls=3, lag_seconds=None), status('/b "x"\n.db', pending_changes=2)])
    values = samples(text)
    assert values[("turso_sync_pulls_total", "/a.db")] == 3
    assert values[("turso_sync_pending_changes", '/b "x"\n.db')] == 2
    assert math.isnan(values[("turso_sync_lag_seconds", "/a.db")])  # not known yet
    assert {name for name, _ in values} == {name for name, _, _, _ in SERIES}
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types["turso_sync_pulls"] == "counter" and types["turso_sync_up"] == "gauge"


def test_each_daemon_has_its_own_registry_read_at_scrape_time():
    first = [status("/one.db", pushes=1)]
    second = [status("/two.db", pushes=7)]
    one, two = registry_for(lambda: first), registry_for(lambda: second)  # no collision between them
    assert one.get_sample_value("turso_sync_pushes_total", {"replica": "/one.db"}) == 1
    assert two.get_sample_value("turso_sync_pushes_total", {"replica": "/two.db"}) == 7
    assert one.get_sample_value("turso_sync_pushes_total", {"replica": "/two.db"}) is None
    first[0] = status("/one.db", pushes=2)
    assert one.get_sample_value("turso_sync_pushes_total", {"replica": "/one.db"}) == 2


def test_a_scraper_asking_for_openmetrics_gets_it():
    registry = registry_for(lambda: [status("/a.db", errors=4)])
    encode, content_type = choose_encoder("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    text = encode(registry).decode()
    assert text.endswith("# EOF\n")
    errors = {s.name: s.value for f in parse_openmetrics(text) for s in f.samples}
    assert errors["turso_sync_errors_total"] == 4
    encode, content_type = choose_encoder("")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
