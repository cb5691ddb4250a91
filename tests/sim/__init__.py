"""A deterministic simulator of replicas, a primary and a faulty network (issue 9, parts 3 and 4).

One seed decides the history (``history.py``); ``runner.py`` plays it against our real primary
and real replicas through a fault-injecting transport (``faults.py``); ``oracle.py`` checks the
consistency model at quiet points; ``shrink.py`` cuts a failing history down.  Run
``python -m tests.sim --help``; docs/simulator.md explains how to read the output.
"""
