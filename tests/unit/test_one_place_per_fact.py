"""One place for each fact: the page size and the reserved bytes live in ``turso_sync/page.py``,
the conflict policy names (and the default one) in ``sync/rebase.py``; every other module imports them.

Read from the source (``ast``), so a module that writes the number again fails here, named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import turso_sync
from turso_sync import page
from turso_sync.sync import rebase

PACKAGE = Path(turso_sync.__file__).parent

#: Module-level names that hold a page size or the reserved bytes.
NAMES = ("PAGE_SIZE", "P", "RESERVED_BYTES", "DEFAULT_PAGE_SIZE", "NEW_PAGE_SIZE")

#: Modules that still spell a fact out, waiting for their owners (each line: module, what it spells).
#: Remove a line when the module imports the fact instead.
NOT_YET: set[tuple[str, str]] = set()


def spelled_out() -> set[tuple[str, str]]:
    """(module, name) for every module-level name of ``NAMES`` set to a number,
    every ``page_size`` parameter defaulting to a number and every ``conflict`` parameter defaulting
    to a string, outside the facts' homes."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module in ("page.py", "sync/rebase.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in NAMES:
                        found.add((module, target.id))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = [*node.args.args, *node.args.kwonlyargs]
                defaults = [*[None] * (len(node.args.args) - len(node.args.defaults)), *node.args.defaults]
                defaults += node.args.kw_defaults
                for arg, default in zip(args, defaults, strict=True):
                    if not isinstance(default, ast.Constant):
                        continue
                    if arg.arg == "page_size" and isinstance(default.value, int):
                        found.add((module, "page_size"))
                    if arg.arg == "conflict" and isinstance(default.value, str):
                        found.add((module, "conflict"))
    return found


def test_page_size_reserved_bytes_and_the_default_policy_are_written_once() -> None:
    assert spelled_out() <= NOT_YET, "import the fact from turso_sync/page.py or sync/rebase.py"


def test_the_facts_hold_what_the_formats_need() -> None:
    assert page.PAGE_SIZE == 4096 and page.RESERVED_BYTES == 12 + 16  # AES-GCM nonce and tag
    assert rebase.POLICIES[0] == rebase.DEFAULT_POLICY
