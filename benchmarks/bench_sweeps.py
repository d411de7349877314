"""Run sdlab's side-by-side benchmark: `python benchmarks/bench_sweeps.py --quick` (see README.md)."""
import sys

from sdlab.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
