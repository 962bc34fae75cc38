"""The runs ``python compare.py --test`` pairs: each run folder's ``per_user.npz`` read into
per-user test values (seeds stacked, users in one order), and the checks that two runs may be
paired at all: the same train / validation / test files (git blob SHA-1s from config.json's
inputs) and the same test users (by the dataset's original user id). The statistics are in
runs/significance.py.

``per_user.npz`` (one per run folder, so one per seed of a multi-seed run): ``user_ids`` (the
original id of each user index), ``meta`` (JSON: model, best_epoch, ks, splits) and, per
split S, ``S.users`` (the user indices with a ground-truth item), ``S.num_relevant`` and
``S.<metric>@<k>`` (one value per user of ``S.users``). Runs made before it have none.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from data.errors import UserError
from data.provenance import CHECK_ONLY_ROLES

PER_USER_FILE = "per_user.npz"
SPLITS = ("test", "test_dislikes")  # test_dislikes: a dislikes variant's held-out dislikes
DATA_ROLES = ("train", "validation", "test", "test_dislikes")


class PairingError(UserError, ValueError):
    """A run that cannot be read for the tests, or two runs that cannot be paired (one line)."""


@dataclass
class RunScores:
    """One run (its seeds together): per-user test values by ``<metric>@<k>``, shaped
    (seeds, users), the users in the order of ``user_ids``."""

    path: Path
    model: str | None
    multi_seed: bool
    seeds: list[int]
    data: dict[str, tuple[str, str] | None]  # role -> (file name, git blob) or None
    user_ids: np.ndarray
    values: dict[str, np.ndarray]
    label: str = ""
    split: str = "test"

    def per_user(self, metric: str) -> np.ndarray:
        """Each user's value, averaged over the seeds."""
        return self.values[metric].mean(axis=0)

    def per_seed(self, metric: str) -> np.ndarray:
        """Each seed's test mean over users (what its metrics.json says)."""
        return self.values[metric].mean(axis=1)

    def reordered(self, order: np.ndarray) -> RunScores:
        """The same run with user ``order[j]`` as its j-th user."""
        return replace(self, user_ids=self.user_ids[order],
                       values={m: v[:, order] for m, v in self.values.items()})


def permutation(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray | None:
    """``order`` with ``ids[order] == wanted``; None when the two are not the same set."""
    have, want = np.argsort(ids, kind="stable"), np.argsort(wanted, kind="stable")
    if len(ids) != len(wanted) or not np.array_equal(ids[have], wanted[want]):
        return None
    order = np.empty(len(ids), dtype=np.int64)
    order[want] = have
    return order


# --------------------------------------------------------------------------- reading

def load_run(path, split: str = "test") -> RunScores:
    """A run folder (its per_user.npz) or a finished multi-seed run folder (every seed's),
    the per-user values of ``split``."""
    folder = Path(path)
    if folder.is_file():
        raise PairingError(f"{path}: --test needs run folders (with {PER_USER_FILE}), not a "
                           f"log file")
    if not folder.is_dir():
        raise PairingError(f"{path}: no such folder")
    if (folder / "seeds.json").is_file():
        if not (folder / "summary.json").is_file():
            raise PairingError(f"{path}: the multi-seed run has not finished (no "
                               f"summary.json); finish it with python main.py --resume")
        seeds = sorted(read_json(folder / "summary.json")["seeds"])
        model = read_json(folder / "seeds.json").get("model")
        dirs = [folder / f"seed{s}" for s in seeds]
    elif (folder / "config.json").is_file():
        config = read_json(folder / "config.json")
        seeds, model, dirs = [config.get("random_seed")], config.get("model"), [folder]
    else:
        raise PairingError(f"{path}: neither a run folder (config.json) nor a multi-seed "
                           f"run folder (seeds.json)")
    scores = combine_seeds(folder, model, seeds, [read_seed(d, split) for d in dirs],
                           multi_seed=folder.joinpath("seeds.json").is_file())
    return replace(scores, split=split)


def combine_seeds(folder: Path, model, seeds, parts, multi_seed: bool) -> RunScores:
    """One RunScores from each seed's (data, user ids, values); the seeds must agree on the
    data and the test users."""
    data, ids, _ = parts[0]
    values = {m: [v] for m, v in parts[0][2].items()}
    for seed, (seed_data, seed_ids, seed_values) in zip(seeds[1:], parts[1:]):
        order = permutation(seed_ids, ids)
        if seed_data != data or order is None:
            raise PairingError(f"{folder}: seed{seed} has other data or test users than "
                               f"seed{seeds[0]}")
        for metric in values:
            if metric not in seed_values:
                raise PairingError(f"{folder}: seed{seed} has no per-user {metric}")
            values[metric].append(seed_values[metric][order])
    return RunScores(folder, model, multi_seed, list(seeds), data, ids,
                     {m: np.stack(v) for m, v in values.items()})


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PairingError(f"{path}: cannot be read ({type(err).__name__})") from None


def read_seed(run_dir: Path, split: str = "test"
              ) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """(data files, ``split``'s user ids, {metric@k: per-user values}) of one run folder."""
    if not run_dir.is_dir():
        raise PairingError(f"{run_dir}: the seed's run folder is missing")
    data = data_files(run_dir)
    path = run_dir / PER_USER_FILE
    if not path.is_file():
        raise PairingError(f"{run_dir}: no {PER_USER_FILE}; runs made before per-user "
                           f"metrics were saved have none: train the run again to test it")
    try:
        with np.load(path, allow_pickle=False) as npz:
            splits = json.loads(str(npz["meta"][()]))["splits"]
            if split not in splits:
                hint = ("; only a run on a dislikes variant (python dataloader.py dislikes) "
                        "has one") if split == "test_dislikes" else ""
                raise PairingError(f"{path}: no {split} split (it has {', '.join(splits)})"
                                   + hint)
            users = npz[f"{split}.users"]
            ids = npz["user_ids"][users].astype(str)
            prefix = f"{split}."
            values = {name[len(prefix):]: np.asarray(npz[name], dtype=np.float64)
                      for name in npz.files if name.startswith(prefix)
                      and name[len(prefix):] not in ("users", "num_relevant")}
    except (OSError, ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile) as err:
        if isinstance(err, PairingError):
            raise
        raise PairingError(f"{path}: cannot be read ({type(err).__name__}: "
                           f"{str(err)[:80]})") from None
    if any(v.shape != ids.shape for v in values.values()):
        raise PairingError(f"{path}: per-user arrays not aligned with {split}.users")
    check_means(run_dir, values)
    return data, ids, values


def check_means(run_dir: Path, values: dict[str, np.ndarray]) -> None:
    """The per-user values must average to metrics.json's test values (disliked@k is there
    too; a per_user.npz of another epoch or run would not): PairingError naming the first
    that does not."""
    if not (run_dir / "metrics.json").is_file():
        raise PairingError(f"{run_dir}: the run has not finished (no metrics.json)")
    saved = read_json(run_dir / "metrics.json").get("test") or {}
    for metric, per_user in values.items():
        if metric in saved and not np.isclose(per_user.mean(), saved[metric], rtol=0, atol=1e-6):
            raise PairingError(f"{run_dir}: {PER_USER_FILE} does not match metrics.json "
                               f"(test {metric}: mean {per_user.mean():.6f} vs "
                               f"{saved[metric]:.6f}); it is not this run's")


def data_files(run_dir: Path) -> dict[str, tuple[str, str] | None]:
    """role -> (file name, git blob) of the train file trained on, validation, test and held-out
    dislikes, from config.json's inputs (train_original read only to check an augmented file
    is left out)."""
    inputs = read_json(run_dir / "config.json").get("inputs")
    if not inputs:
        raise PairingError(f"{run_dir}: config.json records no input files (an older "
                           f"run): cannot check that the runs read the same data")
    train = [r for r in inputs if r["role"].startswith("train_")]
    train = [r for r in train if r["role"] not in CHECK_ONLY_ROLES] or train
    found = {"train": train[0] if train else None,
             **{role: next((r for r in inputs if r["role"] == role), None)
                for role in DATA_ROLES[1:]}}
    return {role: (Path(r["path"]).name, r["git_blob"]) if r else None
            for role, r in found.items()}


# ------------------------------------------------------------------------- pairing

def paired(base: RunScores, other: RunScores, other_train: bool = False) -> RunScores:
    """``other`` with its users in ``base``'s order; PairingError (naming what differs) when
    the two read other train / validation / test files (``other_train``: the training files
    may differ) or have other test users."""
    differ = [role for role in DATA_ROLES
              if blob(base.data.get(role)) != blob(other.data.get(role))
              and not (other_train and role == "train")]
    if differ:
        hint = " (--other_train allows other training files)" if differ == ["train"] else ""
        raise PairingError(
            f"{other.label} and {base.label} did not read the same data: "
            + "; ".join(f"{role} {file_text(other.data.get(role))} vs "
                        f"{file_text(base.data.get(role))}" for role in differ)
            + f"; --test pairs runs on one dataset{hint}")
    order = permutation(other.user_ids, base.user_ids)
    if order is None:
        only_base = len(set(base.user_ids) - set(other.user_ids))
        only_other = len(set(other.user_ids) - set(base.user_ids))
        raise PairingError(f"{other.label} and {base.label} have different test users "
                           f"({only_other} only in {other.label}, {only_base} only in "
                           f"{base.label}); --test pairs the same users")
    return other.reordered(order)


def blob(file: tuple[str, str] | None) -> str | None:
    return file[1] if file else None


def file_text(file: tuple[str, str] | None) -> str:
    return f"{file[0]} ({file[1][:7]})" if file else "none"
