"""``python -m tests.sim``: run seeds, print a one-line reproduction and a shrunk history per failure.

python -m tests.sim --seed 7 --steps 60            # one seed
python -m tests.sim --seeds 1000 --steps 200       # a campaign: seeds 0..999 (--first to move)
python -m tests.sim --seed 7 --steps 60 --keep 3,9,14   # a shrunk history
"""

from __future__ import annotations

import argparse
import sys
import time

from .history import KNOWN_BUGS, Options, generate
from .runner import Simulation
from .shrink import keep_only, shrink


def repro_line(
    seed: int, options: Options, keep: list[int] | None = None, tolerate: frozenset[str] = frozenset()
) -> str:
    """The one line that replays ``seed`` (and, with ``keep``, only those steps)."""
    parts = [f".venv/bin/python -m tests.sim --seed {seed} --steps {options.steps}"]
    if options.replicas != Options.replicas:
        parts.append(f"--replicas {options.replicas}")
    if not options.faults:
        parts.append("--no-faults")
    if not options.partial:
        parts.append("--no-partial")
    if options.big:
        parts.append("--big")
    if options.server != "primary":
        parts.append(f"--server {options.server}")
    if options.avoid:
        parts.append("--avoid " + ",".join(sorted(options.avoid)))
    if tolerate:
        parts.append("--tolerate " + ",".join(sorted(tolerate)))
    if keep is not None:
        parts.append("--keep " + ",".join(map(str, keep)))
    return " ".join(parts)


def run_seed(
    seed: int,
    options: Options,
    keep: list[int] | None,
    do_shrink: bool,
    verbose: bool,
    budget: float,
    tolerate: frozenset[str] = frozenset(),
) -> bool:
    """Run one seed; on failure print the reproduction, shrink, print the short history. True if it passed."""
    history = generate(seed, options)
    if keep is not None:
        history = keep_only(history, set(keep))
    started = time.monotonic()
    result = Simulation(history, verbose=verbose, tolerate=tolerate).run()
    for note in result.tolerated:
        print(f"seed {seed}: tolerated {note}", flush=True)
    took = time.monotonic() - started
    if result.failure is None:
        print(
            f"seed {seed}: ok ({len(history.steps)} steps, {result.syncs} syncs, "
            f"{len(result.faults)} faults, {took:.1f}s)",
            flush=True,
        )
        return True
    failure = result.failure
    print(f"seed {seed}: FAIL {failure} ({took:.1f}s)", flush=True)
    print(f"  repro: {repro_line(seed, options, keep, tolerate)}", flush=True)
    if do_shrink:

        def still_fails(candidate):  # type: ignore[no-untyped-def]
            again = Simulation(candidate, tolerate=tolerate).run().failure
            return again is not None and again.signature == failure.signature

        small = shrink(history, still_fails, budget, log=lambda m: print("  " + m, flush=True), upto=failure.step)
        kept = [s.index for s in small.steps]
        print(f"  shrunk to {len(small.steps)} steps: {repro_line(seed, options, kept, tolerate)}", flush=True)
        for spec in small.replicas:
            print(f"    replica {spec.name}: encrypted={spec.encrypted} policy={spec.policy} partial={spec.partial}")
        for step in small.steps:
            print(f"    {step.describe()}")
        again = Simulation(small, tolerate=tolerate).run().failure
        print(f"  shrunk history fails with: {again}", flush=True)
    return False


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 1 if any seed failed."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--seeds", type=int, default=1, help="run this many seeds, from --first")
    parser.add_argument("--first", type=int, default=0, help="first seed of a campaign")
    parser.add_argument("--steps", type=int, default=Options.steps)
    parser.add_argument("--replicas", type=int, default=Options.replicas)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--no-partial", action="store_true")
    parser.add_argument("--big", action="store_true", help="one transaction over 64 MiB per seed")
    parser.add_argument("--avoid", default="", help=f"steer around known bugs: {', '.join(KNOWN_BUGS)}")
    parser.add_argument("--tolerate", default="", help="checks whose failures are printed, not fatal (comma-separated)")
    parser.add_argument(
        "--server", choices=("primary", "tursodb"), default="primary", help="the server replicas sync with"
    )
    parser.add_argument("--keep", help="comma-separated step indices: replay a shrunk history")
    parser.add_argument("--no-shrink", action="store_true")
    parser.add_argument("--shrink-budget", type=float, default=300.0, help="seconds spent shrinking one failure")
    parser.add_argument("--regressions", action="store_true", help="replay every named regression seed")
    parser.add_argument("--multiproc", action="store_true", help="real processes and kill -9 (see multiproc.py)")
    parser.add_argument("--seconds", type=float, default=60.0, help="--multiproc: how long each run lasts")
    parser.add_argument("--no-kills", action="store_true", help="--multiproc: no process is killed")
    parser.add_argument("--daemon", action="store_true", help="--multiproc: the syncer is `turso-sync daemon`")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each step as it runs")
    args = parser.parse_args(argv)
    avoid = frozenset(x for x in args.avoid.split(",") if x)
    unknown = avoid - set(KNOWN_BUGS)
    if unknown:
        parser.error(f"--avoid {','.join(sorted(unknown))}: known bugs are {', '.join(KNOWN_BUGS)}")
    options = Options(
        args.steps, args.replicas, not args.no_faults, args.big, not args.no_partial, server=args.server, avoid=avoid
    )
    keep = [int(x) for x in args.keep.split(",")] if args.keep else None
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    started = time.monotonic()
    if args.multiproc:
        return _multiproc(args, seeds)
    if args.regressions:
        return _regressions()
    tolerate = frozenset(x for x in args.tolerate.split(",") if x)
    failed = [
        s
        for s in seeds
        if not run_seed(s, options, keep, not args.no_shrink, args.verbose, args.shrink_budget, tolerate)
    ]
    print(
        f"{len(seeds)} seeds x {args.steps} steps in {time.monotonic() - started:.0f}s: "
        f"{len(seeds) - len(failed)} passed, {len(failed)} failed {failed if failed else ''}".rstrip()
    )
    return 1 if failed else 0


def _regressions() -> int:
    from .regressions import REGRESSIONS, options_of

    bad = 0
    for reg in REGRESSIONS:
        history = generate(reg.seed, options_of(reg))
        if reg.keep is not None:
            history = keep_only(history, set(reg.keep))
        failure = Simulation(history).run().failure
        if reg.xfail:
            state = "still fails (open)" if failure is not None else "PASSES NOW: remove its xfail"
            bad += failure is None
        else:
            state = "passes" if failure is None else f"FAILS: {failure}"
            bad += failure is not None
        print(f"{reg.name}: {state}", flush=True)
    return 1 if bad else 0


def _multiproc(args: argparse.Namespace, seeds: list[int]) -> int:
    from .multiproc import run_multiproc

    failed = []
    for seed in seeds:
        result = run_multiproc(seed, args.seconds, args.replicas, not args.no_kills, args.daemon)
        flags = (
            f"--seconds {args.seconds:g}"
            + (" --no-kills" if args.no_kills else "")
            + (" --daemon" if args.daemon else "")
        )
        head = (
            f"seed {seed}: {result.attempted} transactions attempted, {result.acked} acknowledged, "
            f"{result.kills} replica kills, {result.primary_kills} primary kills, {result.seconds:.0f}s; "
            f"errors {dict(result.errors)}"
        )
        print(head, flush=True)
        if result.findings:
            failed.append(seed)
            print(f"  FAIL: repro: .venv/bin/python -m tests.sim --multiproc --seed {seed} {flags}", flush=True)
            for finding in result.findings:
                print(f"    {finding}", flush=True)
            print(f"    files, journal and process logs kept in {result.workdir}", flush=True)
    print(f"multi-process: {len(seeds)} runs, {len(failed)} failed {failed if failed else ''}".rstrip())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
