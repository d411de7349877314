"""What one `sdlab` subcommand is: its name, its help, the arguments it takes and what it runs."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One subcommand. `arguments` adds its options to the parser argparse made for it (None: it
    takes none); `run` gets the parsed arguments, prints, and raises SdlabInputError for bad input
    (main prints the message, without a traceback, and exits with 2)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], None]

    def add_to(self, subparsers) -> None:
        parser = subparsers.add_parser(self.name, help=self.help, description=self.help)
        if self.arguments is not None:
            self.arguments(parser)
        parser.set_defaults(run=self.run)
