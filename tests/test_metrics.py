"""Metrics on a tiny hit matrix whose values were computed by hand, the block evaluation,
and the metric table's names (runs/metrics.py)."""
from __future__ import annotations

import math

import pytest
import torch

from dataloader import RowIndex
from runs.metrics import (METRICS, as_named, coverage, early_stopping_score, evaluate, gini,
                          hit_ratio_at_k, map_at_k, mrr_at_k, ndcg_at_k, popularity_at_k,
                          precision_at_k, recall_at_k, short_key, tail_items,
                          tail_share_at_k)

# user 0: ranks 1 and 3 relevant, 2 ground-truth items in all
# user 1: rank 2 relevant, 4 ground-truth items in all
HITS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
NUM_RELEVANT = torch.tensor([2.0, 4.0], dtype=torch.float64)
LOG2 = math.log2


def test_precision_by_hand():
    assert precision_at_k(HITS, NUM_RELEVANT, 1).tolist() == [1.0, 0.0]
    assert precision_at_k(HITS, NUM_RELEVANT, 3).tolist() == pytest.approx([2 / 3, 1 / 3])


def test_recall_by_hand():
    assert recall_at_k(HITS, NUM_RELEVANT, 2).tolist() == pytest.approx([1 / 2, 1 / 4])
    assert recall_at_k(HITS, NUM_RELEVANT, 3).tolist() == pytest.approx([1.0, 1 / 4])


def test_ndcg_by_hand():
    # user 0 at k=3: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG (2 hits) = 1 + 1/log2(3)
    # user 1 at k=3: DCG = 1/log2(3); IDCG (min(4, 3) = 3 hits) = 1 + 1/log2(3) + 1/log2(4)
    expected = [1.5 / (1 + 1 / LOG2(3)), (1 / LOG2(3)) / (1 + 1 / LOG2(3) + 0.5)]
    assert ndcg_at_k(HITS, NUM_RELEVANT, 3).tolist() == pytest.approx(expected)
    # k=1: user 0 hit at rank 1 -> 1; user 1 miss -> 0
    assert ndcg_at_k(HITS, NUM_RELEVANT, 1).tolist() == pytest.approx([1.0, 0.0])


def test_hit_ratio_mrr_map_by_hand():
    # user 0: hits at ranks 1 and 3, |GT| 2; user 1: hit at rank 2, |GT| 4
    assert hit_ratio_at_k(HITS, NUM_RELEVANT, 1).tolist() == [1.0, 0.0]
    assert hit_ratio_at_k(HITS, NUM_RELEVANT, 2).tolist() == [1.0, 1.0]
    assert mrr_at_k(HITS, NUM_RELEVANT, 1).tolist() == [1.0, 0.0]
    assert mrr_at_k(HITS, NUM_RELEVANT, 3).tolist() == [1.0, 0.5]
    # AP@3: user 0 (P@1 + P@3) / min(2, 3) = (1 + 2/3) / 2; user 1 P@2 / min(4, 3) = 0.5 / 3
    assert map_at_k(HITS, NUM_RELEVANT, 3).tolist() == pytest.approx([(1 + 2 / 3) / 2, 0.5 / 3])
    # AP@1: user 0 P@1 / min(2, 1) = 1; user 1 0
    assert map_at_k(HITS, NUM_RELEVANT, 1).tolist() == [1.0, 0.0]


def test_popularity_tail_coverage_gini_by_hand():
    popularity = torch.tensor([5.0, 0.0, 2.0, 9.0, 1.0])  # 5 items; tail = 4 least popular
    assert tail_items(popularity).tolist() == [True, True, True, False, True]
    tied = tail_items(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]))  # ties: by item index
    assert tied.tolist() == [True, True, True, True, False]
    top = torch.tensor([[3, 0], [1, 2]])
    assert popularity_at_k(top, popularity, 2).tolist() == [7.0, 1.0]
    assert popularity_at_k(top, popularity, 1).tolist() == [9.0, 0.0]
    assert tail_share_at_k(top, tail_items(popularity), 2).tolist() == [0.5, 1.0]
    counts = torch.tensor([2, 0, 0, 1, 1])  # how many top-k lists hold each item
    assert coverage(counts) == 3 / 5
    # ascending 0, 0, 1, 1, 2; sum (2i - 6) c_(i) = (-4)(0) + (-2)(0) + 0(1) + 2(1) + 4(2) = 10
    assert gini(counts) == pytest.approx(10 / (5 * 4))
    assert gini(torch.tensor([3, 3, 3])) == 0.0 and gini(torch.zeros(3)) == 0.0


def test_evaluate_masks_training_items_and_averages_over_users_with_truth():
    # 3 users, 4 items; scores make the order of items 3 > 2 > 1 > 0 for every user
    user_emb = torch.ones(3, 1)
    item_emb = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    # user 0 trained on item 3 (masked); truth {2, 0}. user 1: truth {3}. user 2: no truth.
    exclude = RowIndex.build(torch.tensor([0]), torch.tensor([3]), 3)
    truth = RowIndex.build(torch.tensor([0, 0, 1]), torch.tensor([2, 0, 3]), 3)
    got = evaluate(user_emb, item_emb, exclude, truth, (1, 2), block_size=2)
    # every metric at k = 1, then at k = 2, in table order (the popularity ones need the
    # items' popularity), then the catalogue-wide ones
    assert list(got) == [name for k in (1, 2) for name in
                         [f"{m.name}@{k}" for m in METRICS if not m.needs_popularity]
                         + [f"coverage@{k}", f"gini@{k}"]]
    # user 0 ranking: 2, 1, 0 -> hits [1, 0]; user 1 ranking: 3, 2 -> hits [1, 0]
    assert (got["precision@1"], got["recall@1"], got["ndcg@1"]) == \
        pytest.approx((1.0, (1 / 2 + 1) / 2, 1.0))
    idcg_user0 = 1 + 1 / LOG2(3)
    assert (got["precision@2"], got["recall@2"]) == pytest.approx((0.5, (1 / 2 + 1) / 2))
    assert got["ndcg@2"] == pytest.approx((1 / idcg_user0 + 1.0) / 2)
    # top-2 lists: user 0 [2, 1], user 1 [3, 2] -> items 1, 2, 3 of 4; counts 0, 1, 2, 1
    assert got["coverage@2"] == 3 / 4 and got["coverage@1"] == 2 / 4
    assert got["gini@2"] == pytest.approx(((-3) * 0 + (-1) * 1 + 1 * 1 + 3 * 2) / (4 * 4))
    with_pop = evaluate(user_emb, item_emb, exclude, truth, (2,), block_size=2,
                        popularity=torch.tensor([4.0, 1.0, 2.0, 3.0]))
    # popularity 4, 1, 2, 3: tail = items 1, 2, 3 (the 3 least popular of 4)
    assert with_pop["avg_pop@2"] == pytest.approx(((1 + 2) / 2 + (3 + 2) / 2) / 2)
    assert with_pop["tail@2"] == 1.0


def reference_evaluate(user_emb, item_emb, exclude_pairs, truth_pairs, ks):
    """The obvious version: one dense score matrix, a separate top-k per k (as the reference)."""
    scores = user_emb @ item_emb.t()
    scores[exclude_pairs] = float("-inf")
    truth = torch.zeros_like(scores, dtype=torch.bool)
    truth[truth_pairs] = True
    num_truth = truth.sum(1).double()
    users = num_truth > 0
    out = {}
    for k in ks:
        top = scores.topk(k, dim=1).indices
        hits = truth.gather(1, top).double()[users]
        n = num_truth[users]
        discount = 1 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
        ideal = torch.stack([discount[:int(min(c, k))].sum() for c in n])
        out |= {f"precision@{k}": (hits.sum(1) / k).mean().item(),
                f"recall@{k}": (hits.sum(1) / n).mean().item(),
                f"ndcg@{k}": ((hits * discount).sum(1) / ideal).mean().item()}
    return out


def test_evaluate_in_blocks_equals_dense_oracle():
    torch.manual_seed(0)
    users, items = 37, 50
    user_emb, item_emb = torch.randn(users, 8), torch.randn(items, 8)
    pairs = torch.randperm(users * items)[:400]
    ex = (pairs[:250] // items, pairs[:250] % items)
    tr = (pairs[250:] // items, pairs[250:] % items)
    exclude = RowIndex.build(ex[0], ex[1], users)
    truth = RowIndex.build(tr[0], tr[1], users)
    expected = reference_evaluate(user_emb, item_emb, ex, tr, (5, 10, 20))
    for block in (1000, 7, 1):
        got = evaluate(user_emb, item_emb, exclude, truth, (5, 10, 20), block_size=block)
        assert {name: got[name] for name in expected} == pytest.approx(expected)


def test_the_table_starts_with_the_reference_metrics():
    """The reference's three, in its log's order: our metric lines begin as its lines do,
    and the positional rows of older runs are read as these columns."""
    assert [(m.name, m.label, m.short) for m in METRICS[:3]] == [
        ("precision", "Precision", "P"), ("recall", "Recall", "R"), ("ndcg", "NDCG", "NDCG")]
    assert len({m.name for m in METRICS}) == len({m.label for m in METRICS}) == len(METRICS)


def test_results_by_name_from_older_runs_and_early_stopping():
    # epochs.jsonl lines and last.pt of runs written before the table: [[P, R, NDCG], ...]
    legacy = [[0.1, 0.2, 0.3], [0.05, 0.4, 0.35]]
    named = as_named(legacy, (5, 20))
    assert named == {"precision@5": 0.1, "recall@5": 0.2, "ndcg@5": 0.3,
                     "precision@20": 0.05, "recall@20": 0.4, "ndcg@20": 0.35}
    assert as_named(named, (5, 20)) is named
    assert early_stopping_score(named, (5, 20)) == 0.4  # Recall@20
    assert early_stopping_score({"recall@5": 0.2, "recall@10": 0.3}, (5, 10)) == 0.3  # largest k
    assert short_key("ndcg@15") == "NDCG@15" and short_key("novel@3") == "novel@3"
