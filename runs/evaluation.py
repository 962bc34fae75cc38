"""Evaluating a run's model: the means of every metric on a split (each epoch's log block,
the final test), and each user's results of the selected model in ``<run>/per_user.npz`` —
what a paired test over users (``compare.py --test``) needs, and no mean can give back.

per_user.npz holds (numpy ``.npz``, no pickles):

- ``user_ids``: the dataset's id of every user index (str);
- ``meta``: JSON — model, best_epoch, ks, splits, what the rows are;
- per split S (``validation`` for the best-validation model, then ``test``; a fixed-epoch
  run without validation: ``test`` only): ``S.users`` (the user indices with >= 1
  ground-truth item, ascending), ``S.num_relevant`` (|GT_u|) and ``S.<metric>@<k>``, every
  metric of runs.metrics.METRICS at every k, aligned with ``S.users``.

The mean of ``S.<metric>@<k>`` is the run's reported number. The file is written
atomically, and its bytes depend only on the values (fixed zip timestamps), so a resumed, a
multi-seed or a distributed run writes the same file as an uninterrupted single run.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from runs.files import atomic_write
from runs.log_format import format_metrics
from dataloader import RowIndex
from runs.metrics import METRICS, Metric, Results, evaluate, recall_at_k, tail_items

if TYPE_CHECKING:
    from recommenders.base import EvalIndex, Graphs
    from runs.config import Config

FILE = "per_user.npz"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the zip format's first date: no clock in the bytes


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as an ``.npz`` that ``np.load`` reads, deterministic byte for byte."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            entry.compress_type, entry.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            data = io.BytesIO()
            np.lib.format.write_array(data, np.asanyarray(array), allow_pickle=False)
            archive.writestr(entry, data.getvalue())
    return buffer.getvalue()


def evaluate_model(model: torch.nn.Module, graphs: Graphs, exclude, truth, config: Config,
                   popularity=None, per_user: dict | None = None, metrics=METRICS) -> Results:
    """Every metric at every k of the current model on one split (docs/method.md);
    ``popularity``: the items' training positives (EvalIndex.popularity) for the popularity
    metrics; ``per_user``: receives each user's values (runs.metrics.evaluate)."""
    model.eval()
    with torch.no_grad():
        e_users, e_items = model(graphs.norm_adj)
    return evaluate(e_users, e_items, exclude, truth, config.top_k, config.test_batch_size,
                    metrics, per_user=per_user, popularity=popularity)


# hits among the user's held-out dislikes / their number: a recall whose truth is the
# dislikes, so lower is better; averaged over the users with >= 1 held-out dislike
DISLIKED = Metric("disliked", "Disliked", "Disliked",
                  lambda r, k: recall_at_k(r.hits, r.num_relevant, k))


def disliked_at_k(model: torch.nn.Module, graphs: Graphs, index: EvalIndex, config: Config,
                  per_user: dict | None = None) -> Results:
    """``disliked@k`` of the test ranking (the same masked items) on a dislikes variant's
    held-out low ratings; {} on data without them."""
    if index.dislikes_by_user is None:
        return {}
    results = evaluate_model(model, graphs, index.test_mask(config.mask_valid_in_test),
                             index.dislikes_by_user, config, per_user=per_user,
                             metrics=(DISLIKED,))
    return {name: value for name, value in results.items() if name.startswith("disliked@")}


def final_lines(ks, test: Results) -> list[str]:
    """The final test block's metric lines, then (a dislikes variant) one disliked@k line."""
    lines = format_metrics(ks, test)
    if any(name.startswith("disliked@") for name in test):
        lines.append("Held-out dislikes inside the top-k (lower is better): " + ", ".join(
            f"Disliked@{k}: {test[f'disliked@{k}']:.4f}" for k in ks))
    return lines


def split_values(model: torch.nn.Module, graphs: Graphs, exclude, truth, config: Config,
                 popularity) -> dict[str, np.ndarray]:
    """users, num_relevant and every ``<metric>@<k>`` of each user of one split."""
    values: dict = {}
    evaluate_model(model, graphs, exclude, truth, config, popularity, per_user=values)
    if not values:  # no user has a ground-truth item
        return {"users": np.zeros(0, dtype=np.int64), "num_relevant": np.zeros(0, np.int64)}
    return values


def write_per_user(run_dir: Path, model: torch.nn.Module, graphs: Graphs, index: EvalIndex,
          config: Config, best_epoch: int, with_validation: bool) -> None:
    """per_user.npz of ``model`` (the run's selected one) on validation and test."""
    splits = {"test": (index.test_mask(config.mask_valid_in_test), index.test_by_user)}
    if with_validation:
        splits = {"validation": (index.seen_by_user, index.valid_by_user), **splits}
    meta = {"model": config.model, "dataset": config.dataset, "best_epoch": best_epoch,
            "ks": list(config.top_k), "splits": list(splits),
            "rows": "users with >= 1 ground-truth item of the split, ascending index"}
    ids = graphs.user_ids if graphs.user_ids is not None else range(graphs.num_users)
    arrays = {"user_ids": np.asarray([str(u) for u in ids]),
              "meta": np.asarray(json.dumps(meta, sort_keys=True))}
    for split, (exclude, truth) in splits.items():
        for name, values in split_values(model, graphs, exclude, truth, config,
                                          index.popularity).items():
            arrays[f"{split}.{name}"] = values
    if index.dislikes_by_user is not None:
        values: dict = {}
        disliked_at_k(model, graphs, index, config, per_user=values)
        arrays.update({f"test_dislikes.{name}": v for name, v in values.items()})
        meta["splits"].append("test_dislikes")
        arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))
    payload = npz_bytes(arrays)
    atomic_write(Path(run_dir) / FILE, lambda f: f.write(payload))


def read_per_user(path: Path) -> tuple[np.ndarray, dict, dict[str, dict[str, np.ndarray]]]:
    """(user_ids, meta, {split: {"users", "num_relevant", "<metric>@<k>": array}})."""
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        splits = {s: {} for s in meta["splits"]}
        for name in npz.files:
            split, _, key = name.partition(".")
            if split in splits:
                splits[split][key] = npz[name]
        return npz["user_ids"], meta, splits


# ------------------------------------------------------------------------ breakdowns
# Recall and NDCG of a run's selected model on test, broken down two ways (metrics.json's
# ``breakdowns``, ``compare.py --by``):
#
# - ``item_popularity``: the ground truth restricted to one group of items by their positive
#   training rows — ``unpopular`` the 80 % least interacted (floor(0.8 I), ties by item
#   index, runs.metrics.tail_items), ``popular`` the top 5 % (floor(0.05 I), at least one),
#   ``normal`` the rest (HNLMRec's groups); the ranking is unchanged, each user counts in a
#   group where it has a ground-truth item of it;
# - ``user_activity``: the test users split into quartiles by their positive training rows
#   (``q1`` the least active; equal counts by rank, ties by user index), each quartile's mean
#   of the users' values.
#
# Each group also records how many users it averages over.

GROUPS = ("unpopular", "normal", "popular")
QUARTILES = ("q1", "q2", "q3", "q4")
BROKEN_DOWN = tuple(m for m in METRICS if m.name in ("recall", "ndcg"))


def item_groups(popularity: torch.Tensor) -> torch.Tensor:
    """(I,) 0 unpopular, 1 normal, 2 popular."""
    n = popularity.numel()
    groups = torch.ones(n, dtype=torch.long, device=popularity.device)
    groups[tail_items(popularity)] = 0
    order = torch.sort(popularity.to(torch.float64), stable=True).indices
    groups[order[n - max(1, int(0.05 * n)):]] = 2
    return groups


def user_quartiles(activity: torch.Tensor) -> torch.Tensor:
    """(U,) 0..3: the quartile of each user by rank of activity (ties by user index)."""
    order = torch.sort(activity.to(torch.float64), stable=True).indices
    quartile = torch.empty_like(order)
    quartile[order] = torch.arange(order.numel(), device=order.device) * 4 // order.numel()
    return quartile


def breakdowns(model: torch.nn.Module, graphs: Graphs, index: EvalIndex,
               config: Config) -> dict:
    exclude, truth = index.test_mask(config.mask_valid_in_test), index.test_by_user
    num_users = truth.degree().numel()
    owner, cols = truth.gather(torch.arange(num_users, device=index.popularity.device))
    groups = item_groups(index.popularity)[cols]
    by_items = {}
    for g, name in enumerate(GROUPS):
        keep = groups == g
        part = RowIndex.build(owner[keep], cols[keep], num_users)
        results = evaluate_model(model, graphs, exclude, part, config, metrics=BROKEN_DOWN)
        users = int((part.degree() > 0).sum())  # none: no number (not a 0)
        by_items[name] = {**{key: value if users else None for key, value in results.items()
                             if key.partition("@")[0] in ("recall", "ndcg")}, "users": users}
    values: dict = {}
    evaluate_model(model, graphs, exclude, truth, config, per_user=values, metrics=BROKEN_DOWN)
    quartile = user_quartiles(index.activity).cpu().numpy()[values["users"]]
    names = [name for name in values if "@" in name]
    by_users = {}
    for i, q in enumerate(QUARTILES):
        mine = quartile == i
        by_users[q] = {**{name: float(values[name][mine].mean()) if mine.any() else None
                          for name in names}, "users": int(mine.sum())}
    return {"item_popularity": by_items, "user_activity": by_users}
