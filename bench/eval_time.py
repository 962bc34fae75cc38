"""What the metric table costs at evaluation: one validation pass on a dataset's real
masks and truths with fixed random embeddings, timed three ways in one process —

- ``reference three``: the evaluation as it was before the table grew (precision, recall,
  NDCG; one blocked top-k; written out below as the baseline and oracle),
- ``logged``: runs.metrics.evaluate with the reference's three only (plus the catalogue
  counts it always keeps),
- ``all``: every metric of the table, popularity ones included, and coverage / Gini —

and prints the median of ``--repeats`` passes of each and the ratios to the baseline; it
also checks that the three shared metrics are equal to the last bit.

    python bench/eval_time.py [--dataset ML-1M] [--dataset_augment original] [--data_dir DIR]
                              [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloader  # noqa: E402
from recommenders import base  # noqa: E402
from runs.metrics import (LOGGED, METRICS, evaluate, ndcg_at_k, precision_at_k,  # noqa: E402
                          recall_at_k)


@torch.no_grad()
def reference_three(user_emb, item_emb, exclude, truth, ks, block_size=8192) -> dict:
    """Precision, recall and NDCG only: the blocked loop without the table's extras."""
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    block_size = max(1, min(block_size, (1 << 24) // num_items))
    sums = torch.zeros(len(ks), 3, dtype=torch.float64)
    degree, counted = truth.degree(), 0
    for start in range(0, num_users, block_size):
        rows = torch.arange(start, min(start + block_size, num_users))
        num_relevant = degree[rows]
        has_truth = num_relevant > 0
        if not has_truth.any():
            continue
        scores = user_emb[rows] @ item_emb.t()
        owner, cols = exclude.gather(rows)
        scores[owner, cols] = float("-inf")
        top = scores.topk(max(ks), dim=1).indices
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        owner, cols = truth.gather(rows)
        relevant[owner, cols] = True
        hits = relevant.gather(1, top)[has_truth].to(torch.float64)
        n = num_relevant[has_truth].to(torch.float64)
        for j, k in enumerate(ks):
            for m, f in enumerate((precision_at_k, recall_at_k, ndcg_at_k)):
                sums[j, m] += f(hits, n, k).sum()
        counted += int(has_truth.sum())
    means = (sums / counted).tolist()
    return {f"{name}@{k}": means[j][m] for j, k in enumerate(ks)
            for m, name in enumerate(("precision", "recall", "ndcg"))}


def median_seconds(run, repeats: int) -> tuple[float, dict]:
    times, out = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - tic)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ML-1M")
    p.add_argument("--data_dir")
    p.add_argument("--dataset_augment", default="augment", choices=("augment", "original"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = dataloader.load_dataset(dataloader.resolve_data_dir(args.data_dir), args.dataset,
                                   args.dataset_augment, warn=lambda line: None)
    index = base.build_eval_index(data, "cpu")
    torch.manual_seed(0)
    users = torch.randn(data.num_users, 64)
    items = torch.randn(data.num_items, 64)
    ks = (5, 10, 15, 20)
    exclude, truth = index.seen_by_user, index.valid_by_user
    t_ref, ref = median_seconds(lambda: reference_three(users, items, exclude, truth, ks),
                                args.repeats)
    t_logged, logged = median_seconds(
        lambda: evaluate(users, items, exclude, truth, ks, metrics=LOGGED), args.repeats)
    t_all, full = median_seconds(
        lambda: evaluate(users, items, exclude, truth, ks, metrics=METRICS,
                         popularity=index.popularity), args.repeats)
    same = all(ref[key] == logged[key] == full[key] for key in ref)
    print(f"{args.dataset}: {data.num_users} users x {data.num_items} items, validation "
          f"truth of {int((truth.degree() > 0).sum())} users, threads {args.threads}, "
          f"median of {args.repeats}")
    print(f"reference three   {t_ref:.3f} s  1.00")
    print(f"logged (+counts)  {t_logged:.3f} s  {t_logged / t_ref:.2f}")
    print(f"all {len(METRICS)} + coverage, gini  {t_all:.3f} s  {t_all / t_ref:.2f}")
    print(f"precision/recall/NDCG equal to the last bit in all three: {same}")


if __name__ == "__main__":
    main()
