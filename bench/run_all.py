"""Run every benchmark module in ``bench/`` (the ``make bench`` entry point).

A benchmark is a module named ``bench_<topic>.py`` with ``main(argv) -> int``; adding one needs no
change here.  ``python -m bench.run_all local sync`` runs only the modules whose topic is named.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def discover() -> list[str]:
    """Topics of every ``bench_<topic>`` module in this package, sorted."""
    return sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules(bench.__path__)
        if info.name.startswith("bench_") and not info.ispkg
    )


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmark topics (all of them by default); non-zero if any failed."""
    wanted = sys.argv[1:] if argv is None else argv
    topics = discover()
    unknown = sorted(set(wanted) - set(topics))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(topics)}", file=sys.stderr)
        return 2
    failed = []
    for topic in wanted or topics:
        print(f"=== bench.bench_{topic} ===", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"bench.bench_{topic}")
        code = module.main([])
        print(f"=== bench.bench_{topic}: exit {code} after {time.perf_counter() - start:.0f} s ===", flush=True)
        if code:
            failed.append(topic)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
