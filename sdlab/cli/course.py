"""Running a course: blank notebooks from the solutions, and grading."""
from __future__ import annotations

import argparse
import ast
import sys

from ..errors import SdlabInputError
from .command import Command


def _course_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["build", "check"])
    parser.add_argument("--solutions", default="solutions")
    parser.add_argument("--notebooks", default="notebooks")
    parser.add_argument("--repo", metavar="OWNER/NAME[@BRANCH]",
                        help="build: point every notebook's Colab badge and install cell at this GitHub repository "
                             "(branch main unless given), and remember it in pyproject.toml for later builds")


def _course(args) -> None:
    from ..grading import course  # keeps `sdlab --help` fast

    if args.action == "build":
        for path in course.build(args.solutions, args.notebooks, repo=args.repo):
            print(path)
    elif args.repo is not None:
        raise SdlabInputError("--repo goes with `sdlab course build`; `check` checks against the repository that "
                              "build remembered in pyproject.toml")
    else:
        problems = course.check(args.solutions, args.notebooks)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            raise SystemExit(1)
        print("notebooks/ is in sync with solutions/")


def _grade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submissions", nargs="*", help="notebooks, or folders of them (alice/01_loading.ipynb is "
                        "alice's 01_loading); none: only rebuild the report in --out")
    parser.add_argument("--against", default="solutions", help="the completed notebooks, with the hidden tests")
    parser.add_argument("--out", default="report", help="where grades.csv and index.html go")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one cell may run")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at once, one kernel each")
    parser.add_argument("--model", default=None, help="the model the notebooks load (default: sdlab-tiny, offline)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a parameter in every notebook whose parameters cell has it, e.g. -p image_count 2")
    parser.add_argument("--sandbox", choices=["auto", "require", "off"], default="auto",
                        help="run each kernel in bubblewrap: no network, nothing of yours visible but Python and "
                        "the models, only its copy writable (auto: where bwrap works, else a warning; require: "
                        "refuse without it)")
    parser.add_argument("--memory", type=float, default=8, help="GiB of memory one process of a submission may "
                        "allocate (RLIMIT_DATA)")
    parser.add_argument("--processes", type=int, default=1024, help="processes and threads a submission may run")


def _grade(args) -> None:
    from ..grading import Limits, Sandbox, grade  # keeps `sdlab --help` fast

    parameters = {"model": args.model, **{name: _literal(value) for name, value in args.parameter}}
    if args.memory <= 0:
        raise SdlabInputError(f"--memory must be a positive number of GiB, got {args.memory}")
    limits = Limits(memory=round(args.memory * 2**30), processes=args.processes)
    report = grade(args.submissions, args.against, args.out, timeout=args.timeout, jobs=args.jobs,
                   parameters=parameters, sandbox=Sandbox(args.sandbox, limits))
    print(report.line())


def _literal(text: str):
    """'3' → 3, '0.5' → 0.5, 'None' → None; anything else stays a string (like papermill -p)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


COMMANDS = [
    Command("course", "build blank notebooks (and nbgrader's metadata) from solutions, or check they are in sync",
            _course_arguments, _course),
    Command("grade", "run student notebooks and their hidden tests; write grades.csv and an HTML report",
            _grade_arguments, _grade),
]
