"""The ranking metrics, one table: each entry's name keys the results everywhere
(``recall@20`` in epochs.jsonl, metrics.json, summary.json and a parsed log), its label is
how the log prints it (``Recall@20: 0.4420``), its short form names compare.py's rows
(``test R@20``), and its function computes it per user; :func:`evaluate` runs them all.

Adding a metric is one ``Metric(...)`` entry in :data:`METRICS` plus a hand-computed test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from dataloader import RowIndex

# Results: {"<metric>@<k>": mean over users}, k-major in --top_k order, then table order.
Results = dict[str, float]

# ----------------------------------------------------------------- per-user functions
# hits: (B, K) 0/1 float, hits[b, r] = 1 if the item ranked r+1 for user b is relevant;
# num_relevant: (B,) number of ground-truth items of each user (> 0); K >= k.


def precision_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """hits@k / k per user."""
    return hits[:, :k].sum(1) / k


def recall_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """hits@k / |GT_u| per user."""
    return hits[:, :k].sum(1) / num_relevant


def ndcg_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """DCG@k / IDCG@k per user, binary gains, discount 1 / log2(rank + 1); the ideal DCG
    places min(|GT_u|, k) hits first."""
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=hits.device, dtype=hits.dtype))
    dcg = (hits[:, :k] * discount).sum(1)
    ideal = torch.cumsum(discount, 0)[(num_relevant.clamp(max=k) - 1).long()]
    return dcg / ideal


# ----------------------------------------------------------------------------- table

@dataclass(frozen=True)
class Metric:
    name: str  # the key: "<name>@<k>"
    label: str  # in the log line: "<label>@<k>: <value>"
    short: str  # compare.py's row: "<split> <short>@<k>"
    per_user: Callable[[Tensor, Tensor, int], Tensor]  # (hits, num_relevant, k) -> (B,)


# The reference's three come first, in the reference log's order: with only them the metric
# lines are the reference's byte for byte, and they are the columns of the positional
# [[P, R, NDCG], ...] results that runs written before the table saved (see as_named).
METRICS = (
    Metric("precision", "Precision", "P", precision_at_k),
    Metric("recall", "Recall", "R", recall_at_k),
    Metric("ndcg", "NDCG", "NDCG", ndcg_at_k),
)
LEGACY_COLUMNS = ("precision", "recall", "ndcg")
BY_NAME = {m.name: m for m in METRICS}
BY_LABEL = {m.label: m for m in METRICS}
EARLY_STOPPING = "recall"  # on validation Recall@20 (the largest k when 20 is not asked)


def key(name: str, k: int) -> str:
    return f"{name}@{k}"


def split_key(name_at_k: str) -> tuple[str, int]:
    """"recall@20" -> ("recall", 20)."""
    name, _, k = name_at_k.rpartition("@")
    return name, int(k)


def short_key(name_at_k: str) -> str:
    """compare.py's name of a result: "recall@20" -> "R@20" (unknown names as they are)."""
    name, k = split_key(name_at_k)
    return f"{BY_NAME[name].short if name in BY_NAME else name}@{k}"


def early_stopping_score(results: Results, ks) -> float:
    ks = list(ks)
    return results[key(EARLY_STOPPING, 20 if 20 in ks else ks[-1])]


def as_named(results, ks) -> Results:
    """Results by name, also from what runs wrote before the table: one positional
    [precision, recall, ndcg] row per k (epochs.jsonl lines, last.pt's early stopping)."""
    if isinstance(results, dict):
        return results
    return {key(name, k): value for k, row in zip(ks, results)
            for name, value in zip(LEGACY_COLUMNS, row)}


# ------------------------------------------------------------------------ evaluation

@torch.no_grad()
def evaluate(user_emb: Tensor, item_emb: Tensor, exclude: RowIndex, truth: RowIndex,
             ks: tuple[int, ...], block_size: int = 8192, metrics=METRICS,
             per_user: dict | None = None) -> Results:
    """Every metric at each k, averaged over users with >= 1 ground-truth item.

    Scores E_u · E_i for all items, -inf on ``exclude`` (the user's training rows); top-k
    once at max(k) per block of users, so memory stays at block_size x I. ``per_user``: a
    dict that receives, as numpy arrays over the users counted (ascending), their index
    (``users``), ``num_relevant`` and every ``<metric>@<k>``; the means are unchanged.
    """
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    max_k = max(ks)
    block_size = max(1, min(block_size, (1 << 24) // num_items))
    sums = torch.zeros(len(ks), len(metrics), dtype=torch.float64, device=user_emb.device)
    num_relevant_all = truth.degree()
    counted = 0
    for start in range(0, num_users, block_size):
        rows = torch.arange(start, min(start + block_size, num_users), device=user_emb.device)
        num_relevant = num_relevant_all[rows]
        has_truth = num_relevant > 0
        if not has_truth.any():
            continue
        scores = user_emb[rows] @ item_emb.t()  # (B, I)
        owner, cols = exclude.gather(rows)
        scores[owner, cols] = float("-inf")
        top = scores.topk(max_k, dim=1).indices  # (B, max_k)
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        owner, cols = truth.gather(rows)
        relevant[owner, cols] = True
        hits = relevant.gather(1, top)[has_truth].to(torch.float64)
        num_relevant = num_relevant[has_truth].to(torch.float64)
        block = {"users": rows[has_truth], "num_relevant": num_relevant.long()}
        for j, k in enumerate(ks):
            for m, metric in enumerate(metrics):
                values = metric.per_user(hits, num_relevant, k)
                sums[j, m] += values.sum()
                block[key(metric.name, k)] = values
        if per_user is not None:
            for name, values in block.items():
                per_user.setdefault(name, []).append(values.cpu())
        counted += int(has_truth.sum())
    if per_user is not None:
        for name, parts in per_user.items():
            per_user[name] = torch.cat(parts).numpy() if parts else np.zeros(0)
    means = (sums / max(counted, 1)).tolist()
    return {key(metric.name, k): means[j][m] for j, k in enumerate(ks)
            for m, metric in enumerate(metrics)}
