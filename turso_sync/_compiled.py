"""The optional compiled helper, ``turso_sync._speedups`` (``turso_sync/_speedups.c``), if it is to be used.

``setup.py`` builds it where a C compiler is found; every function in it has a pure-Python twin next
to its caller, used when the module was not built or when the environment variable
``TURSO_SYNC_PURE_PYTHON`` is set to anything but ``""`` or ``"0"`` (so the tests can run the
fallbacks on a machine that has the module: ``make test`` does, for the suites that touch them).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON_ENV = "TURSO_SYNC_PURE_PYTHON"


def pure_python_forced() -> bool:
    """True when ``TURSO_SYNC_PURE_PYTHON`` asks for the pure-Python fallbacks."""
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def speedups() -> ModuleType | None:
    """The compiled module, or None where it is absent (no compiler at install) or refused by the environment."""
    if pure_python_forced():
        return None
    try:
        return importlib.import_module("turso_sync._speedups")
    except ImportError:
        return None


def fastvfs() -> ModuleType | None:
    """The compiled VFS shim (``turso_sync/_fastvfs.c``), or None where it is absent or refused the same way."""
    if pure_python_forced():
        return None
    try:
        return importlib.import_module("turso_sync._fastvfs")
    except ImportError:
        return None
