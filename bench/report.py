"""What every benchmark reports the same way: the machine, medians, markdown tables, its doc section."""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
DOC_TITLE = (
    "# Benchmarks\n\n"
    "Figures written by the modules in `bench/` (`make bench`, or `python -m bench.run_all`).  The blocks "
    "between `bench:...` marker comments are rewritten by each run; the text around them is by hand.\n"
)


def machine() -> dict[str, str]:
    """CPU count and model (``nproc``, ``lscpu``), memory, kernel: what a reader needs to weigh figures."""
    out = {"cpus": str(len(os.sched_getaffinity(0))), "model": platform.processor() or "unknown"}
    if shutil.which("nproc"):
        out["cpus"] = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    if shutil.which("lscpu"):
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        found = dict(re.findall(r"^([^:\n]+):\s*(.*)$", text, re.MULTILINE))
        out["model"] = found.get("Model name", out["model"])
        if "Hypervisor vendor" in found:
            out["model"] += f", {found['Hypervisor vendor']} VM"
    try:
        with open("/proc/meminfo") as f:
            kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]
        out["memory"] = f"{kib / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        out["memory"] = "unknown"
    out["kernel"] = f"{platform.system()} {platform.release()}"
    return out


def filesystem(path: Path) -> str:
    """Type and device of the filesystem holding ``path`` (from /proc/mounts), e.g. ``ext4 on /dev/vda``."""
    best = ("", "unknown", "unknown")
    target = str(path.resolve())
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, fstype = line.split()[:3]
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[0]):
                    best = (mount, fstype, device)
    except OSError:
        pass
    return f"{best[1]} on {best[2]}"


def median(values: Sequence[float]) -> float:
    """The median (the middle run; the mean of the two middle ones for an even count)."""
    return statistics.median(values)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A GitHub-markdown table; columns listed in ``right`` are right-aligned, and cells padded to line up."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if i in right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(header), line(rule), *(line(r) for r in rows)])


def write_section(heading: str, key: str, body: str, doc: Path = DOC) -> None:
    """Put ``body`` between the ``bench:<key>`` markers under ``heading`` in ``doc``, creating what is missing.

    Only the text between the markers is replaced, so prose written by hand around them survives a re-run.
    Markers not found yet are added at the end of ``heading``'s section (the section is added if need be).
    """
    start = f"<!-- bench:{key}:start (written by the benchmark; edits here are overwritten) -->"
    end = f"<!-- bench:{key}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else DOC_TITLE
    found = re.search(rf"<!-- bench:{re.escape(key)}:start.*?-->.*?{re.escape(end)}", text, re.DOTALL)
    if found:
        text = text[: found.start()] + block + text[found.end() :]
    else:
        at = re.search(rf"^{re.escape(heading)}[ \t]*$", text, re.MULTILINE)
        if at:  # a new block goes at the end of its section, after what is already there
            following = re.search(r"^## ", text[at.end() :], re.MULTILINE)
            cut = at.end() + following.start() if following else len(text)
            rest = text[cut:].lstrip("\n")
            text = text[:cut].rstrip("\n") + f"\n\n{block}\n" + (f"\n{rest}" if rest else "")
        else:
            text = text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, doc)
