"""One configuration over several seeds (``main.py --seeds 2024 2025 ...`` / ``--num_seeds N``).

The seeds run one after the other, each a normal run folder ``<run>/seed<S>/``; then
``<run>/summary.json`` holds mean ± std of every number of their metrics.json and
``<run>/summary.txt`` the same as a table. ``--resume <run>`` continues a multi-seed run:
finished seeds are kept, an interrupted one resumes from its last.pt, missing ones start.
std is the sample standard deviation (n - 1 in the denominator; 0 for a single seed).
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from data.errors import UserError
from runs import run_folder
from runs.files import atomic_write_text, dump_json

if TYPE_CHECKING:
    from runs.config import Config

class SeedsError(UserError, ValueError):
    """A multi-seed run folder that cannot be created or continued."""


SEEDS_FILE = "seeds.json"  # the shared config of a multi-seed run (what --resume reads)
SUMMARY_FILE = "summary.json"


def resolve_seeds(seeds, num_seeds: int | None, first_seed: int) -> tuple[int, ...] | None:
    """--seeds as given, or --num_seeds N as first_seed, first_seed + 1, ...; ValueError on
    a bad combination."""
    if seeds is not None and num_seeds is not None:
        raise ValueError("give --seeds or --num_seeds, not both")
    if num_seeds is not None:
        if num_seeds < 1:
            raise ValueError("--num_seeds must be >= 1")
        return tuple(first_seed + k for k in range(num_seeds))
    if seeds is None:
        return None
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError("--seeds needs distinct values")
    return seeds


def mean_std(values) -> tuple[float, float]:
    """(mean, sample standard deviation) of the values; std = 0 for one value."""
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(per_seed: dict[int, dict]) -> dict:
    """Mean ± std over seeds of every number in their metrics.json.

    per_seed: seed -> metrics.json content. Returns {"seeds", "num_seeds", "dataset", and
    for best_epoch, last_epoch, train_seconds, seconds_per_epoch, best_validation.<metric>,
    test.<metric>: {"mean", "std", "values"}}.
    """
    seeds = sorted(per_seed)
    runs = [per_seed[s] for s in seeds]

    def stat(values):
        mean, std = mean_std(values)
        return {"mean": mean, "std": std, "values": list(values)}

    out = {"seeds": seeds, "num_seeds": len(seeds), "dataset": runs[0].get("dataset")}
    for key in ("best_epoch", "last_epoch", "train_seconds", "seconds_per_epoch"):
        out[key] = stat([r[key] for r in runs])
    for split in ("best_validation", "test"):
        out[split] = {m: stat([r[split][m] for r in runs]) for m in runs[0][split]}
    return out


def check_same_inputs(per_seed: dict[int, dict]) -> None:
    """Every seed of one summary must have read the same files (SeedsError)."""
    blobs = {seed: {r["role"]: r["git_blob"] for r in m.get("inputs") or []}
             for seed, m in per_seed.items()}
    first = min(blobs)
    for seed, files in blobs.items():
        differ = sorted(role for role in files.keys() & blobs[first].keys()
                        if files[role] != blobs[first][role])
        if differ:
            raise SeedsError(f"seed{seed} read other files than seed{first} ({', '.join(differ)}); "
                             f"no summary of seeds on different data")


def summary_lines(summary: dict) -> list[str]:
    lines = [f"{summary['num_seeds']} seeds: {' '.join(map(str, summary['seeds']))}"]
    for split in ("best_validation", "test"):
        for metric, s in summary[split].items():
            lines.append(f"{split} {metric}: {s['mean']:.4f} ± {s['std']:.4f}")
    for key in ("best_epoch", "train_seconds", "seconds_per_epoch"):
        lines.append(f"{key}: {summary[key]['mean']:.1f} ± {summary[key]['std']:.1f}")
    return lines


def run_seeds(config: Config, run_one: Callable[[Config], dict]) -> dict:
    """Run ``config`` once per seed (sequentially) and write the summary; returns it."""
    if config.resume:  # <result_dir>/<dataset>/<path_name>, as a fresh multi-seed run made it
        parent, name = Path(config.resume), config.path_name
        root = parent.resolve()
        for _ in Path(name).parts:
            root = root.parent
        if root.name != config.dataset:
            raise SeedsError(f"--resume {config.resume}: a multi-seed run folder lies in "
                             f"<result_dir>/{config.dataset}/{name}")
        result_dir = str(root.parent)
        folder = run_folder.open_existing(parent)
    else:
        name = config.path_name or run_folder.default_name()
        result_dir = config.result_dir
        run_folder.check_result_dir(result_dir)
        parent = Path(result_dir) / config.dataset / name
        folder = run_folder.claim_new(parent, finished=(SEEDS_FILE,), known=())
    try:
        per_seed = {}
        for seed in config.seeds:  # check every finished seed before anything trains
            metrics = finished_seed(parent / f"seed{seed}", seed, config)
            if metrics is not None:
                per_seed[seed] = metrics
        for stale in (SUMMARY_FILE, "summary.txt"):  # rewritten when every seed is done
            (parent / stale).unlink(missing_ok=True)
        dump_json({**config.to_dict(), "resume": None, "path_name": name}, parent / SEEDS_FILE)
        return _run_seeds(config, run_one, parent, name, result_dir, per_seed)
    finally:
        folder.release()


def finished_seed(seed_dir: Path, seed: int, config: Config) -> dict | None:
    """The metrics.json of a seed that can stand in the summary as it is; None when the
    seed is to (continue to) run; SeedsError when it finished on other data, or ran more
    epochs than --epochs now allows."""
    path = seed_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
        metrics["last_epoch"], metrics["early_stopped"]  # noqa: B018 - the keys used below
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise SeedsError(f"{path} is damaged; delete it (the seed then continues from its "
                         f"last.pt) or start a new multi-seed run") from None
    saved = metrics.get("inputs")
    if saved is not None:
        from data.provenance import first_change, located, record_file
        from data.splits import resolve_data_dir
        data_dir = resolve_data_dir(config.data_dir)
        files = [(r["role"], located(r, data_dir)) for r in saved]
        missing = next((p for _, p in files if not p.is_file()), None)
        change = f"{missing} no longer exists" if missing else first_change(
            saved, [record_file(role, p, data_dir) for role, p in files])
        if change:
            raise SeedsError(f"seed{seed} finished on other data: {change}; its numbers cannot "
                             f"be averaged with new seeds' — restore the file or start a new "
                             f"multi-seed run")
    if metrics["last_epoch"] > config.epochs:
        raise SeedsError(f"seed{seed} ran {metrics['last_epoch']} epochs, more than --epochs "
                         f"{config.epochs}; a summary must not mix run lengths")
    if not metrics["early_stopped"] and metrics["last_epoch"] < config.epochs:
        return None  # a larger --epochs: the seed continues from its last.pt
    return metrics


def _run_seeds(config: Config, run_one, parent: Path, name: str, result_dir: str,
               per_seed: dict) -> dict:
    for seed in config.seeds:
        if seed in per_seed:
            continue
        seed_dir = parent / f"seed{seed}"
        resume = str(seed_dir) if (seed_dir / "last.pt").is_file() else None
        seed_config = replace(config, random_seed=seed, seeds=None, compare_to=None,
                              resume=resume, result_dir=result_dir,
                              path_name=f"{name}/{seed_dir.name}")
        per_seed[seed] = run_one(seed_config)
    check_same_inputs(per_seed)
    summary = summarize(per_seed)
    summary["runs"] = [f"seed{s}" for s in summary["seeds"]]
    dump_json(summary, parent / SUMMARY_FILE)
    lines = summary_lines(summary)
    if config.compare_to:
        import compare  # here: compare.py imports nothing of the training side
        lines += ["", *compare.lines_after_run([*config.compare_to, str(parent)])]
    atomic_write_text(parent / "summary.txt", "\n".join(lines) + "\n")
    if not config.quiet:
        print("\n".join(lines))
    return summary
