"""The HTML pages of a graded notebook: the instructor's shows everything that ran; the student's
feedback page shows their notebook as it ran, without the hidden tests, under a table that says in
words what each exercise scored and why.

The hidden tests run in the student's kernel, so what the student's code prints could quote them
(`print(In)`). On the feedback page, an output that holds a line of a hidden test is replaced by a
note, and so is such a line in a grade's message (grades.csv gets the same messages).
"""
from __future__ import annotations

import copy
import html
import re
from dataclasses import replace

import nbformat

from .notebook import ANSI, STATUSES, Grade, Submission

WITHHELD = "[withheld: it quotes a hidden test]"
SHORTEST = 8  # a hidden test's lines shorter than this (`pass`, `else:`) give nothing away


def page(title: str, body: str) -> str:
    """A plain page of the report."""
    style = ("body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
             "table{border-collapse:collapse}.passed{background:#efe}.lost{background:#fee}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def notebook_page(nb: nbformat.NotebookNode, summary: str, title: str, fallback: str) -> str:
    """`nb` as nbconvert shows it, with the grader's `summary` (HTML) above it; a plain page with
    `fallback` when nbconvert cannot render one of its outputs (the scores still count)."""
    from nbconvert import HTMLExporter  # heavy: nbconvert loads only to write the pages

    try:
        # the student's HTML is sanitized (a <script> of theirs is shown as text, not run); the
        # grader's own summary goes in above it afterwards
        shown = HTMLExporter(sanitize_html=True).from_notebook_node(nb)[0]
        return shown.replace("<main>", f"<main><div style='padding:0 1em'>{summary}</div>", 1)
    except Exception as err:  # an output nbconvert cannot render
        return page(title, f"{fallback}<p>not rendered: {html.escape(repr(err))}</p>")


# 1. What must not reach the student

def _plain(text: str) -> str:
    return " ".join(ANSI.sub("", str(text)).split())  # a traceback's colours would split a line


def _is_hidden_test(cell) -> bool:
    """A hidden-test cell the grader put in (a student's own grading metadata is dropped before)."""
    meta = cell.get("metadata", {}).get("sdlab")
    return isinstance(meta, dict) and "grade" in meta


def hidden_lines(nb: nbformat.NotebookNode | None) -> list[str]:
    """The lines of the hidden tests in an executed notebook, spaces evened out."""
    cells = nb.cells if nb is not None else []
    return sorted({_plain(line) for cell in cells if _is_hidden_test(cell) for line in cell.source.splitlines()
                   if len(_plain(line)) >= SHORTEST})


def _texts(value):
    """Every string in an output (its text, each MIME type's data, a traceback's lines)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


def quotes(text: str, lines: list[str]) -> bool:
    """Whether `text` holds one of the `lines` (as it is, or as HTML shows it: tags out, escapes read)."""
    forms = {_plain(text), _plain(html.unescape(re.sub(r"<[^>]*>", "", text)))}
    return any(line in form for line in lines for form in forms)


def without_quotes(message: str, lines: list[str]) -> str:
    """`message` with each hidden-test line in it withheld, and the start of one it was cut off in ("…")."""
    plain = _plain(message)
    for line in lines:
        plain = plain.replace(line, WITHHELD)
    if plain.endswith("…"):
        cut = plain[:-1]
        start = max((k for line in lines for k in range(SHORTEST, len(line)) if cut.endswith(line[:k])), default=0)
        plain = f"{cut[: len(cut) - start]}{WITHHELD}" if start else plain
    return plain if plain != _plain(message) else message


def safe_messages(grades: list[Grade], nb: nbformat.NotebookNode | None) -> list[Grade]:
    """The grades with no hidden-test line in their messages (student code can put one in an error)."""
    lines = hidden_lines(nb)
    return [replace(g, message=without_quotes(g.message, lines)) for g in grades]


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of an executed notebook without its hidden-test cells, and without the outputs that quote them."""
    lines, shown = hidden_lines(nb), copy.deepcopy(nb)
    shown.cells = [cell for cell in shown.cells if not _is_hidden_test(cell)]
    for cell in shown.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{WITHHELD}\n")
                            if any(quotes(t, lines) for t in _texts(out)) else out for out in cell.outputs]
    return shown


# 2. The feedback page

def _feedback_table(grades: list[Grade]) -> str:
    def row(g: Grade) -> str:
        words = f"<b>{html.escape(g.status)}</b> — {html.escape(STATUSES.get(g.status, ''))}"
        return (f"<tr class='{'passed' if g.status == 'passed' else 'lost'}'><td>{html.escape(g.exercise)}</td>"
                f"<td>{g.points:g}/{g.max:g}</td><td>{words}</td><td>{html.escape(g.message)}</td></tr>")

    head = "<tr><th>exercise</th><th>points</th><th>result</th><th>why</th></tr>"
    return f"<table>{head}{''.join(map(row, grades))}</table>"


def feedback_page(sub: Submission, grades: list[Grade], nb: nbformat.NotebookNode | None) -> str:
    """The page to give the student: their points per exercise in words, then their notebook as it
    ran, without the hidden tests."""
    title = f"{sub.student} · {sub.notebook}"
    got, most = sum(g.points for g in grades), sum(g.max for g in grades)
    summary = (f"<h2>{html.escape(title)}: {got:g}/{most:g} points</h2>"
               f"<p>Each exercise was checked by hidden tests that ran after it; they are not shown here. "
               f"Your notebook follows as it ran when it was graded.</p>"
               + _feedback_table(safe_messages(grades, nb)))
    shown = student_notebook(nb) if nb is not None else nbformat.v4.new_notebook()
    return notebook_page(shown, summary, title, fallback=summary)
