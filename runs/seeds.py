"""One configuration over several seeds (``main.py --seeds 2024 2025 ...`` / ``--num_seeds N``).

The seeds run one after the other, each a normal run folder ``<run>/seed<S>/``; then
``<run>/summary.json`` holds mean ± std of every number of their metrics.json and
``<run>/summary.txt`` the same as a table (runs/summary.py). ``--resume <run>`` continues a
multi-seed run: finished seeds are kept, an interrupted one resumes from its last.pt, missing
ones start. ``--resume <run>/seed<S>`` continues one seed on its own: the summary is removed
before the seed's folder changes, then rebuilt from the seeds — or left out, with a note, when
they can no longer be averaged (e.g. now of different lengths).
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from itertools import takewhile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from data.errors import UserError
from runs import run_folder
from runs.files import atomic_write_text, dump_json
from runs.summary import (SEEDS_FILE, SUMMARY_FILE, SUMMARY_TEXT, mean_std,  # noqa: F401
                          summarize, summary_lines)

if TYPE_CHECKING:
    from runs.config import Config

class SeedsError(UserError, ValueError):
    """A multi-seed run folder that cannot be created or continued."""


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


def result_dir_of(parent: Path, dataset: str, name: str) -> str:
    """The <result_dir> of <result_dir>/<dataset>/<name>, spelled as the user spelled the
    run folder (a relative --resume keeps the run's records free of absolute paths); only
    a folder like "." needs resolving, and is then made relative to the working folder
    where it lies inside it."""
    for root in (Path(os.path.normpath(parent)), parent.resolve()):
        for _ in Path(name).parts:
            root = root.parent
        if root.name == dataset:
            break
    else:
        raise SeedsError(f"--resume {parent}: a multi-seed run folder lies in "
                         f"<result_dir>/{dataset}/{name}")
    if root.is_absolute() and not parent.is_absolute():
        try:
            return str(root.parent.relative_to(Path.cwd().resolve()))
        except ValueError:
            pass
    return str(root.parent)


def run_seeds(config: Config, run_one: Callable[[Config], dict]) -> dict:
    """Run ``config`` once per seed (sequentially) and write the summary; returns it."""
    if config.resume:  # <result_dir>/<dataset>/<path_name>, as a fresh multi-seed run made it
        parent, name = Path(config.resume), config.path_name
        result_dir = result_dir_of(parent, config.dataset, name)
        folder = run_folder.open_existing(parent)
    else:
        name = config.path_name or run_folder.default_name()
        result_dir = config.result_dir
        run_folder.check_result_dir(result_dir)
        parent = Path(result_dir) / config.dataset / name
        made = new_folders(parent)
        folder = run_folder.claim_new(parent, finished=(SEEDS_FILE,), known=())
    try:
        per_seed = {}
        for seed in config.seeds:  # check every finished seed before anything trains
            metrics = finished_seed(parent / f"seed{seed}", seed, config)
            if metrics is not None:
                per_seed[seed] = metrics
        remove_summary(parent)  # rewritten when every seed is done
        dump_json({**config.to_dict(), "resume": None, "path_name": name}, parent / SEEDS_FILE)
        return _run_seeds(config, run_one, parent, name, result_dir, per_seed)
    except UserError:
        if not config.resume and not any(p.is_dir() for p in parent.iterdir()):
            remove_unstarted(parent, made)  # the first seed was refused: as a plain run is
        raise
    finally:
        folder.release()


def new_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    return list(takewhile(lambda p: not p.exists(), [path, *path.parents]))


def remove_unstarted(parent: Path, made: list[Path]) -> None:
    """A fresh multi-seed folder whose first seed was refused before its folder existed
    (a flag, the data, infeasible sampling): removed with the folders made for it, so that
    the same command can run again once the cause is fixed."""
    for name in (SEEDS_FILE, run_folder.LOCK_FILE):
        (parent / name).unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty: another run's
            break


def finished_seed(seed_dir: Path, seed: int, config: Config) -> dict | None:
    """The metrics.json of a seed that can stand in the summary as it is; None when the
    seed is to (continue to) run; SeedsError when it finished on other data, or ran more
    epochs than --epochs now allows; ConfigError when it was trained with other settings."""
    from runs.resume import check_same_settings, trained_config  # the training side's
    check_same_settings(seed_dir, {**config.to_dict(), "random_seed": seed, "seeds": None},
                        {"config": trained_config(seed_dir)})  # an edited seeds.json
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
    return write_summary(parent, per_seed, config.compare_to, config.quiet)


def write_summary(parent: Path, per_seed: dict, compare_to, quiet: bool) -> dict:
    """summary.json and summary.txt of the seeds' metrics.json (printed unless ``quiet``)."""
    check_same_inputs(per_seed)
    summary = summarize(per_seed)
    summary["runs"] = [f"seed{s}" for s in summary["seeds"]]
    dump_json(summary, parent / SUMMARY_FILE)
    lines = summary_lines(summary)
    if compare_to:
        import compare  # here: compare.py imports nothing of the training side
        lines += ["", *compare.lines_after_run([*compare_to, str(parent)])]
    atomic_write_text(parent / SUMMARY_TEXT, "\n".join(lines) + "\n")
    if not quiet:
        print("\n".join(lines))
    return summary


def remove_summary(parent: Path) -> None:
    for name in (SUMMARY_FILE, SUMMARY_TEXT):
        (parent / name).unlink(missing_ok=True)


def multi_seed_parent(config: Config) -> Path | None:
    """The multi-seed run whose seed folder ``--resume`` names, or None."""
    if config.resume is None:
        return None
    seed_dir = Path(config.resume)
    try:
        saved = json.loads((seed_dir.parent / SEEDS_FILE).read_text())
        member = config.random_seed in saved["seeds"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seed_dir.parent if member and seed_dir.name == f"seed{config.random_seed}" else None


def resume_one_seed(config: Config, run_one: Callable[..., dict]) -> dict:
    """``--resume <run>/seed<S>``: the seed continues on its own while this process holds the
    multi-seed run (a ``--resume <run>`` at the same time is refused); the summary, which
    counted the seed as it was, goes before the seed's folder changes and comes back from
    the seeds' metrics.json when they can still be averaged."""
    parent = multi_seed_parent(config)
    if parent is None:
        return run_one(config)
    folder = run_folder.open_existing(parent)
    try:
        metrics = run_one(config, on_change=lambda: remove_summary(parent))
        rebuild_summary(parent, config)
        return metrics
    finally:
        folder.release()


def rebuild_summary(parent: Path, config: Config) -> None:
    """The summary of every seed of ``parent`` at --epochs ``config.epochs`` (seeds.json
    then says that many); left out, with a note saying how to rebuild it, when a seed is
    unfinished, shorter, longer or on other data."""
    saved = json.loads((parent / SEEDS_FILE).read_text())
    per_seed, problem = {}, None
    for seed in saved["seeds"]:
        try:
            metrics = finished_seed(parent / f"seed{seed}", seed, config)
        except UserError as err:  # other data or settings: the seed ran fine, say why here
            metrics, problem = None, str(err)
        if metrics is None:
            problem = problem or f"seed{seed} has not finished {config.epochs} epochs"
            break
        per_seed[seed] = metrics
    if problem is None:
        try:
            write_summary(parent, per_seed, saved.get("compare_to"), config.quiet)
        except UserError as err:  # seeds on different data, or a --compare_to run gone
            problem = str(err)
    if problem is not None:
        remove_summary(parent)
        if not config.quiet:
            print(f"note: {parent} has no summary now ({problem}); python main.py --resume "
                  f"{parent} --epochs {config.epochs} continues every seed and writes it")
        return
    dump_json({**saved, "epochs": config.epochs}, parent / SEEDS_FILE)
