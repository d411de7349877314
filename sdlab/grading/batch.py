"""Grading a batch: every submission found, graded (serially or in `jobs` processes, their judges
forked by one server) and saved, then the report written from all of them (`grade`, `Report`)."""
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
from .judge import ENTRY
from .judge_server import attach, server_for
from .notebook import STATUSES, Grade, check_judged, grade_notebook, hidden_tests, judge_env
from .report import check_report_folders, save_result, write_report
from .sandbox import Sandbox
from .submissions import find_submissions


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


_batches = 0  # gradings this process has run


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
    global _batches
    _batches += 1
    # one server forks every judge, where that pays for its preload: two submissions or more, or a
    # process that grades again (a notebook, a test run); one submission alone gets a fresh judge
    server = server_for(judge_env(env), ENTRY) if len(tasks) > 1 or _batches > 1 else None
    with tqdm(total=len(tasks), desc="grading", unit="notebook", disable=not progress) as bar:
        if jobs == 1:
            for task in tasks:
                _grade_and_save(*task)
                bar.update()
        else:  # spawn: a fresh interpreter per worker, nothing inherited from this one's event loops
            shared = {} if server is None else {"initializer": attach,
                                                "initargs": (judge_env(env), ENTRY, server.address)}
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), **shared) as pool:
                for done in as_completed([pool.submit(_grade_and_save, *task) for task in tasks]):
                    done.result()
                    bar.update()
    return Report(write_report(out), out, len(tasks), time.perf_counter() - start)
