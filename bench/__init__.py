"""Benchmarks: each ``bench_*.py`` module measures turso_sync against its peers in the same run.

A benchmark module exposes ``main(argv: list[str] | None = None) -> int``; ``python -m bench.run_all``
(``make bench``) finds and runs every one of them.  Modules print their table, ratios against the
peers measured in that run, and write their figures into their own section of ``docs/benchmarks.md``
through ``bench.report.write_section``.
"""
