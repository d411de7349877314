"""Grading one submission (`grade_notebook`): hidden tests put back, one kernel, one score per exercise.

The five steps are listed in `sdlab.grading`; these are its parts: `hidden_tests` and
`with_hidden_tests` put each hidden test of the solution back after its exercise and self-check,
`execute` runs every cell in one kernel through errors and timeouts, and `score` gives one `Grade`
per exercise (`STATUSES` says what each status means).
"""
from __future__ import annotations

import ast
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from ..errors import SdlabInputError
from .course import BEGIN_HIDDEN, END_HIDDEN, has_marker, marker
from .nbgrader import exercise_of
from .outputs import clip_error, limit_outputs

KERNEL = "python3"
STATUSES = {  # every status but the first scores 0
    "passed": "the hidden tests passed: full points",
    "failed": "the exercise ran, its hidden tests failed",
    "error": "the exercise cell raised an error",
    "unfinished": "the exercise cell still raises the blank's NotImplementedError",
    "timeout": "the exercise (or its tests) ran past --timeout and was interrupted",
    "not run": "the kernel died or would not stop before the tests ran",
    "invalid": "the file is not a notebook (not JSON, or not nbformat), or could not be graded",
    "unmatched": "no solution has this notebook's name",
}
TIMEOUT_ENAME = "TimeoutError"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# nbclient logs each timeout and interrupt; the grades say it, so keep it off the terminal
KERNEL_LOG = logging.getLogger("sdlab.grading.nbclient")
KERNEL_LOG.addHandler(logging.NullHandler())
KERNEL_LOG.propagate = False


@dataclass
class Grade:
    """One exercise of one student's notebook: a row of grades.csv."""

    student: str
    notebook: str
    exercise: str
    points: float
    max: float
    status: str
    message: str = ""


@dataclass
class HiddenTest:
    """A hidden-test cell of a solution, and the visible code cells it came after."""

    exercise: str
    points: float
    source: str
    follows: list[str] = field(default_factory=list)


@dataclass
class Submission:
    path: Path
    student: str
    notebook: str  # the matching solution's stem (the file's stem when none matches)


# 1. The hidden tests of a solution

def _split_hidden(source: str) -> tuple[str, str]:
    """(the visible lines, the lines between the hidden-test markers)."""
    visible, hidden, inside = [], [], False
    for line in source.splitlines():
        if marker(line) in (BEGIN_HIDDEN, END_HIDDEN):
            inside = marker(line) == BEGIN_HIDDEN
        else:
            (hidden if inside else visible).append(line)
    return "\n".join(visible), "\n".join(hidden)


def hidden_tests(solution: nbformat.NotebookNode) -> list[HiddenTest]:
    """The graded cells of a solution, with their exercise names and points (cell metadata)."""
    code = [c for c in solution.cells if c.cell_type == "code"]
    tests, exercise_at = [], {}
    for i, cell in enumerate(code):
        meta = cell.metadata.get("sdlab", {})
        if "exercise" in meta:
            exercise_at[meta["exercise"]] = i
        if not has_marker(cell.source, BEGIN_HIDDEN):
            continue
        if "grade" not in meta:
            raise SdlabInputError(f"a hidden-test cell has no grade metadata: add "
                                  f'{{"sdlab": {{"grade": "<exercise>", "points": 1}}}} to it:\n{cell.source}')
        before = code[exercise_at.get(meta["grade"], i) + 1: i + 1]
        follows = [s for s in (_split_hidden(c.source)[0].strip() for c in before) if s]
        tests.append(HiddenTest(meta["grade"], meta.get("points", 1), _split_hidden(cell.source)[1], follows))
    return tests


def _sdlab(cell) -> dict:
    meta = cell.get("metadata", {}).get("sdlab", {})
    return meta if isinstance(meta, dict) else {}


def _exercise(cell) -> str | None:
    return exercise_of(cell)  # sdlab's exercise name, else nbgrader's grade_id of a solution cell


def _trusted(cell) -> None:
    """Drop what a student's cell says about grading: only the solution's hidden tests name the
    graded exercises and their points. Its exercise name stays, to place the hidden test after it."""
    exercise = _sdlab(cell).get("exercise")
    cell.metadata.pop("sdlab", None)
    if cell.cell_type == "code" and isinstance(exercise, str):
        cell.metadata["sdlab"] = {"exercise": exercise}


def with_hidden_tests(student: nbformat.NotebookNode, tests: list[HiddenTest]) -> nbformat.NotebookNode:
    """The student's notebook, cleared, with each hidden test after its exercise and self-check
    (at the end when the exercise cell is gone). Hidden tests already in it are removed, and so
    is any grading metadata of its own (a student cannot mark a cell as graded)."""
    cells = []
    for cell in student.cells:
        _trusted(cell)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.source = _split_hidden(cell.source)[0] if has_marker(cell.source, BEGIN_HIDDEN) else cell.source
            if not cell.source.strip():
                continue
        cells.append(cell)
    after: dict[int, list] = {}
    for test in tests:
        found = [i for i, c in enumerate(cells) if _exercise(c) == test.exercise]
        where = found[-1] if found else len(cells) - 1
        for source in test.follows if found else []:
            nxt = next((j for j in range(where + 1, len(cells)) if cells[j].cell_type == "code"), None)
            if nxt is None or cells[nxt].source.strip() != source:
                break
            where = nxt
        source = f"# hidden tests of {test.exercise!r} ({test.points:g} points)\n{test.source}"
        cell = nbformat.v4.new_code_cell(source, metadata={"sdlab": {"grade": test.exercise, "points": test.points}})
        after.setdefault(where, []).append(cell)
    student.cells = after.get(-1, []) + [c for i, cell in enumerate(cells) for c in [cell, *after.get(i, [])]]
    return student


# 2. Running one notebook

def _timed_out(outcome) -> bool:
    return bool(outcome) and outcome.get("ename") == TIMEOUT_ENAME and "sdlab grade" in outcome.get("evalue", "")


def execute(nb: nbformat.NotebookNode, workdir: Path, timeout: float, env: dict, log=None,
            replies: dict | None = None) -> tuple[dict, str]:
    """Run every code cell of `nb` in one kernel, in place, through errors. Returns each cell's
    execute reply by index (also put in `replies`, if given, as they come, so that they are there
    should the run fail), and why the run stopped early ("" when every cell ran). The kernel
    process's own output goes to `log` (a file), not to the terminal; each cell's outputs are
    kept to size as they arrive (`sdlab.grading.outputs`)."""
    from nbclient import NotebookClient  # heavy: jupyter_client and zmq load only to run a notebook
    from nbclient.exceptions import DeadKernelError  # heavy: jupyter_client and zmq load only to run a notebook

    class LimitedClient(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            out = super().output(outs, msg, display_id, cell_index)
            if out is not None and not display_id and outs and outs[-1] is out:
                limit_outputs(outs)  # an output with a display id may be updated later by its index: kept
            return out

    replies = {} if replies is None else replies
    evalue = f"sdlab grade interrupted the cell after {timeout:g} s"
    client = LimitedClient(
        nb, kernel_name=KERNEL, timeout=max(1, round(timeout)), allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": TIMEOUT_ENAME, "evalue": evalue, "traceback": [f"{TIMEOUT_ENAME}: {evalue}"]},
        shutdown_kernel="immediate", log=KERNEL_LOG, resources={"metadata": {"path": str(workdir)}},
        on_cell_executed=lambda cell_index, execute_reply, **_: replies.update(
            {cell_index: clip_error(execute_reply["content"])}))

    def run(index: int, store_history: bool = True) -> None:
        client.execute_cell(nb.cells[index], index, store_history=store_history)
        if _timed_out(replies.get(index)):
            nb.cells[index].outputs.append(nbformat.v4.new_output("error", **client.error_on_timeout))

    count = 0  # the last execution count: a cell that kills the kernel may not get its own
    with client.setup_kernel(env=env, stdout=log, stderr=log):
        for index, cell in enumerate(list(nb.cells)):
            if cell.cell_type != "code":
                continue
            try:
                run(index)
                count = cell.execution_count or count
                if _timed_out(replies.get(index)):  # did the interrupt stop it? ask the kernel to `pass`
                    nb.cells.append(nbformat.v4.new_code_cell("pass"))
                    run(len(nb.cells) - 1, store_history=False)
                    nb.cells.pop()
                    if _timed_out(replies.pop(len(nb.cells), None)):
                        return replies, f"In [{count}] ran past {timeout:g} s and would not stop"
            except DeadKernelError:
                return replies, f"the kernel died in In [{count + 1}] (did it exit, or run out of memory?)"
    return replies, ""


# 3. Scores

def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(ANSI.sub("", str(text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error(reply) -> str:
    """What went wrong ("NameError: name 'x' is not defined"), not where: hidden tests stay hidden."""
    return _one_line(f"{reply.get('ename')}: {reply.get('evalue')}" if reply.get("evalue") else reply.get("ename"))


def score(nb: nbformat.NotebookNode, replies: dict, stopped: str, student: str, notebook: str) -> list[Grade]:
    """One Grade per graded exercise of an executed notebook (STATUSES says what each status means).
    The hidden tests decide: an exercise whose tests passed scores its points even if its cell
    raised afterwards; the exercise cell's own error only says why tests failed or never ran."""
    grades: dict[str, Grade] = {}
    errors = [i for i, c in enumerate(nb.cells) if replies.get(i, {}).get("status") == "error"
              and "grade" not in _sdlab(c)]
    for h, cell in enumerate(nb.cells):
        meta = _sdlab(cell)
        if "grade" not in meta:
            continue
        name, points = meta["grade"], meta.get("points", 1)
        e = max((i for i in range(h) if _exercise(nb.cells[i]) == name), default=None)
        own = replies.get(e, {}) if e is not None else {}
        test = replies.get(h)
        status, message = "passed", ""
        if test is not None and test.get("status") == "ok":
            pass  # full points, whatever the exercise cell did after its answer
        elif own.get("status") == "error":
            status = ("timeout" if _timed_out(own) else "unfinished" if own.get("ename") == "NotImplementedError"
                      and "Exercise '" in own.get("evalue", "") else "error")
            message = _error(own)
            first = next((i for i in errors if i < e), None)
            if status == "error" and first is not None:
                message += f"; the first error was in In [{nb.cells[first].execution_count}]: {_error(replies[first])}"
        elif test is None:
            status, message = "not run", stopped or "the hidden tests did not run"
        else:
            status = "timeout" if _timed_out(test) else "failed"
            message = f"a hidden test failed: {_error(test)}"
            checks = [i for i in errors if e is not None and e < i < h]
            if checks:
                message += f"; the self-check said: {_error(replies[checks[0]])}"
            if e is None:
                message += f"; no cell is marked as exercise {name!r}"
        row = Grade(student, notebook, name, points if status == "passed" else 0, points, status, _one_line(message))
        if name in grades:  # several hidden-test cells for one exercise: add them up
            old = grades[name]
            row = Grade(student, notebook, name, old.points + row.points, old.max + row.max,
                        *((old.status, old.message) if old.status != "passed" else (row.status, row.message)))
        grades[name] = row
    return list(grades.values())


def _parameters_in(solution: nbformat.NotebookNode) -> set[str]:
    """The names the solution's `parameters` cell assigns."""
    cell = next((c for c in solution.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return set()
    tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%")))
    return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}


def _invalid(sub: Submission, tests: list[HiddenTest], message: str) -> list[Grade]:
    """0 points for every exercise, with the reason: this submission could not be graded."""
    return [Grade(sub.student, sub.notebook, t.exercise, 0, t.points, "invalid", _one_line(message))
            for t in tests] or [Grade(sub.student, sub.notebook, "", 0, 0, "invalid", _one_line(message))]


def grade_notebook(sub: Submission, solution_text: str | None, images: Path | None, timeout: float,
                   parameters: dict, env: dict) -> tuple[list[Grade], nbformat.NotebookNode | None]:
    """Grade one submission in its own temporary course folder; never raises for what it contains
    (what cannot be graded is "invalid", with the reason)."""
    if solution_text is None:
        return [Grade(sub.student, sub.notebook, "", 0, 0, "unmatched",
                      f"no solution named {sub.notebook}.ipynb to grade {sub.path.name} against")], None
    solution = nbformat.reads(solution_text, as_version=4)
    tests = hidden_tests(solution)  # the solution's own problems are raised (`grade` checks them first)
    try:
        return _grade_notebook(sub, solution, tests, images, timeout, parameters, env)
    except Exception as err:  # whatever the notebook holds, the rest of the class is still graded
        return _invalid(sub, tests, f"{sub.path.name} could not be graded: {type(err).__name__}: {err}"), None


def _grade_notebook(sub, solution, tests, images, timeout, parameters, env):
    from papermill.iorw import load_notebook_node  # heavy: papermill loads only to grade
    from papermill.parameterize import parameterize_notebook  # heavy: papermill loads only to grade

    try:
        nb = load_notebook_node(str(sub.path))  # papermill's reader: adds the metadata it needs
        wanted = _parameters_in(solution)
        nb = parameterize_notebook(nb, {k: v for k, v in parameters.items() if k in wanted},
                                   kernel_name=KERNEL, language="python")
        nb = with_hidden_tests(nb, tests)
    except Exception as err:  # not JSON, not UTF-8, not a notebook
        return _invalid(sub, tests, f"{sub.path.name} is not a valid notebook: {type(err).__name__}: {err}"), None
    with tempfile.TemporaryDirectory(prefix="sdlab-grade-", ignore_cleanup_errors=True) as tmp:
        workdir, kernel_tmp = Path(tmp) / "course" / "notebooks", Path(tmp) / "tmp"
        workdir.mkdir(parents=True)
        kernel_tmp.mkdir()
        if images is not None and images.is_dir():
            shutil.copytree(images, workdir.parent / "images")
        shutil.copyfile(sub.path, workdir / f"{sub.notebook}.ipynb")
        # the kernel's temporary files go into this folder too, so they go when it does
        env = {**env, **{key: str(kernel_tmp) for key in ("TMPDIR", "TEMP", "TMP")}}
        log_path, replies = Path(tmp) / "kernel.log", {}
        try:
            with open(log_path, "w") as log:
                stopped = execute(nb, workdir, timeout, env, log, replies)[1]
        except Exception as err:  # the kernel would not start, or nbclient failed: grade what ran
            tail = " ".join(log_path.read_text(errors="replace").splitlines()[-3:])
            stopped = _one_line(f"grading stopped: {type(err).__name__}: {err} {tail}")
        grades = score(nb, replies, stopped, sub.student, sub.notebook)
    for g in grades:
        g.message = g.message.replace(tmp, "<tmp>")
    return grades, nb
