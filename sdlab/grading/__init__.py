"""Grading: run each student notebook, then its solution's hidden tests in the same kernel.

    report = grade(["submissions/"], against="solutions", out="report", jobs=4)
    print(report.line())

One submission is graded in five steps (`grade_notebook`):

1. Copy it into a temporary course folder of its own (`notebooks/` and a copy of `images/`), so
   what it deletes or writes by relative path (`../solutions`, `../images`) touches only that copy.
2. Inject the parameters (papermill): the offline model, unless told otherwise.
3. Mark where each hidden test of the matching solution goes: after the student's exercise cell
   and its self-check, where `sdlab course build` took it out.
4. Execute every cell with nbclient in one kernel, going on after errors, the kernel confined by
   `sdlab.grading.sandbox` (bubblewrap: no network, nothing of the grader's visible but Python and
   the models, only its copy writable; limits on memory, processes and CPU; every process ended
   with it). A cell that runs past `timeout` seconds is interrupted, and a kernel that does not
   stop then ends the run. At each hidden test's place, the test runs in the judge
   (`sdlab.grading.judge`), a fresh interpreter the student's code never touches, which asks the
   kernel for the values it checks (`ask("doubled")`, `sdlab.grading.values`): the student's code
   can change what it answers, never the verdict, and never sees a test before it runs.
5. Score each exercise: its points when its hidden tests pass, else 0 and the reason.

Each graded submission leaves in `out/<student>/` the executed notebook, its HTML page and its
scores (`<notebook>.grade.json`); `grades.csv` and the HTML index are made from all of them, so
runs (or cluster jobs) over parts of a class add up to one report.

This module grades a batch; `sdlab.grading.submissions` finds whose each file is and which notebook
it answers, `sdlab.grading.notebook` grades one (the five steps above) and `sdlab.grading.report`
writes the report. Their public names can be imported from here too.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import nbformat
from tqdm.auto import tqdm

from ..errors import SdlabInputError, writable_folder
from ..presets import default_model
from .notebook import (
    ANSI,
    KERNEL,
    KERNEL_LOG,
    STATUSES,
    TIMEOUT_ENAME,
    Grade,
    HiddenTest,
    Submission,
    check_judged,
    execute,
    grade_notebook,
    hidden_tests,
    score,
    with_hidden_tests,
)
from .report import COLUMNS, check_report_folders, save_result, write_report
from .sandbox import Limits, Sandbox
from .submissions import find_submissions

__all__ = [
    "ANSI", "COLUMNS", "KERNEL", "KERNEL_LOG", "STATUSES", "TIMEOUT_ENAME",
    "Grade", "HiddenTest", "Limits", "Report", "Sandbox", "Submission",
    "check_report_folders", "execute", "find_submissions", "grade", "grade_notebook", "hidden_tests",
    "save_result", "score", "with_hidden_tests", "write_report",
]


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
                f"{points:g}/{most:g} points{share}{'; ' + lost if lost else ''}; "
                f"report: {self.folder / 'index.html'}")


def _kernel_env(jobs: int) -> dict:
    env = dict(os.environ)
    for key, value in {"HF_HUB_OFFLINE": "1", "SDLAB_PROGRESS": "0", "TRANSFORMERS_VERBOSITY": "error",
                       "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}.items():
        env.setdefault(key, value)  # offline and quiet, one share of the cores per kernel
    return env


def _grade_and_save(sub, solution_text, images, timeout, parameters, env, out, sandbox, against,
                    protected) -> list[Grade]:
    start = time.perf_counter()
    grades, nb = grade_notebook(sub, solution_text, images, timeout, parameters, env, sandbox, against, protected)
    save_result(out, sub, grades, nb, time.perf_counter() - start)
    return grades


def grade(submissions, against: str | Path = "solutions", out: str | Path = "report", *, timeout: float = 600,
          jobs: int = 1, parameters: dict | None = None, progress: bool | None = None,
          sandbox: Sandbox | str = "auto") -> Report:
    """Grade notebooks (files or folders) against the solutions of the same name; write the report
    to `out`. `parameters` go into each notebook's parameters cell where it has that name (default:
    the offline model). `sandbox`: "auto", "require", "off" or a `Sandbox` with its limits
    (`sdlab.grading.sandbox`). With no submissions, only rebuilds the report from what `out` holds."""
    sandbox = sandbox if isinstance(sandbox, Sandbox) else Sandbox(sandbox)
    start, against, out = time.perf_counter(), Path(against), Path(out)
    submissions = [submissions] if isinstance(submissions, (str, Path)) else list(submissions)
    if not against.is_dir():
        raise SdlabInputError(f"--against {against} is not a folder: give the course's solutions/ folder")
    if jobs < 1 or timeout <= 0:
        raise SdlabInputError(f"jobs must be 1 or more and timeout positive, got jobs={jobs}, timeout={timeout}")
    subs = [s for s in find_submissions(submissions, against) if out.resolve() not in s.path.resolve().parents]
    if not subs and not list(out.glob("*/*.grade.json")):
        raise SdlabInputError(f"no notebooks to grade in {', '.join(map(str, submissions)) or '(none given)'}")
    check_report_folders(out, subs)  # two students sharing a report folder would lose a grade
    writable_folder(out)  # before grading, so no notebook is run only for its grade to be lost
    parameters = {"model": default_model(), **(parameters or {})}
    solutions = {p.stem: p.read_text(encoding="utf-8") for p in against.glob("*.ipynb")}
    for name in {s.notebook for s in subs} & set(solutions):  # a bad solution fails here, before any work
        check_judged(hidden_tests(nbformat.reads(solutions[name], as_version=4)), against / f"{name}.ipynb")
    if subs:
        sandbox.bwrap()  # --sandbox require without bubblewrap stops here, before any work
        sandbox.warn()
    # what no student's kernel may see: the solutions, the report, every submission
    protected = (against.resolve(), out.resolve(), *{s.path.resolve().parent for s in subs})
    images, env = against.resolve().parent / "images", _kernel_env(jobs)
    tasks = [(s, solutions.get(s.notebook), images, timeout, parameters, env, out, sandbox, against.resolve(),
              protected) for s in subs]
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
