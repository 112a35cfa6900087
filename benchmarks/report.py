"""What the benchmark scripts print and write: one table of rows, the JSON, the misses.

A row is a dict with ``backend``, ``what``, ``baseline`` (measured in the same
run), ``measured``, ``ratio`` (None for a figure with no baseline),
``target`` and ``ok`` (None for a figure without a target). The scripts run
both as files (``python benchmarks/bench_x.py``) and as modules; each puts
the repository's root on ``sys.path`` first, so ``benchmarks.report``
imports either way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]

__all__ = ["Row", "publish", "table"]


def table(rows: list[Row], *, measured: str) -> str:
    """The rows as a Markdown table; ``measured`` heads the column of what was measured."""
    lines = [
        f"| backend | what | baseline (same run) | {measured} | ratio | target | met |",
        "|---|---|---|---|---:|---|---|",
    ]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:g}"
        met = "" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
        lines.append(
            f"| {r['backend']} | {r['what']} | {r['baseline']} | {r['measured']} | {ratio} "
            f"| {r['target']} | {met} |"
        )
    return "\n".join(lines)


def publish(meta: str, result: dict[str, Any], table_text: str, path: Path) -> None:
    """Print ``meta`` and the table, write ``meta`` and ``result`` to ``path`` as JSON,
    and list the targets missed on stderr."""
    print(meta + "\n\n" + table_text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, **result}, indent=2))
    print(f"\nfigures written to {path}")
    failed = [f"{r['backend']}: {r['what']}" for r in result["rows"] if r["ok"] is False]
    if failed:
        print("\ntargets missed:\n  " + "\n  ".join(failed), file=sys.stderr)
