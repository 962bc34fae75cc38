"""Single-seed runs gathered into one multi-seed folder:
``python -m runs.gather --into DIR RUN [RUN ...]``.

Seeds run as separate processes (one per core, or on several machines) are one experiment
only if they differ in nothing but their seed. This command checks that, then copies each
run to ``DIR/seed<S>/`` and writes what ``main.py --seeds`` writes: ``seeds.json`` (the
settings, with the list of seeds), ``summary.json`` and ``summary.txt`` (runs/seeds.py), so
that compare.py (``--test`` too), recommend.py and the sweep read the folder as any
multi-seed run; ``gathered.json`` records where each seed came from (relative to ``DIR``)
and the code each trained on (environment.jsonl; a note when they differ). Refused in one
line, before anything is written: a run that did not finish (no metrics.json, or one that is
not the run's end), a metrics.json without the numbers a summary needs or without its input
records, runs whose settings differ (the first differing setting is named; where and how
fast they ran may differ), two runs of one seed, runs that read other data (input files' git
blob SHA-1, by role) or report other metrics, and a ``DIR`` that already exists. The folder
is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from data.errors import UserError
from runs import environment, run_folder
from runs.cli import command_line, run_cli
from runs.files import dump_json
from runs.problem import PLACE
from runs.seeds import SEEDS_FILE, SUMMARY_TEXT, write_summary
from runs.summary import COUNTS, SPLITS

GATHERED_FILE = "gathered.json"
CHECKPOINTS = ("best.pt", "last.pt", "best.next.pt")
# where or how a run ran, or what its folder is called: free to differ between the seeds;
# the input files are compared by their bytes (git blob SHA-1), not by where they lay
FREE = (*PLACE, "random_seed", "inputs")


class GatherError(UserError, ValueError):
    """Runs that cannot be gathered into one multi-seed folder."""


def read_run(path: str) -> tuple[Path, dict, dict]:
    """(folder, config.json, metrics.json) of a finished single run; GatherError otherwise."""
    folder = Path(path)
    if (folder / SEEDS_FILE).is_file():
        raise GatherError(f"{path} is a multi-seed run; gather its seed<S>/ folders")
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise GatherError(f"{path}: not a run folder (no config.json)") from None
    except (OSError, ValueError) as err:
        raise GatherError(f"{path}/config.json cannot be read ({err})") from None
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        ended = bool(metrics["early_stopped"]) or metrics["last_epoch"] >= config["epochs"]
    except FileNotFoundError:
        raise GatherError(f"{path} did not finish (no metrics.json): killed or still "
                          f"running; finish it with python main.py --resume {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GatherError(f"{path}/metrics.json cannot be read ({err})") from None
    if not ended:
        raise GatherError(f"{path} stopped at epoch {metrics['last_epoch']} of "
                          f"{config['epochs']}; finish it with python main.py --resume {path}")
    lacking = [k for k in COUNTS if not isinstance(metrics.get(k), (int, float))] + \
        [s for s in SPLITS if not isinstance(metrics.get(s), dict)]
    if lacking:
        raise GatherError(f"{path}/metrics.json lacks {lacking[0]}: damaged, or not written "
                          f"by main.py")
    if not metrics.get("inputs"):
        raise GatherError(f"{path}/metrics.json records no input files, so its data cannot "
                          f"be checked against the other seeds'")
    return folder, config, metrics


def first_difference(a: dict, b: dict) -> str | None:
    """The first setting both configs have with another value (a setting only one knows,
    added by a later version, is not compared: as runs/resume.py)."""
    for key in sorted(set(a) & set(b)):
        if key in FREE:
            continue
        if json.dumps(a.get(key), default=str) != json.dumps(b.get(key), default=str):
            return key
    return None


def check_runs(runs: list[tuple[Path, dict, dict]]) -> dict[int, tuple[Path, dict, dict]]:
    """The runs by seed, checked: one seed each, the same settings and the same inputs."""
    by_seed: dict[int, tuple[Path, dict, dict]] = {}
    first_folder, first, _ = runs[0]
    for run in runs:
        folder, config, _ = run
        seed = config.get("random_seed")
        if seed in by_seed:
            raise GatherError(f"{by_seed[seed][0]} and {folder} are both seed {seed}")
        key = first_difference(first, config)
        if key is not None:
            raise GatherError(f"{folder} has {key} {config.get(key)!r}, {first_folder} has "
                              f"{first.get(key)!r}: not seeds of one configuration")
        by_seed[seed] = run
    blobs = lambda m: {r["role"]: r["git_blob"] for r in m["inputs"]}  # noqa: E731
    first_metrics = runs[0][2]
    for folder, _, metrics in runs:
        own, theirs = blobs(metrics), blobs(first_metrics)
        differ = sorted(r for r in own.keys() | theirs.keys() if own.get(r) != theirs.get(r))
        if differ:
            raise GatherError(f"{folder} read other files than {first_folder} "
                              f"({', '.join(differ)}): not seeds of one experiment")
        if {split: sorted(metrics[split]) for split in SPLITS} != \
                {split: sorted(first_metrics[split]) for split in SPLITS}:
            raise GatherError(f"{folder} reports other metrics than {first_folder} (another "
                              f"--top_k or version?): they cannot be averaged")
    return dict(sorted(by_seed.items()))


def gather(paths: list[str], into: str, checkpoints: bool = True, quiet: bool = False) -> dict:
    """Check ``paths``, copy them into ``into``/seed<S>/ and write the multi-seed files;
    returns the summary."""
    if len(paths) < 2:
        raise GatherError("give at least two runs to gather")
    target = Path(into)
    if target.exists():
        raise GatherError(f"--into {into} exists; give a new folder")
    by_seed = check_runs([read_run(p) for p in paths])
    seeds = list(by_seed)
    first = by_seed[seeds[0]][1]
    codes = {f"seed{s}": ", ".join(sorted(environment.trained_on(f)))
             for s, (f, _, _) in by_seed.items()}
    ignore = shutil.ignore_patterns(run_folder.LOCK_FILE, *(() if checkpoints else CHECKPOINTS))
    building = target.with_name(f".{target.name}.{os.getpid()}.gathering")
    try:  # built beside the target and renamed at the end: all of it or nothing
        for seed, (folder, _, _) in by_seed.items():
            shutil.copytree(folder, building / f"seed{seed}", ignore=ignore)
        dump_json({**first, "random_seed": seeds[0], "seeds": seeds,
                   "path_name": target.name}, building / SEEDS_FILE)
        dump_json({"command": command_line("python -m runs.gather"),
                   "seeds": {f"seed{s}": os.path.relpath(f, target)
                             for s, (f, _, _) in by_seed.items()},
                   "sources_relative_to": "this folder", "code": codes,
                   "checkpoints": checkpoints}, building / GATHERED_FILE)
        summary = write_summary(building, {s: m for s, (_, _, m) in by_seed.items()}, None,
                                True)
        building.rename(target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    if len(set(codes.values())) > 1:
        versions = "; ".join(sorted(set(codes.values())))
        print(f"note: the seeds trained on different code ({versions}); gathered.json lists "
              f"each seed's", file=sys.stderr)
    if not quiet:
        print((target / SUMMARY_TEXT).read_text(), end="")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runs.gather",
                                description="Gather finished single-seed runs of one "
                                            "configuration into a multi-seed folder.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    p.add_argument("--into", required=True, metavar="DIR", help="the new multi-seed folder")
    p.add_argument("--without_checkpoints", action="store_true",
                   help="leave best.pt / last.pt out of the copies (e.g. to commit the logs)")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    def run() -> int:
        gather(args.runs, args.into, not args.without_checkpoints, args.quiet)
        return 0
    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
