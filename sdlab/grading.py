"""Grading: run each student notebook, then its solution's hidden tests in the same kernel.

    report = grade(["submissions/"], against="solutions", out="report", jobs=4)
    print(report.line())

One submission is graded in five steps (`grade_notebook`):

1. Copy it into a temporary course folder of its own (`notebooks/` and a copy of `images/`), so
   what it deletes or writes by relative path (`../solutions`, `../images`) touches only that copy.
2. Inject the parameters (papermill): the offline model, unless told otherwise.
3. Put each hidden-test cell of the matching solution back where `sdlab course build` took it
   out: after the student's exercise cell and its self-check.
4. Execute every cell with nbclient in one kernel, going on after errors; a cell that runs past
   `timeout` seconds is interrupted, and a kernel that does not stop then ends the run.
5. Score each exercise: its points when its hidden tests pass, else 0 and the reason.

Each graded submission leaves in `out/<student>/` the executed notebook, its HTML page and its
scores (`<notebook>.grade.json`); `grades.csv` and the HTML index are made from all of them, so
runs (or cluster jobs) over parts of a class add up to one report.
"""
from __future__ import annotations

import ast
import csv
import html
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from .course import BEGIN_HIDDEN, END_HIDDEN
from .errors import SdlabInputError

KERNEL = "python3"
COLUMNS = ("student", "notebook", "exercise", "points", "max", "status", "message")
STATUSES = {  # every status but the first scores 0
    "passed": "the hidden tests passed: full points",
    "failed": "the exercise ran, its hidden tests failed",
    "error": "the exercise cell raised an error",
    "unfinished": "the exercise cell still raises the blank's NotImplementedError",
    "timeout": "the exercise (or its tests) ran past --timeout and was interrupted",
    "not run": "the kernel died or would not stop before the tests ran",
    "invalid": "the file is not a notebook (not JSON, or not nbformat)",
    "unmatched": "no solution has this notebook's name",
}
TIMEOUT_ENAME = "TimeoutError"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# nbclient logs each timeout and interrupt; the grades say it, so keep it off the terminal
KERNEL_LOG = logging.getLogger(__name__ + ".nbclient")
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


@dataclass
class Report:
    """What `grade` wrote: every row of grades.csv, and how long this run took."""

    rows: list[Grade]
    folder: Path
    graded: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        points, most = sum(r.points for r in self.rows), sum(r.max for r in self.rows)
        students = len({r.student for r in self.rows})
        share = f" ({100 * points / most:.0f}%)" if most else ""
        counts = {s: sum(r.status == s for r in self.rows) for s in STATUSES if s != "passed"}
        lost = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return (f"graded {self.graded} notebook(s) in {self.seconds:.0f} s: {students} student(s), "
                f"{points:g}/{most:g} points{share}{'; ' + lost if lost else ''}; report: {self.folder / 'index.html'}")


# 1. The hidden tests of a solution

def _split_hidden(source: str) -> tuple[str, str]:
    """(the visible lines, the lines between the hidden-test markers)."""
    visible, hidden, inside = [], [], False
    for line in source.splitlines():
        if line.strip() in (BEGIN_HIDDEN, END_HIDDEN):
            inside = line.strip() == BEGIN_HIDDEN
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
        if BEGIN_HIDDEN not in cell.source:
            continue
        if "grade" not in meta:
            raise SdlabInputError(f"a hidden-test cell has no grade metadata: add "
                                  f'{{"sdlab": {{"grade": "<exercise>", "points": 1}}}} to it:\n{cell.source}')
        before = code[exercise_at.get(meta["grade"], i) + 1: i + 1]
        follows = [s for s in (_split_hidden(c.source)[0].strip() for c in before) if s]
        tests.append(HiddenTest(meta["grade"], meta.get("points", 1), _split_hidden(cell.source)[1], follows))
    return tests


def _exercise(cell) -> str | None:
    return cell.metadata.get("sdlab", {}).get("exercise") if cell.cell_type == "code" else None


def with_hidden_tests(student: nbformat.NotebookNode, tests: list[HiddenTest]) -> nbformat.NotebookNode:
    """The student's notebook, cleared, with each hidden test after its exercise and self-check
    (at the end when the exercise cell is gone). Hidden tests already in it are removed."""
    cells = []
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.source = _split_hidden(cell.source)[0] if BEGIN_HIDDEN in cell.source else cell.source
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


# 2. Which submission is whose

def find_submissions(paths, against: str | Path = "solutions") -> list[Submission]:
    """Notebooks under `paths`, each with its student and notebook: alice/01_loading.ipynb,
    01_loading/alice.ipynb and alice_01_loading.ipynb all mean alice's 01_loading."""
    names = sorted((p.name for p in Path(against).glob("*.ipynb")), key=len, reverse=True)
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        elif path.is_file():
            files.append(path)
        else:
            raise SdlabInputError(f"submission {path} not found: give notebooks or folders of notebooks")
    found, seen = [], {}
    for f in files:
        folder = f.resolve().parent.name
        suffix = next((n for n in names if f.name.endswith(n)), None)
        if f.name in names:
            sub = Submission(f, folder, f.stem)
        elif f"{folder}.ipynb" in names:
            sub = Submission(f, f.stem, folder)
        elif suffix:
            sub = Submission(f, f.name[: -len(suffix)].strip("_-. ") or folder, suffix[: -len(".ipynb")])
        else:
            sub = Submission(f, folder, f.stem)
        key = (sub.student, sub.notebook)
        if key in seen:
            raise SdlabInputError(f"two submissions for {sub.student}'s {sub.notebook}: {seen[key]} and {f}; "
                                  "keep one (or put them in different student folders)")
        seen[key] = f
        found.append(sub)
    return found


# 3. Running one notebook

def _timed_out(outcome) -> bool:
    return bool(outcome) and outcome.get("ename") == TIMEOUT_ENAME and "sdlab grade" in outcome.get("evalue", "")


def execute(nb: nbformat.NotebookNode, workdir: Path, timeout: float, env: dict, log=None) -> tuple[dict, str]:
    """Run every code cell of `nb` in one kernel, in place, through errors. Returns each cell's
    execute reply by index, and why the run stopped early ("" when every cell ran). The kernel
    process's own output goes to `log` (a file), not to the terminal."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    replies: dict[int, dict] = {}
    evalue = f"sdlab grade interrupted the cell after {timeout:g} s"
    client = NotebookClient(
        nb, kernel_name=KERNEL, timeout=max(1, round(timeout)), allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": TIMEOUT_ENAME, "evalue": evalue, "traceback": [f"{TIMEOUT_ENAME}: {evalue}"]},
        shutdown_kernel="immediate", log=KERNEL_LOG, resources={"metadata": {"path": str(workdir)}},
        on_cell_executed=lambda cell_index, execute_reply, **_: replies.update({cell_index: execute_reply["content"]}))

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


# 4. Scores

def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(ANSI.sub("", str(text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error(reply, source: str = "") -> str:
    text = f"{reply.get('ename')}: {reply.get('evalue')}" if reply.get("evalue") else str(reply.get("ename"))
    lines = re.findall(r"Cell In\[\d+\], line (\d+)", ANSI.sub("", "\n".join(reply.get("traceback", []))))
    code = source.splitlines()
    if lines and source and 0 < int(lines[-1]) <= len(code):
        text += f" at `{code[int(lines[-1]) - 1].strip()}`"
    return _one_line(text)


def score(nb: nbformat.NotebookNode, replies: dict, stopped: str, student: str, notebook: str) -> list[Grade]:
    """One Grade per graded exercise of an executed notebook (STATUSES says what each status means)."""
    grades: dict[str, Grade] = {}
    errors = [i for i, c in enumerate(nb.cells) if replies.get(i, {}).get("status") == "error"
              and "grade" not in c.metadata.get("sdlab", {})]
    for h, cell in enumerate(nb.cells):
        meta = cell.metadata.get("sdlab", {})
        if "grade" not in meta:
            continue
        name, points = meta["grade"], meta.get("points", 1)
        e = max((i for i in range(h) if _exercise(nb.cells[i]) == name), default=None)
        own = replies.get(e, {}) if e is not None else {}
        test = replies.get(h)
        status, message = "passed", ""
        if own.get("status") == "error":
            status = ("timeout" if _timed_out(own) else "unfinished" if own.get("ename") == "NotImplementedError"
                      and "Exercise '" in own.get("evalue", "") else "error")
            message = _error(own)
            first = next((i for i in errors if i < e), None)
            if status == "error" and first is not None:
                message += f"; the first error was in In [{nb.cells[first].execution_count}]: {_error(replies[first])}"
        elif test is None:
            status, message = "not run", stopped or "the hidden tests did not run"
        elif test.get("status") == "error":
            status = "timeout" if _timed_out(test) else "failed"
            message = _error(test, cell.source)
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


def grade_notebook(sub: Submission, solution_text: str | None, images: Path | None, timeout: float,
                   parameters: dict, env: dict) -> tuple[list[Grade], nbformat.NotebookNode | None]:
    """Grade one submission in its own temporary course folder; never raises for what it contains."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    if solution_text is None:
        return [Grade(sub.student, sub.notebook, "", 0, 0, "unmatched",
                      f"no solution named {sub.notebook}.ipynb to grade {sub.path.name} against")], None
    solution = nbformat.reads(solution_text, as_version=4)
    tests = hidden_tests(solution)
    try:
        nb = load_notebook_node(str(sub.path))  # papermill's reader: adds the metadata it needs
        wanted = _parameters_in(solution)
        nb = parameterize_notebook(nb, {k: v for k, v in parameters.items() if k in wanted},
                                   kernel_name=KERNEL, language="python")
        nb = with_hidden_tests(nb, tests)
    except Exception as err:  # not JSON, not UTF-8, not a notebook
        return [Grade(sub.student, sub.notebook, t.exercise, 0, t.points, "invalid",
                      _one_line(f"{sub.path.name} is not a valid notebook: {type(err).__name__}: {err}"))
                for t in tests], None
    with tempfile.TemporaryDirectory(prefix="sdlab-grade-") as tmp:
        workdir = Path(tmp) / "course" / "notebooks"
        workdir.mkdir(parents=True)
        if images is not None and images.is_dir():
            shutil.copytree(images, workdir.parent / "images")
        shutil.copyfile(sub.path, workdir / f"{sub.notebook}.ipynb")
        log_path = Path(tmp) / "kernel.log"
        try:
            with open(log_path, "w") as log:
                replies, stopped = execute(nb, workdir, timeout, env, log)
        except Exception as err:  # the kernel would not start, or nbclient failed: grade what ran
            tail = " ".join(log_path.read_text(errors="replace").splitlines()[-3:])
            replies, stopped = {}, _one_line(f"grading stopped: {type(err).__name__}: {err} {tail}")
        grades = score(nb, replies, stopped, sub.student, sub.notebook)
    for g in grades:
        g.message = g.message.replace(tmp, "<tmp>")
    return grades, nb


# 5. The report

def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name).lstrip(".") or "_"


def _table(rows: list[Grade], href=None) -> str:
    """An HTML table of grades; `href(row)` links each notebook name to its page."""
    def td(r, c):
        text = html.escape(str(getattr(r, c)))
        return f"<td><a href='{href(r)}'>{text}</a></td>" if c == "notebook" and href else f"<td>{text}</td>"

    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join(f"<tr class='{'passed' if r.status == 'passed' else 'lost'}'>{''.join(td(r, c) for c in COLUMNS)}"
                   "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str) -> str:
    style = ("body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
             "table{border-collapse:collapse}.passed{background:#efe}.lost{background:#fee}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def save_result(out: Path, sub: Submission, grades: list[Grade], nb, seconds: float) -> None:
    """Write out/<student>/<notebook>.{grade.json,ipynb,html}: one submission's share of the report."""
    from nbconvert import HTMLExporter

    folder = Path(out) / _slug(sub.student)
    folder.mkdir(parents=True, exist_ok=True)
    stem = _slug(sub.notebook)
    got, most = sum(g.points for g in grades), sum(g.max for g in grades)
    summary = nbformat.v4.new_markdown_cell(
        f"<h2>{html.escape(sub.student)} · {html.escape(sub.notebook)}: {got:g}/{most:g} points</h2>"
        f"<p>Graded from {html.escape(sub.path.name)} in {seconds:.0f} s. Hidden tests are the cells after "
        f"each exercise that the blank notebook does not have.</p>" + _table(grades))
    shown = nb if nb is not None else nbformat.v4.new_notebook()
    if nb is not None:
        nbformat.write(nb, folder / f"{stem}.ipynb")
    shown.cells.insert(0, summary)
    try:
        page = HTMLExporter().from_notebook_node(shown)[0]
    except Exception as err:  # an output nbconvert cannot render: the scores still count
        note = f"<p>not rendered: {html.escape(repr(err))}</p>"
        page = _page(f"{sub.student} · {sub.notebook}", _table(grades) + note)
    (folder / f"{stem}.html").write_text(page, encoding="utf-8")
    result = {"submission": str(sub.path), "seconds": round(seconds, 1), "grades": [asdict(g) for g in grades]}
    (folder / f"{stem}.grade.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers (and other jobs writing the same report) never see half a file


def write_report(out: str | Path) -> list[Grade]:
    """grades.csv, index.html and a page per student, from every *.grade.json under `out`."""
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
    totals = {}
    for r in rows:
        got, most = totals.get(r.student, (0, 0))
        totals[r.student] = (got + r.points, most + r.max)
    summary = "".join(f"<tr><td><a href='{_slug(s)}/index.html'>{html.escape(s)}</a></td><td>{g:g}/{m:g}</td></tr>"
                      for s, (g, m) in totals.items())
    legend = "".join(f"<li><b>{s}</b>: {html.escape(meaning)}</li>" for s, meaning in STATUSES.items())
    _replace(out / "index.html", _page("Grades", (
        f"<p><a href='grades.csv'>grades.csv</a></p><table><tr><th>student</th><th>points</th></tr>{summary}</table>"
        f"<h2>Every exercise</h2>{_table(rows, lambda r: f'{_slug(r.student)}/{_slug(r.notebook)}.html')}"
        f"<ul>{legend}</ul>")))
    for student, (got, most) in totals.items():
        mine = [r for r in rows if r.student == student]
        _replace(out / _slug(student) / "index.html", _page(f"{student}: {got:g}/{most:g} points", (
            "<p><a href='../index.html'>all students</a></p>" + _table(mine, lambda r: f"{_slug(r.notebook)}.html"))))
    return rows


# 6. A batch

def _kernel_env(jobs: int) -> dict:
    env = dict(os.environ)
    for key, value in {"HF_HUB_OFFLINE": "1", "SDLAB_PROGRESS": "0", "TRANSFORMERS_VERBOSITY": "error",
                       "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}.items():
        env.setdefault(key, value)  # offline and quiet, one share of the cores per kernel
    return env


def _grade_and_save(sub, solution_text, images, timeout, parameters, env, out) -> list[Grade]:
    start = time.perf_counter()
    grades, nb = grade_notebook(sub, solution_text, images, timeout, parameters, env)
    save_result(out, sub, grades, nb, time.perf_counter() - start)
    return grades


def grade(submissions, against: str | Path = "solutions", out: str | Path = "report", *, timeout: float = 600,
          jobs: int = 1, parameters: dict | None = None, progress: bool | None = None) -> Report:
    """Grade notebooks (files or folders) against the solutions of the same name; write the report
    to `out`. `parameters` go into each notebook's parameters cell where it has that name (default:
    the offline model). With no submissions, only rebuilds the report from what `out` holds."""
    from tqdm.auto import tqdm

    from .presets import default_model

    start, against, out = time.perf_counter(), Path(against), Path(out)
    submissions = [submissions] if isinstance(submissions, (str, Path)) else list(submissions)
    if not against.is_dir():
        raise SdlabInputError(f"--against {against} is not a folder: give the course's solutions/ folder")
    if jobs < 1 or timeout <= 0:
        raise SdlabInputError(f"jobs must be 1 or more and timeout positive, got jobs={jobs}, timeout={timeout}")
    subs = [s for s in find_submissions(submissions, against) if out.resolve() not in s.path.resolve().parents]
    if not subs and not list(out.glob("*/*.grade.json")):
        raise SdlabInputError(f"no notebooks to grade in {', '.join(map(str, submissions)) or '(none given)'}")
    parameters = {"model": default_model(), **(parameters or {})}
    solutions = {p.stem: p.read_text(encoding="utf-8") for p in against.glob("*.ipynb")}
    for name in {s.notebook for s in subs} & set(solutions):  # a bad solution fails here, before any work
        hidden_tests(nbformat.reads(solutions[name], as_version=4))
    images, env = against.resolve().parent / "images", _kernel_env(jobs)
    tasks = [(s, solutions.get(s.notebook), images, timeout, parameters, env, out) for s in subs]
    if progress is None:
        progress = os.environ.get("SDLAB_PROGRESS", "1") not in ("0", "false", "no")
    with tqdm(total=len(tasks), desc="grading", unit="notebook", disable=not progress) as bar:
        if jobs == 1:
            for task in tasks:
                _grade_and_save(*task)
                bar.update()
        else:  # spawn: a fresh interpreter per worker, nothing inherited from this one's event loops
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                for done in as_completed([pool.submit(_grade_and_save, *task) for task in tasks]):
                    done.result()
                    bar.update()
    return Report(write_report(out), out, len(tasks), time.perf_counter() - start)
