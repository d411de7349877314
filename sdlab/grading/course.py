"""Blank student notebooks from the completed ones, and nbgrader's metadata in the completed ones.

In `solutions/`, exercise code sits between `### BEGIN SOLUTION` and `### END SOLUTION`, and
grading tests between `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS`; as in nbgrader, any
comment line that contains BEGIN SOLUTION (END SOLUTION, …) is a marker, however many `#` it
has. `build()` writes `notebooks/` with the solutions replaced by a hint and
`raise NotImplementedError`, hidden tests removed and outputs cleared. It also keeps each
solution an nbgrader source (`sdlab.grading.nbgrader`); a solution is rewritten only when that
changes it. `check()` says what is out of date.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from ..errors import SdlabInputError
from .nbgrader import (  # nbgrader's markers, imported from here by the grader too
    BEGIN_HIDDEN,
    BEGIN_SOLUTION,
    END_HIDDEN,
    END_SOLUTION,
    has_marker,
    marker,
    with_nbgrader,
    without_ask_import,
)

TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


# 1. Blank notebooks

def exercise_name(cell) -> str:
    return cell.get("metadata", {}).get("sdlab", {}).get("exercise", "exercise")


def blank_source(source: str, name: str = "exercise", hint: str = "") -> str:
    """The student's version of a cell's source: solutions become a hint and a raise."""
    out, lines, skipping = [], source.splitlines(), None
    for line in lines:
        found = marker(line)
        if found == BEGIN_SOLUTION and not skipping:
            indent = line[: len(line) - len(line.lstrip())]
            message = f"Exercise '{name}': {hint}" if hint else f"Exercise '{name}': write your code here"
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError({message!r})"]
            skipping = END_SOLUTION
        elif found == BEGIN_HIDDEN and not skipping:
            skipping = END_HIDDEN
        elif skipping and found == skipping:
            skipping = None
        elif found in (END_SOLUTION, END_HIDDEN) and not skipping:
            raise SdlabInputError(f"'{name}': a {found} marker has no {found.replace('END', 'BEGIN')} before it: "
                                  f"add one, or remove it")
        elif not skipping:
            out.append(line)
    if skipping:
        begin = skipping.replace("END", "BEGIN")
        raise SdlabInputError(f"'{name}': a {begin} marker has no matching {skipping}: add one after its code")
    return "\n".join(out)


def _is_empty(source: str) -> bool:
    return all(not line.strip() or line.strip().startswith("#") for line in source.splitlines())


def blank_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The blank version of a completed notebook (a new object; the solution is not changed), with
    no nbgrader metadata: nbgrader makes its own release. Raises SdlabInputError for a marker
    without its pair, or an exercise cell with no solution."""
    nb = copy.deepcopy(solution)
    cells = []
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
        if cell.cell_type == "code":
            meta = cell.get("metadata", {}).get("sdlab", {})
            if "exercise" in meta and not has_marker(cell.source, BEGIN_SOLUTION):
                raise SdlabInputError(f"the cell of exercise {meta['exercise']!r} has no {BEGIN_SOLUTION} … "
                                      f"{END_SOLUTION} region: put the markers around the code students write "
                                      f"(or remove its exercise metadata)")
            had_hidden = has_marker(cell.source, BEGIN_HIDDEN)
            source = without_ask_import(cell.source) if had_hidden else cell.source
            cell.source = blank_source(source, exercise_name(cell), meta.get("hint", ""))
            if had_hidden and _is_empty(cell.source):
                continue  # a cell of hidden tests only: students never see it
            cell.outputs, cell.execution_count = [], None
            for key in ("execution", "papermill", "ExecuteTime"):
                cell.metadata.pop(key, None)
        cells.append(cell)
    nb.cells = cells
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    return nb


# 2. The whole course

def _pairs(solutions: str | Path, notebooks: str | Path) -> list[tuple[Path, Path]]:
    """(completed notebook, its blank) for each numbered notebook in `solutions`; none is an error,
    so that a wrong folder is never reported as a course in sync."""
    sources = sorted(Path(solutions).glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise SdlabInputError(f"{solutions}/ holds no course notebooks (NN_name.ipynb): run this in the course's "
                              f"folder, or give the completed notebooks' folder with --solutions")
    return [(src, Path(notebooks) / src.name) for src in sources]


def _text(nb) -> str:
    return nbformat.writes(nb) + "\n"


def _versions(src: Path) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode, str]:
    """The solution `src` as it is, as build leaves it (nbgrader's metadata in sync), and the text
    of its blank; errors name `src`."""
    try:
        solution = nbformat.read(src, as_version=4)
        synced = with_nbgrader(solution)
        return solution, synced, _text(blank_notebook(synced))
    except SdlabInputError as err:
        raise SdlabInputError(f"{src}: {err}") from None


def build(solutions: str | Path = "solutions", notebooks: str | Path = "notebooks") -> list[Path]:
    """Write the blank notebooks, and the solutions whose nbgrader metadata is out of date;
    returns the files written. Nothing is written when a solution has a problem (SdlabInputError
    names it)."""
    writes = []
    for src, dst in _pairs(solutions, notebooks):
        solution, synced, blank = _versions(src)
        writes += [(src, _text(synced))] if synced != solution else []  # else the file stays byte for byte
        writes.append((dst, blank))
    Path(notebooks).mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in writes:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def check(solutions: str | Path = "solutions", notebooks: str | Path = "notebooks") -> list[str]:
    """Problems found: blanks missing or out of date, solutions whose nbgrader metadata is out of
    date, stray blanks, outputs or tokens committed."""
    problems, expected = [], set()
    for src, dst in _pairs(solutions, notebooks):
        expected.add(dst.name)
        try:
            solution, _, text = _versions(src)
        except SdlabInputError as err:
            problems.append(str(err))
            continue
        if with_nbgrader(solution) != solution:
            problems.append(f"{src} has nbgrader metadata out of date with its sdlab metadata: "
                            f"run `sdlab course build`")
        if not dst.exists():
            problems.append(f"{dst} is missing: run `sdlab course build`")
        elif dst.read_text(encoding="utf-8") != text:
            problems.append(f"{dst} is out of date with {src}: run `sdlab course build`")
    for stray in sorted(Path(notebooks).glob("*.ipynb")):
        if stray.name not in expected:
            problems.append(f"{stray} has no completed version in {solutions}/")
        elif any(c.get("outputs") for c in nbformat.read(stray, as_version=4).cells):
            problems.append(f"{stray} has stored outputs: blank notebooks must be cleared")
    for path in sorted(Path(solutions).glob("*.ipynb")) + sorted(Path(notebooks).glob("*.ipynb")):
        if TOKEN_PATTERN.search(path.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{path} contains something that looks like a Hugging Face token: remove it")
    return problems
