"""totals.csv, for a gradebook: one row per student with their points in each notebook, the total,
the most they could have got, and the percent.

A notebook a student did not hand in is left empty and counts 0 of its points; a file that matched
no solution (graded "unmatched") has no column.
"""
from __future__ import annotations

import csv
import io

from .notebook import Grade


def totals(rows: list[Grade]) -> list[list[str]]:
    """The table of totals.csv, its header first: student, each notebook, total, max, percent."""
    graded: dict[tuple[str, str], tuple[float, float]] = {}  # (student, notebook) → (points, max)
    for r in rows:
        if r.status != "unmatched":
            got, most = graded.get((r.student, r.notebook), (0, 0))
            graded[(r.student, r.notebook)] = (got + r.points, most + r.max)
    notebooks = sorted({notebook for _, notebook in graded})
    most = sum(max(m for (_, n), (_, m) in graded.items() if n == notebook) for notebook in notebooks)
    table = [["student", *notebooks, "total", "max", "percent"]]
    for student in sorted({r.student for r in rows}):
        mine = [graded.get((student, notebook)) for notebook in notebooks]
        got = sum(points for points, _ in filter(None, mine))
        table.append([student, *(f"{m[0]:g}" if m else "" for m in mine), f"{got:g}", f"{most:g}",
                      f"{100 * got / most:.1f}" if most else ""])
    return table


def totals_csv(rows: list[Grade]) -> str:
    """totals.csv's text."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(totals(rows))
    return text.getvalue()
