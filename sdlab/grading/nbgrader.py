"""The course's notebooks as nbgrader reads them: its markers, and its cell metadata beside sdlab's.

sdlab marks code with nbgrader's own markers (`### BEGIN SOLUTION` … `### END SOLUTION`,
`### BEGIN HIDDEN TESTS` … `### END HIDDEN TESTS`), but says which cell is which in
`metadata.sdlab`: `{"exercise": name, "hint": …}` on an exercise cell, `{"grade": name,
"points": n}` on a hidden-test cell. nbgrader reads `metadata.nbgrader` instead, so
`with_nbgrader` writes it from sdlab's, and a completed notebook is also an nbgrader source:

    exercise cell     {"solution": true,  "grade": false, "locked": false, "grade_id": name}
    hidden-test cell  {"solution": false, "grade": true,  "locked": true,  "grade_id": "test_<name>[_k]",
                       "points": n}

(all with "schema_version": 3). Other cells get none: nbgrader runs the student's version of
them, as `sdlab grade` does. A hidden test that calls `ask(...)` gets `ASK_IMPORT` as its first
line, outside the hidden region: sdlab's grader gives the test an `ask` that reaches the student's
kernel from outside, but nbgrader runs the test in that kernel, where `ask` must be imported
(unless the test imports it itself: the judge's `sdlab.grading.values.ask` is its relay too).
"""
from __future__ import annotations

import copy
import re

from ..errors import SdlabInputError, is_number

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
SCHEMA_VERSION = 3  # the cell metadata schema of nbgrader 0.6 to 0.9
ASK_IMPORT = "from sdlab.grading.values import ask  # nbgrader runs the hidden tests in this kernel"
ASK_CALL = re.compile(r"(?<![\w.])ask\s*\(")
IMPORTS_ASK = re.compile(r"^\s*from sdlab\.grading\.values import .*\bask\b", re.M)  # a test that imports it itself
GRADE_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # what nbgrader's schema allows in a grade_id


def marker(line: str) -> str | None:
    """The marker a line is (BEGIN_SOLUTION, END_HIDDEN, …), or None: as in nbgrader, a comment
    line that contains "BEGIN SOLUTION" is BEGIN_SOLUTION whatever its spelling around it."""
    stripped = line.strip()
    if not stripped.startswith("#"):
        return None
    return next((m for m in (BEGIN_HIDDEN, END_HIDDEN, BEGIN_SOLUTION, END_SOLUTION) if m.lstrip("# ") in stripped),
                None)


def has_marker(source: str, which: str) -> bool:
    """Whether a line of `source` is the marker `which` (e.g. BEGIN_HIDDEN)."""
    return any(marker(line) == which for line in source.splitlines())


def _hidden_lines(source: str) -> str:
    inside, hidden = False, []
    for line in source.splitlines():
        if marker(line) in (BEGIN_HIDDEN, END_HIDDEN):
            inside = marker(line) == BEGIN_HIDDEN
        elif inside:
            hidden.append(line)
    return "\n".join(hidden)


def without_ask_import(source: str) -> str:
    """`source` without the line `with_ask_import` adds."""
    return "\n".join(line for line in source.split("\n") if line.strip() != ASK_IMPORT)


def with_ask_import(source: str) -> str:
    """A hidden-test cell's source, with ASK_IMPORT as its first line when its hidden tests call
    `ask(` and without it otherwise."""
    plain = without_ask_import(source)
    hidden = _hidden_lines(plain)
    return f"{ASK_IMPORT}\n{plain}" if ASK_CALL.search(hidden) and not IMPORTS_ASK.search(hidden) else plain


def _sdlab(cell) -> dict:
    meta = cell.get("metadata", {}).get("sdlab", {})
    return meta if isinstance(meta, dict) else {}


def _grade_id(name, what: str) -> str:
    if not isinstance(name, str) or not GRADE_ID.match(name):
        raise SdlabInputError(f"{what} {name!r} cannot be an nbgrader grade_id: use letters, digits, _ and - only")
    return name


def _metadata(cell, test_number: dict) -> dict | None:
    """nbgrader's metadata for one cell (None for a cell that is neither exercise nor hidden test).
    `test_number` counts the hidden-test cells of each exercise seen so far."""
    meta = _sdlab(cell)
    if cell.cell_type != "code" or not ("exercise" in meta or "grade" in meta):
        return None
    if "exercise" in meta:
        name = _grade_id(meta["exercise"], "the exercise name")
        return {"grade": False, "grade_id": name, "locked": False, "schema_version": SCHEMA_VERSION, "solution": True}
    name, points = _grade_id(meta["grade"], "the exercise name"), meta.get("points", 1)
    if not is_number(points) or points < 0:
        raise SdlabInputError(f"the hidden tests of {name!r} have points {points!r}: give a number, 0 or more")
    test_number[name] = test_number.get(name, 0) + 1
    suffix = f"_{test_number[name]}" if test_number[name] > 1 else ""
    return {"grade": True, "grade_id": f"test_{name}{suffix}", "locked": True, "points": points,
            "schema_version": SCHEMA_VERSION, "solution": False}


def with_nbgrader(solution):
    """A completed notebook with nbgrader's metadata (and, on hidden tests that ask, ASK_IMPORT) in
    sync with sdlab's; a new object. Raises SdlabInputError for what nbgrader cannot take: a name
    that is not a grade_id, two cells with one id, points that are not a number."""
    nb, test_number, seen = copy.deepcopy(solution), {}, {}
    for index, cell in enumerate(nb.cells):
        meta = _metadata(cell, test_number)
        if meta is None:
            cell.metadata.pop("nbgrader", None)
            continue
        if meta["grade_id"] in seen:
            raise SdlabInputError(f"cells {seen[meta['grade_id']]} and {index} are both nbgrader's "
                                  f"{meta['grade_id']!r}: give each exercise its own name")
        seen[meta["grade_id"]] = index
        cell.metadata["nbgrader"] = meta
        if meta["grade"]:
            cell.source = with_ask_import(cell.source)
    return nb


def exercise_of(cell) -> str | None:
    """The exercise a code cell is, by sdlab's metadata or else nbgrader's (a solution cell's
    grade_id): a notebook released by `nbgrader generate_assignment` may carry only nbgrader's."""
    if cell.get("cell_type") != "code":
        return None
    name = _sdlab(cell).get("exercise")
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if name is None and isinstance(meta, dict) and meta.get("solution") is True and not meta.get("grade"):
        name = meta.get("grade_id")
    return name if isinstance(name, str) else None
