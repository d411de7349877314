"""The grading report: each submission's scored notebook and pages, then grades.csv, totals.csv and index.html.

`save_result` writes one graded submission into `out/<student>/`; `write_report` reads every
`*.grade.json` under `out` back, so runs (or cluster jobs) over parts of a class add up to one
report.
"""
from __future__ import annotations

import csv
import html
import io
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import nbformat

from ..errors import SdlabInputError
from .notebook import STATUSES, Grade, Submission
from .pages import feedback_page, notebook_page, page, safe_messages
from .totals import totals_csv

COLUMNS = ("student", "notebook", "exercise", "points", "max", "status", "message")


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name).lstrip(".") or "_"


def _owner(path: Path) -> tuple[str, str] | None:
    """(student, notebook) of a *.grade.json in a report folder (None when it does not say)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        first = (result.get("grades") or [{}])[0]
        student, notebook = result.get("student", first.get("student")), result.get("notebook", first.get("notebook"))
    except (OSError, ValueError, AttributeError, IndexError):
        return None
    return (student, notebook) if isinstance(student, str) and isinstance(notebook, str) else None


def check_report_folders(out: str | Path, subs: list[Submission]) -> None:
    """Refuse, before any grading, two students whose report folders would be the same (out/<slug>,
    "kim lee" and "kim_lee", or "Kim" and "kim" on a disk that ignores case), or two notebooks of
    one student whose report files would be: one would overwrite the other's grades."""
    students: dict[str, tuple[str, str]] = {}  # folder → (student, where they come from)
    notebooks: dict[tuple[str, str], tuple[str, str]] = {}
    earlier = [(who, f"the grades in {f}") for f in sorted(Path(out).glob("*/*.grade.json")) if (who := _owner(f))]
    for (student, notebook), where in [((s.student, s.notebook), str(s.path)) for s in subs] + earlier:
        folder = _slug(student).casefold()
        other, there = students.setdefault(folder, (student, where))
        if other != student:
            raise SdlabInputError(
                f"students {other!r} ({there}) and {student!r} ({where}) would share the report folder "
                f"{Path(out) / _slug(student)}: rename one of their submission folders (or use another --out)")
        other, there = notebooks.setdefault((folder, _slug(notebook).casefold()), (notebook, where))
        if other != notebook:
            raise SdlabInputError(
                f"{student}'s notebooks {other!r} ({there}) and {notebook!r} ({where}) would share the report "
                f"file {Path(out) / _slug(student) / _slug(notebook)}.ipynb: rename one of them")


def _table(rows: list[Grade], href=None) -> str:
    """An HTML table of grades; `href(row)` links each notebook name to its page."""
    def td(r, c):
        text = html.escape(str(getattr(r, c)))
        return f"<td><a href='{href(r)}'>{text}</a></td>" if c == "notebook" and href else f"<td>{text}</td>"

    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join(f"<tr class='{'passed' if r.status == 'passed' else 'lost'}'>{''.join(td(r, c) for c in COLUMNS)}"
                   "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def save_result(out: Path, sub: Submission, grades: list[Grade], nb, seconds: float) -> None:
    """Write out/<student>/<notebook>.{grade.json,ipynb,html,feedback.html}: one submission's share of the
    report (the .html shows the hidden tests, the .feedback.html is for the student)."""
    grades = safe_messages(grades, nb)  # no message quotes a hidden test: grades.csv may go to students
    folder = Path(out) / _slug(sub.student)
    folder.mkdir(parents=True, exist_ok=True)
    stem = _slug(sub.notebook)
    got, most = sum(g.points for g in grades), sum(g.max for g in grades)
    summary = (f"<h2>{html.escape(sub.student)} · {html.escape(sub.notebook)}: {got:g}/{most:g} points</h2>"
               f"<p>Graded from {html.escape(sub.path.name)} in {seconds:.0f} s. Hidden tests are the cells after "
               f"each exercise that the blank notebook does not have.</p>" + _table(grades))
    shown = nb if nb is not None else nbformat.v4.new_notebook()
    if nb is not None:
        nbformat.write(nb, folder / f"{stem}.ipynb")
    page_html = notebook_page(shown, summary, f"{sub.student} · {sub.notebook}", _table(grades))
    (folder / f"{stem}.html").write_text(page_html, encoding="utf-8")
    (folder / f"{stem}.feedback.html").write_text(feedback_page(sub, grades, nb), encoding="utf-8")
    result = {"submission": str(sub.path), "student": sub.student, "notebook": sub.notebook,
              "seconds": round(seconds, 1), "grades": [asdict(g) for g in grades]}
    (folder / f"{stem}.grade.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers (and other jobs writing the same report) never see half a file


def _feedback_links(out: Path, student: str, rows: list[Grade], folder: str = "") -> str:
    """Links to a student's feedback pages (those there: a report made before them has none)."""
    notebooks = sorted({r.notebook for r in rows if r.student == student})
    return " ".join(f"<a href='{folder}{_slug(n)}.feedback.html'>{html.escape(n)}</a>" for n in notebooks
                    if (out / _slug(student) / f"{_slug(n)}.feedback.html").exists())


def write_report(out: str | Path) -> list[Grade]:
    """grades.csv, totals.csv, index.html and a page per student, from every *.grade.json under `out`."""
    out = Path(out)
    rows = [Grade(**g) for f in sorted(out.glob("*/*.grade.json"))
            for g in json.loads(f.read_text(encoding="utf-8"))["grades"]]
    rows.sort(key=lambda r: (r.student, r.notebook))  # stable: exercises keep the notebook's order
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([r.student, r.notebook, r.exercise, f"{r.points:g}", f"{r.max:g}", r.status, r.message]
                     for r in rows)
    _replace(out / "grades.csv", table.getvalue())
    _replace(out / "totals.csv", totals_csv(rows))
    totals = {}
    for r in rows:
        got, most = totals.get(r.student, (0, 0))
        totals[r.student] = (got + r.points, most + r.max)
    summary = "".join(f"<tr><td><a href='{_slug(s)}/index.html'>{html.escape(s)}</a></td><td>{g:g}/{m:g}</td>"
                      f"<td>{_feedback_links(out, s, rows, f'{_slug(s)}/')}</td></tr>" for s, (g, m) in totals.items())
    legend = "".join(f"<li><b>{s}</b>: {html.escape(meaning)}</li>" for s, meaning in STATUSES.items())
    _replace(out / "index.html", page("Grades", (
        "<p><a href='grades.csv'>grades.csv</a> (a row per exercise) · <a href='totals.csv'>totals.csv</a> (a row "
        "per student, for a gradebook)</p><table><tr><th>student</th><th>points</th><th>feedback pages (no hidden "
        f"tests: for the student)</th></tr>{summary}</table>"
        f"<h2>Every exercise</h2>{_table(rows, lambda r: f'{_slug(r.student)}/{_slug(r.notebook)}.html')}"
        f"<ul>{legend}</ul>")))
    for student, (got, most) in totals.items():
        mine = [r for r in rows if r.student == student]
        _replace(out / _slug(student) / "index.html", page(f"{student}: {got:g}/{most:g} points", (
            "<p><a href='../index.html'>all students</a></p>" + _table(mine, lambda r: f"{_slug(r.notebook)}.html")
            + f"<p>Feedback pages to give {html.escape(student)} (no hidden tests): "
            f"{_feedback_links(out, student, rows)}</p>")))
    return rows
