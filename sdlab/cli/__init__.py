"""The `sdlab` command (also `python -m sdlab`).

    sdlab generate "a red circle" --model sdlab-tiny --seed 42 -n 4 --out outputs/
    sdlab regenerate outputs/42.png --out again.png
    sdlab train-tiny --out runs/sdlab-tiny        sdlab eval-tiny
    sdlab course build | check                    sdlab models | schedulers
    sdlab grade submissions/ --out report/ --jobs 4
    sdlab serve --model sdlab-tiny --port 7860    sdlab faces photo.jpg --out fixed.png

Each subcommand is a `Command` (command.py): its arguments and its handler side by side, in the
module of the people who run it. A handler reads its arguments, calls the library and prints.

    images.py   generate, regenerate, models, schedulers   making images (students)
    course.py   course, grade                              running a course (instructors)
    server.py   serve, finetune, feedback-demo             the class server, and the models a class makes
    model.py    train-tiny, eval-tiny                      making sdlab-tiny
    tools.py    faces, bench                               face repair on a photo, the benchmarks
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import SdlabInputError
from ..presets import default_model
from . import course, images, model, server, tools
from .command import Command

COMMANDS: list[Command] = [*images.COMMANDS, *model.COMMANDS, *course.COMMANDS, *server.COMMANDS,
                           *tools.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdlab", description="Stable Diffusion course kit")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_to(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    if getattr(args, "model", "x") is None:
        args.model = default_model()
    try:
        args.run(args)
    except SdlabInputError as err:
        print(f"sdlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
