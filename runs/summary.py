"""The summary of a multi-seed run (runs/seeds.py): mean ± std over its seeds of every number
of their metrics.json, in ``summary.json`` (and ``summary.txt`` as a table), and whether a
summary still holds what its seeds' metrics.json say. Reads and computes only: compare.py
checks a summary with it before showing one; runs/seeds.py writes them.

std is the sample standard deviation (n - 1 in the denominator; 0 for a single seed).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

SEEDS_FILE = "seeds.json"  # the shared config of a multi-seed run (what --resume reads)
SUMMARY_FILE = "summary.json"
SUMMARY_TEXT = "summary.txt"
COUNTS = ("best_epoch", "last_epoch", "train_seconds", "seconds_per_epoch")
SPLITS = ("best_validation", "test")


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
    for key in COUNTS:
        out[key] = stat([r[key] for r in runs])
    for split in SPLITS:
        out[split] = {m: stat([r[split][m] for r in runs]) for m in runs[0][split]}
    return out


def summary_lines(summary: dict) -> list[str]:
    lines = [f"{summary['num_seeds']} seeds: {' '.join(map(str, summary['seeds']))}"]
    for split in SPLITS:
        for metric, s in summary[split].items():
            lines.append(f"{split} {metric}: {s['mean']:.4f} ± {s['std']:.4f}")
    for key in ("best_epoch", "train_seconds", "seconds_per_epoch"):
        lines.append(f"{key}: {summary[key]['mean']:.1f} ± {summary[key]['std']:.1f}")
    return lines


def summary_problem(folder: Path) -> str | None:
    """Why ``folder``'s summary.json is not the mean ± std of its seeds as they are now — it
    is missing (a seed unfinished, or continued on its own and not averageable), or a value
    differs from a seed's metrics.json (a seed continued by a version that did not rebuild
    the summary, or edited) — or None. Compared value by value: file times do not survive
    a copy."""
    rebuild = f"python main.py --resume {folder} [--epochs N] finishes every seed and rebuilds it"
    if not (folder / SUMMARY_FILE).is_file():
        return f"a multi-seed run without {SUMMARY_FILE} (a seed is unfinished or was " \
               f"continued on its own); {rebuild}"
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    names = summary.get("runs") or [f"seed{s}" for s in summary["seeds"]]
    for k, name in enumerate(names):
        path = folder / name / "metrics.json"
        if not path.is_file():
            return f"{name} has no metrics.json (unfinished); {rebuild}"
        metrics = json.loads(path.read_text())
        pairs = [(key, summary[key], metrics.get(key)) for key in COUNTS if key in summary]
        pairs += [(f"{split} {m}", stat, (metrics.get(split) or {}).get(m))
                  for split in SPLITS for m, stat in summary.get(split, {}).items()]
        for what, stat, value in pairs:
            if stat["values"][k] != value:
                return f"{SUMMARY_FILE} has {what} {stat['values'][k]} for {name}, its " \
                       f"metrics.json {value} (the seed changed since); {rebuild}"
    return None
