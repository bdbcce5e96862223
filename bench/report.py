"""What the LAN benchmarks print and write: a right-aligned table of their rows, and a
JSON file with the machine they ran on, so numbers from two machines are never mixed up.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Columns = Sequence[tuple[str, str]]  # (row key, title)


def table(rows: list[dict[str, Any]], columns: Columns) -> str:
    widths = [max(len(title), *(len(str(row[key])) for row in rows)) for key, title in columns]
    lines = [
        "  ".join(title.rjust(width) for (_, title), width in zip(columns, widths, strict=True))
    ]
    for row in rows:
        cells = (
            str(row[key]).rjust(width) for (key, _), width in zip(columns, widths, strict=True)
        )
        lines.append("  ".join(cells))
    return "\n".join(lines)


def write_result(out: Path, benchmark: str, rows: list[dict[str, Any]], **settings: Any) -> None:
    """Write *rows* with the machine and the run's *settings* to *out*, and say so."""
    result = {
        "benchmark": benchmark,
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        **settings,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
