"""Run an experiment file: ``python sweep.py EXPERIMENT.yaml [--workers N] [--devices LIST]``.

Every cell of the file's grid is an ordinary run folder; finished cells are skipped and
interrupted ones resumed, so the same command continues a sweep after a crash. The logic:
runs/sweep.py; the file format: docs/experiments.md.
"""
from __future__ import annotations

import argparse
import sys

from runs.cli import run_cli
from runs.sweep import run_sweep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", help="the experiment's YAML file (docs/experiments.md)")
    p.add_argument("--workers", type=int, help="cells run at once (default 1; with "
                                               "--devices: one per device)")
    p.add_argument("--devices", help="comma-separated devices given to the workers in turn, "
                                     "e.g. cuda:0,cuda:1")
    args = p.parse_args(argv)
    devices = [d for d in (args.devices or "").split(",") if d]
    workers = max(1, len(devices)) if args.workers is None else args.workers
    return run_cli(lambda: run_sweep(args.experiment, workers, devices),
                   interrupted="interrupted: run the same command again to continue the sweep")


if __name__ == "__main__":
    sys.exit(main())
