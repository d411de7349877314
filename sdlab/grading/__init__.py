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

`sdlab.grading.batch` grades a batch, `sdlab.grading.submissions` finds whose each file is and which
notebook it answers, `sdlab.grading.notebook` grades one (the five steps above) and
`sdlab.grading.report` writes the report. Their public names can be imported from here too; they load
on first use, so a student's kernel that imports `sdlab.grading.values` to answer a test's `ask`
loads nothing else of the grader.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    **dict.fromkeys(["Report", "grade"], "batch"),
    **dict.fromkeys(["ANSI", "KERNEL", "KERNEL_LOG", "STATUSES", "TIMEOUT_ENAME", "Grade", "HiddenTest",
                     "Submission", "execute", "grade_notebook", "hidden_tests", "score", "with_hidden_tests"],
                    "notebook"),
    **dict.fromkeys(["COLUMNS", "check_report_folders", "save_result", "write_report"], "report"),
    **dict.fromkeys(["Limits", "Sandbox"], "sandbox"),
    "find_submissions": "submissions",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what editors and type checkers see; at run time the names load lazily below
    from .batch import Report, grade
    from .notebook import (
        ANSI,
        KERNEL,
        KERNEL_LOG,
        STATUSES,
        TIMEOUT_ENAME,
        Grade,
        HiddenTest,
        Submission,
        execute,
        grade_notebook,
        hidden_tests,
        score,
        with_hidden_tests,
    )
    from .report import COLUMNS, check_report_folders, save_result, write_report
    from .sandbox import Limits, Sandbox
    from .submissions import find_submissions


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sdlab.grading' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
