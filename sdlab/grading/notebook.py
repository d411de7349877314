"""Grading one submission (`grade_notebook`): hidden tests put back, one kernel, one score per exercise.

The five steps are listed in `sdlab.grading`; these are its parts: `hidden_tests` and
`with_hidden_tests` put each hidden test of the solution back after its exercise and self-check,
`execute` runs every cell in one kernel through errors and timeouts, and `score` gives one `Grade`
per exercise (`STATUSES` says what each status means).
"""
from __future__ import annotations

import ast
import contextlib
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import nbformat

from ..errors import SdlabInputError
from .course import BEGIN_HIDDEN, END_HIDDEN, has_marker, marker
from .judge import Judge
from .nbgrader import exercise_of, without_ask_import
from .outputs import MAX_CHARS, clip_error, limit_outputs
from .sandbox import Cgroup, Sandbox, kernel_manager
from .values import MIME, expression

KERNEL = "python3"
STATUSES = {  # every status but the first scores 0
    "passed": "the hidden tests passed: full points",
    "failed": "the exercise ran, its hidden tests failed",
    "error": "the exercise cell raised an error",
    "unfinished": "the exercise cell, or the function it defines, still raises the blank's NotImplementedError",
    "timeout": "the exercise (or its tests) ran past --timeout and was interrupted",
    "not run": "the kernel died or would not stop before the tests ran",
    "invalid": "the file is not a notebook (not JSON, or not nbformat), or could not be graded",
    "unmatched": "no solution has this notebook's name",
}
TIMEOUT_ENAME = "TimeoutError"
JUDGE_START = 120  # seconds a judge may take to start, or to load a model, on a busy machine
ASK_TIMEOUT = 30  # the least time one of its questions to the kernel may take (a busy machine, a long output)
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


def check_judged(tests: list[HiddenTest], where: Path | str = "the solution") -> None:
    """Refuse hidden tests that never `ask`: they run in the grader's judge, where a name of the
    student's notebook is not defined, so they could never pass."""
    for test in tests:
        if "ask(" not in test.source:
            raise SdlabInputError(
                f"{where}: the hidden tests of {test.exercise!r} never call ask(...): hidden tests run in the "
                f"grader's own interpreter, not in the student's kernel; ask it for the values they check, "
                f"e.g. assert ask('answer') == 42 (sdlab.grading.values)")


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
            if has_marker(cell.source, BEGIN_HIDDEN):  # its hidden tests go; so does nbgrader's import for them
                cell.source = without_ask_import(_split_hidden(cell.source)[0])
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
            replies: dict | None = None, km=None, judge: Judge | None = None) -> tuple[dict, str]:
    """Run every code cell of `nb` in one kernel, in place, through errors. Returns each cell's
    execute reply by index (also put in `replies`, if given, as they come, so that they are there
    should the run fail), and why the run stopped early ("" when every cell ran). The kernel
    process's own output goes to `log` (a file), not to the terminal; each cell's outputs are
    kept to size as they arrive (`sdlab.grading.outputs`). `km`: the kernel's manager (the
    sandbox's), else a plain one. With a `judge`, hidden-test cells run there, never in the
    kernel (`sdlab.grading.judge`), and their reply is the judge's."""
    from jupyter_core.utils import run_sync  # heavy: jupyter_client and zmq load only to run a notebook
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
        shutdown_kernel="immediate", log=KERNEL_LOG, resources={"metadata": {"path": str(workdir)}}, km=km,
        on_cell_executed=lambda cell_index, execute_reply, **_: replies.update(
            {cell_index: clip_error(execute_reply["content"])}))

    def run(index: int) -> None:
        client.execute_cell(nb.cells[index], index)
        if _timed_out(replies.get(index)):
            nb.cells[index].outputs.append(nbformat.v4.new_output("error", **client.error_on_timeout))

    def stopped() -> bool:
        """After an interrupt: does the kernel answer `pass` (within ASK_TIMEOUT at most, not another
        whole --timeout), or is it still running the cell?"""
        probe, limits = len(nb.cells), (client.timeout, client.iopub_timeout)
        nb.cells.append(nbformat.v4.new_code_cell("pass"))
        client.timeout, client.iopub_timeout = min(client.timeout, ASK_TIMEOUT), 1  # `pass` prints nothing to wait for
        try:
            client.execute_cell(nb.cells[probe], probe, store_history=False)
        finally:
            client.timeout, client.iopub_timeout = limits
            nb.cells.pop()
        return not _timed_out(replies.pop(probe, None))

    def relay(code: str) -> tuple[str | None, str | None]:
        """Ask the kernel for the value of `code` (a judge's `ask`): (its text, None) or (None, why
        not). It goes as a user expression of a silent request, which no cell hook or transformer
        of the student's sees; past `timeout` the kernel is interrupted."""
        sent = client.kc.execute("", silent=True, store_history=False, user_expressions={"value": expression(code)})
        deadline = time.monotonic() + max(timeout, ASK_TIMEOUT)
        while True:
            if time.monotonic() > deadline:
                run_sync(client.km.interrupt_kernel)()
                return None, f"{TIMEOUT_ENAME}: sdlab grade interrupted the cell after {max(timeout, ASK_TIMEOUT):g} s"
            try:
                msg = run_sync(client.kc.get_shell_msg)(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            except Empty:
                if not run_sync(client.km.is_alive)():
                    dead.append(True)
                    return None, "the kernel died"
                continue
            if msg.get("parent_header", {}).get("msg_id") == sent:
                break
        content = msg.get("content", {})
        result = content.get("user_expressions", {}).get("value", {}) if content.get("status") == "ok" else content
        if result.get("status") == "error":
            return None, _one_line(f"{result.get('ename')}: {result.get('evalue')}", MAX_CHARS)
        value = result.get("data", {}).get(MIME) if result.get("status") == "ok" else None
        return (value, None) if isinstance(value, str) else (
            None, "the kernel answered no value (a cell of the notebook may have changed how the kernel answers)")

    def judged(index: int, cell) -> None:
        # the judge's own work (its first test loads the model) has JUDGE_START beyond the cell's timeout
        reply = judge.run(cell.source, _sdlab(cell)["grade"], relay, timeout + JUDGE_START)
        replies[index] = clip_error(reply)
        passed = nbformat.v4.new_output("stream", name="stdout", text="the hidden tests passed\n")
        cell.outputs = [passed if reply["status"] == "ok" else nbformat.v4.new_output(
            "error", ename=reply["ename"], evalue=reply["evalue"], traceback=reply.get("traceback", []))]
        if dead:
            raise DeadKernelError("the kernel died")

    count, dead = 0, []  # the last execution count: a cell that kills the kernel may not get its own
    with client.setup_kernel(env=env, stdout=log, stderr=log, cleanup_kc=True):
        for index, cell in enumerate(list(nb.cells)):
            if cell.cell_type != "code":
                continue
            try:
                if judge is not None and "grade" in _sdlab(cell):
                    judged(index, cell)
                    continue
                run(index)
                count = cell.execution_count or count
                if _timed_out(replies.get(index)) and not stopped():  # did the interrupt stop it?
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


def _blank(reply, name: str) -> bool:
    """The blank's own NotImplementedError for exercise `name`: raised by its cell, or by the
    function the cell defines when a hidden test asked the kernel to call it."""
    return _error(reply).removeprefix("AskError: ").startswith(f"NotImplementedError: Exercise '{name}'")


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
            status = "timeout" if _timed_out(own) else "unfinished" if _blank(own, name) else "error"
            message = _error(own)
            first = next((i for i in errors if i < e), None)
            if status == "error" and first is not None:
                message += f"; the first error was in In [{nb.cells[first].execution_count}]: {_error(replies[first])}"
        elif test is None:
            status, message = "not run", stopped or "the hidden tests did not run"
        elif _blank(test, name):  # the cell defines a function, whose body is still the blank's
            status, message = "unfinished", _error(test).removeprefix("AskError: ")
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


def _parameters_source(solution: nbformat.NotebookNode) -> str:
    """The Python of the solution's `parameters` cell (its IPython magics left out; "" when none)."""
    cell = next((c for c in solution.cells if "parameters" in c.metadata.get("tags", [])), None)
    return "" if cell is None else "\n".join(line for line in cell.source.splitlines()
                                             if not line.lstrip().startswith("%"))


def _parameters_in(solution: nbformat.NotebookNode) -> set[str]:
    """The names the solution's `parameters` cell assigns."""
    tree = ast.parse(_parameters_source(solution))
    return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}


def _invalid(sub: Submission, tests: list[HiddenTest], message: str) -> list[Grade]:
    """0 points for every exercise, with the reason: this submission could not be graded."""
    return [Grade(sub.student, sub.notebook, t.exercise, 0, t.points, "invalid", _one_line(message))
            for t in tests] or [Grade(sub.student, sub.notebook, "", 0, 0, "invalid", _one_line(message))]


def grade_notebook(sub: Submission, solution_text: str | None, images: Path | None, timeout: float,
                   parameters: dict, env: dict, sandbox: Sandbox | None = None, against: Path | None = None,
                   protected: tuple[Path, ...] = ()) -> tuple[list[Grade], nbformat.NotebookNode | None]:
    """Grade one submission in its own temporary course folder, its kernel confined by `sandbox`
    (default: `Sandbox()`) with `protected` folders out of its sight, its hidden tests run by a
    judge in `against` (the solutions' folder); never raises for what the submission contains
    (what cannot be graded is "invalid", with the reason)."""
    if solution_text is None:
        return [Grade(sub.student, sub.notebook, "", 0, 0, "unmatched",
                      f"no solution named {sub.notebook}.ipynb to grade {sub.path.name} against")], None
    solution = nbformat.reads(solution_text, as_version=4)
    tests = hidden_tests(solution)  # the solution's own problems are raised (`grade` checks them first)
    try:
        return _grade_notebook(sub, solution, tests, images, timeout, parameters, env, sandbox or Sandbox(),
                               against, protected)
    except Exception as err:  # whatever the notebook holds, the rest of the class is still graded
        return _invalid(sub, tests, f"{sub.path.name} could not be graded: {type(err).__name__}: {err}"), None


SAFE_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "MPLBACKEND", "TRANSFORMERS_VERBOSITY",
            "TRANSFORMERS_OFFLINE", "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_OFFLINE")
SAFE_PREFIXES = ("SDLAB_", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "TORCH_", "PYTORCH_", "LC_", "NVIDIA_")


def judge_env(env: dict) -> dict:
    """The environment of a submission's judge: the grader's, with no progress bars."""
    return {**env, "SDLAB_PROGRESS": "0"}


def kernel_env(env: dict, folder: Path) -> dict:
    """What a student's kernel gets of the grader's environment: the settings that make it run as the
    grader asks (threads, offline models, caches), never a token or key; its home and temporary
    files in its own folder."""
    from ..faces.weights import weights_dir  # the face weights' folder, where the kernel reads them

    kept = {k: v for k, v in env.items() if (k in SAFE_ENV or k.startswith(SAFE_PREFIXES))
            and not any(word in k.upper() for word in ("TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL"))}
    home = Path.home()
    caches = {"HF_HOME": env.get("HF_HOME", home / ".cache" / "huggingface"),
              "SDLAB_WEIGHTS": env.get("SDLAB_WEIGHTS", weights_dir()),
              "TORCH_HOME": env.get("TORCH_HOME", home / ".cache" / "torch")}
    kept.update({k: str(Path(v).expanduser()) for k, v in caches.items()})  # the home moves; the caches stay
    kept.update({"HOME": str(folder / "home"), **{k: str(folder / "tmp") for k in ("TMPDIR", "TEMP", "TMP")}})
    return kept


def _grade_notebook(sub, solution, tests, images, timeout, parameters, env, sandbox, against, protected):
    from jupyter_core.utils import run_sync  # heavy: jupyter_client loads only to grade
    from papermill.iorw import load_notebook_node  # heavy: papermill loads only to grade
    from papermill.parameterize import parameterize_notebook  # heavy: papermill loads only to grade

    wanted = _parameters_in(solution)
    try:
        nb = load_notebook_node(str(sub.path))  # papermill's reader: adds the metadata it needs
        nb = parameterize_notebook(nb, {k: v for k, v in parameters.items() if k in wanted},
                                   kernel_name=KERNEL, language="python")
        nb = with_hidden_tests(nb, tests)
    except Exception as err:  # not JSON, not UTF-8, not a notebook
        return _invalid(sub, tests, f"{sub.path.name} is not a valid notebook: {type(err).__name__}: {err}"), None
    cells = sum(c.cell_type == "code" for c in nb.cells)
    threads = int(env.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="sdlab-grade-", ignore_cleanup_errors=True) as tmp, \
            contextlib.ExitStack() as stack:
        folder = Path(tmp)
        workdir = folder / "course" / "notebooks"
        for made in (workdir, folder / "tmp", folder / "home"):
            made.mkdir(parents=True)
        if images is not None and images.is_dir():
            shutil.copytree(images, workdir.parent / "images")
        shutil.copyfile(sub.path, workdir / f"{sub.notebook}.ipynb")
        log_path, replies = folder.parent / f"{folder.name}.log", {}
        log = stack.enter_context(open(log_path, "w"))
        stack.callback(log_path.unlink, missing_ok=True)
        cgroup = Cgroup.make(sandbox.limits.processes)
        if cgroup is not None:
            stack.callback(cgroup.close)  # every process the submission started ends with its grading
        km = kernel_manager(sandbox, KERNEL, folder, workdir, [Path(p).resolve() for p in protected],
                            math.ceil(timeout * (cells + 1) * threads), cgroup)
        judge = Judge(against or folder, judge_env(env), log)
        stack.callback(judge.close)
        values = {k: v for k, v in parameters.items() if k in wanted}
        ready = judge.setup(_parameters_source(solution), values, folder, JUDGE_START)
        if ready.get("status") != "ok":
            raise RuntimeError(f"the judge could not start: {ready.get('ename')}: {ready.get('evalue')}")
        try:
            stopped = execute(nb, workdir, timeout, kernel_env(env, folder), log, replies, km=km, judge=judge)[1]
        except Exception as err:  # the kernel would not start, or nbclient failed: grade what ran
            log.flush()
            tail = " ".join(log_path.read_text(errors="replace").splitlines()[-3:])
            stopped = _one_line(f"grading stopped: {type(err).__name__}: {err} {tail}")
        finally:
            with contextlib.suppress(Exception):  # nbclient has usually stopped it already
                if km.has_kernel:
                    run_sync(km.shutdown_kernel)(now=True)
        grades = score(nb, replies, stopped, sub.student, sub.notebook)
    for g in grades:
        g.message = g.message.replace(tmp, "<tmp>")
    return grades, nb
