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


def hit_ratio_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """1 if any of the top-k is relevant, else 0."""
    return (hits[:, :k].sum(1) > 0).to(hits.dtype)


def mrr_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """1 / rank of the first relevant item within the top-k, 0 when there is none."""
    ranks = torch.arange(1, k + 1, device=hits.device, dtype=hits.dtype)
    return (hits[:, :k] / ranks).max(1).values  # the first hit has the largest 1/rank


def map_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """AP@k = sum_{r <= k} P@r * rel_r / min(|GT_u|, k) (RecBole's MAP@k)."""
    h = hits[:, :k]
    ranks = torch.arange(1, k + 1, device=hits.device, dtype=hits.dtype)
    precision = torch.cumsum(h, 1) / ranks
    return (precision * h).sum(1) / num_relevant.clamp(max=k)


def popularity_at_k(top: Tensor, popularity: Tensor, k: int) -> Tensor:
    """Mean popularity (training positives) of the user's top-k items."""
    return popularity[top[:, :k]].mean(1)


def tail_share_at_k(top: Tensor, is_tail: Tensor, k: int) -> Tensor:
    """Share of the user's top-k items in the tail (the 80 % least popular items)."""
    return is_tail[top[:, :k]].to(torch.float64).mean(1)


def coverage(counts: Tensor) -> float:
    """Share of the catalogue recommended to at least one user. counts: (I,) how many
    users' top-k hold each item."""
    return float((counts > 0).sum()) / counts.numel()


def gini(counts: Tensor) -> float:
    """Gini index of how often each item is recommended (0: all equally, -> 1: a few items
    take every slot): sum_i (2 i - I - 1) c_(i) / (I sum c) over the ascending counts c_(i)."""
    c = counts.to(torch.float64).sort().values
    n, total = c.numel(), float(c.sum())
    if total == 0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64, device=c.device)
    return float(((2 * i - n - 1) * c).sum()) / (n * total)


# ----------------------------------------------------------------------------- table

@dataclass(frozen=True)
class Ranked:
    """One block of users' rankings: ``hits`` (B, K) 0/1 float64, ``num_relevant`` (B,),
    ``top`` (B, K) item indices, and the items' training ``popularity`` (I,) and ``is_tail``
    (I,) when the evaluation was given them (else None)."""

    hits: Tensor
    num_relevant: Tensor
    top: Tensor
    popularity: Tensor | None = None
    is_tail: Tensor | None = None


@dataclass(frozen=True)
class Metric:
    name: str  # the key: "<name>@<k>"
    label: str  # in the log line: "<label>@<k>: <value>"
    short: str  # compare.py's row: "<split> <short>@<k>"
    per_user: Callable[[Ranked, int], Tensor]  # (ranked block, k) -> (B,)
    logged: bool = False  # in the reference-layout log lines (the reference's three only)
    needs_popularity: bool = False  # skipped when the evaluation has no item popularity


def _on_hits(function):
    return lambda r, k: function(r.hits, r.num_relevant, k)


# The reference's three come first, in the reference log's order, and only they are logged:
# the metric lines stay the reference's byte for byte, and they are the columns of the
# positional [[P, R, NDCG], ...] results that runs written before the table saved (see
# as_named). The others are in epochs.jsonl, metrics.json and per_user.npz.
METRICS = (
    Metric("precision", "Precision", "P", _on_hits(precision_at_k), logged=True),
    Metric("recall", "Recall", "R", _on_hits(recall_at_k), logged=True),
    Metric("ndcg", "NDCG", "NDCG", _on_hits(ndcg_at_k), logged=True),
    Metric("hr", "HR", "HR", _on_hits(hit_ratio_at_k)),
    Metric("mrr", "MRR", "MRR", _on_hits(mrr_at_k)),
    Metric("map", "MAP", "MAP", _on_hits(map_at_k)),
    Metric("avg_pop", "AvgPop", "AvgPop", lambda r, k: popularity_at_k(r.top, r.popularity, k),
           needs_popularity=True),
    Metric("tail", "Tail", "Tail", lambda r, k: tail_share_at_k(r.top, r.is_tail, k),
           needs_popularity=True),
)
# catalogue-wide, from how many users' top-k hold each item (not per user)
CATALOGUE = {"coverage": coverage, "gini": gini}
LOGGED = tuple(m for m in METRICS if m.logged)
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

def tail_items(popularity: Tensor) -> Tensor:
    """(I,) bool: the 80 % least popular items (floor(0.8 I) of them; ties by item index)."""
    order = torch.sort(popularity.to(torch.float64), stable=True).indices
    tail = torch.zeros(popularity.numel(), dtype=torch.bool, device=popularity.device)
    tail[order[:int(0.8 * popularity.numel())]] = True
    return tail


def _popularity(popularity: Tensor | None, device) -> tuple[Tensor | None, Tensor | None]:
    if popularity is None:
        return None, None
    popularity = popularity.to(device=device, dtype=torch.float64)
    return popularity, tail_items(popularity)


@torch.no_grad()
def evaluate(user_emb: Tensor, item_emb: Tensor, exclude: RowIndex, truth: RowIndex,
             ks: tuple[int, ...], block_size: int = 8192, metrics=METRICS,
             per_user: dict | None = None, popularity: Tensor | None = None) -> Results:
    """Every metric at each k, averaged over users with >= 1 ground-truth item, then the
    catalogue-wide ones (coverage, Gini) over those users' top-k.

    Scores E_u · E_i for all items, -inf on ``exclude`` (the user's training rows); top-k
    once at max(k) per block of users, so memory stays at block_size x I. ``popularity``:
    each item's training positives (the popularity metrics need it; else left out).
    ``per_user``: a dict that receives, as numpy arrays over the users counted (ascending),
    their index (``users``), ``num_relevant`` and every per-user ``<metric>@<k>``; the means
    are unchanged.
    """
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    max_k, device = max(ks), user_emb.device
    block_size = max(1, min(block_size, (1 << 24) // num_items))
    metrics = [m for m in metrics if popularity is not None or not m.needs_popularity]
    popularity, is_tail = _popularity(popularity, device)
    sums = torch.zeros(len(ks), len(metrics), dtype=torch.float64, device=device)
    counts = torch.zeros(len(ks), num_items, dtype=torch.long, device=device)
    num_relevant_all = truth.degree()
    counted = 0
    for start in range(0, num_users, block_size):
        rows = torch.arange(start, min(start + block_size, num_users), device=device)
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
        ranked = Ranked(relevant.gather(1, top)[has_truth].to(torch.float64),
                        num_relevant[has_truth].to(torch.float64), top[has_truth],
                        popularity, is_tail)
        block = {"users": rows[has_truth], "num_relevant": ranked.num_relevant.long()}
        for j, k in enumerate(ks):
            counts[j] += torch.bincount(ranked.top[:, :k].reshape(-1), minlength=num_items)
            for m, metric in enumerate(metrics):
                values = metric.per_user(ranked, k)
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
    results = {}
    for j, k in enumerate(ks):
        results.update({key(metric.name, k): means[j][m] for m, metric in enumerate(metrics)})
        results.update({key(name, k): function(counts[j])
                        for name, function in CATALOGUE.items()})
    return results
