"""Hyper-parameter search: ``python tune.py --model M --dataset D [--trials N] [main.py flags]``.

Optuna's TPE sampler over the model's search space (its file under recommenders/), pruning
on the per-epoch validation Recall@20; the trials never read the test split; then the best
settings for --final_seeds seeds, tested. The logic: runs/tuning.py; docs/experiments.md.
"""
from __future__ import annotations

import sys

from runs.cli import run_cli
from runs.tuning import search, tune_parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        tune_parser().print_help()
        print("\nEvery flag of python main.py (--model M -h) is passed to the runs.")
        return 0
    return run_cli(lambda: search(argv) and None,
                   interrupted="interrupted: run the same command again to continue the study")


if __name__ == "__main__":
    sys.exit(main())
