"""What every bench writes besides its figures: the machine it ran on and the result file."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: Where the scripts write their JSON results by default.
RESULTS_DIR = ROOT / "bench" / "results"


def machine(**extra: Any) -> dict[str, Any]:
    """Cores, Python and platform, plus ``extra`` (library versions a bench depends on)."""
    return {"cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), **extra}


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, total) CPU ticks of the whole machine so far (``/proc/stat``; None elsewhere):
    on a shared VM the host's other tenants take the stolen ones, and latency with them."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time stolen between two `cpu_ticks` readings (0–1), or None."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def save(out: Path, result: Mapping[str, Any]) -> str:
    """Write ``result`` to ``out`` as indented JSON (creating its directory); the path to
    print, relative to the repository when it lies inside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)


def text_table(lines: list[list[str]]) -> str:
    """``lines`` (the head first) as aligned text: the first and last columns left-aligned,
    the figures between them right-aligned, a rule under the head."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    last = len(widths) - 1
    out: list[str] = []
    for n, line in enumerate(lines):
        cells = [c.ljust(w) if i in (0, last) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)
