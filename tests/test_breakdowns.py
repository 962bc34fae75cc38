"""Breakdowns of test recall/NDCG by item popularity group and user-activity quartile
(runs/evaluation.py), by hand on a tiny case, and in a real run's metrics.json."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import run_main, synthetic_rows, write_split_folder
from dataloader import RowIndex
from runs.evaluation import breakdowns, item_groups, user_quartiles


def test_groups_and_quartiles_by_hand():
    # 20 items: popularity = index, so items 0..15 are the 80 % tail, item 19 the top 5 %
    groups = item_groups(torch.arange(20))
    assert groups.tolist() == [0] * 16 + [1] * 3 + [2]
    # 3 items: floor(2.4) = 2 in the tail (items 1, 2), the most popular one is popular
    assert item_groups(torch.tensor([3, 1, 2])).tolist() == [2, 0, 0]
    # 8 users, activity with a tie: ranks by activity, ties by user index
    assert user_quartiles(torch.tensor([5, 0, 9, 5, 1, 7, 2, 3])).tolist() == \
        [2, 0, 3, 2, 0, 3, 1, 1]


def rows(pairs, n):
    return RowIndex.build(torch.tensor([u for u, _ in pairs], dtype=torch.long),
                          torch.tensor([i for _, i in pairs], dtype=torch.long), n)


def test_breakdowns_by_hand():
    # 4 users, 5 items; every user ranks items 4 > 3 > 2 > 1 > 0; nothing masked.
    # popularity 0..4: tail = items 0..3 (floor(0.8*5) = 4), popular = item 4 (at least one)
    config = SimpleNamespace(top_k=(1, 2), test_batch_size=8, mask_valid_in_test=False)
    model = lambda adj: (torch.ones(4, 1), torch.arange(5.0).unsqueeze(1))  # noqa: E731
    truth = rows([(0, 4), (0, 0), (1, 3), (2, 2), (3, 4)], 4)
    index = SimpleNamespace(test_by_user=truth, popularity=torch.arange(5),
                            activity=torch.tensor([3, 2, 1, 0]), test_mask=lambda _: rows([], 4))
    model.eval = lambda: None
    out = breakdowns(model, SimpleNamespace(norm_adj=None), index, config)
    # popular: users 0 and 3 have item 4, ranked first: recall@1 = 1 for both
    assert out["item_popularity"]["popular"] == pytest.approx(
        {"recall@1": 1.0, "ndcg@1": 1.0, "recall@2": 1.0, "ndcg@2": 1.0, "users": 2})
    # unpopular: user 0 item 0 (rank 5), user 1 item 3 (rank 2), user 2 item 2 (rank 3)
    unpopular = out["item_popularity"]["unpopular"]
    assert unpopular["users"] == 3 and unpopular["recall@1"] == 0.0
    assert unpopular["recall@2"] == pytest.approx(1 / 3)
    assert unpopular["ndcg@2"] == pytest.approx((1 / torch.log2(torch.tensor(3.0)).item()) / 3)
    assert out["item_popularity"]["normal"] == {"recall@1": None, "ndcg@1": None,
                                                "recall@2": None, "ndcg@2": None, "users": 0}
    # quartiles by activity 3, 2, 1, 0: user 3 is q1, user 0 is q4
    assert out["user_activity"]["q1"]["recall@1"] == 1.0  # user 3: item 4 first
    assert out["user_activity"]["q4"]["recall@1"] == 0.5  # user 0: 1 of its 2 items
    assert out["user_activity"]["q2"]["recall@2"] == 0.0  # user 2: item 2 at rank 3
    assert [out["user_activity"][q]["users"] for q in ("q1", "q2", "q3", "q4")] == [1] * 4


def test_a_run_records_its_breakdowns(tmp_path):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
                           "--epochs", "1", "--batch_size", "64", "--model", "lightgcn"],
                          tmp_path)
    assert rc == 0
    metrics = json.loads((result / "Synth" / "run" / "metrics.json").read_text())
    by_users = metrics["breakdowns"]["user_activity"]
    total = sum(q["users"] for q in by_users.values())
    mean = sum(q["recall@20"] * q["users"] for q in by_users.values()) / total
    assert mean == pytest.approx(metrics["test"]["recall@20"], abs=1e-12)
    assert set(metrics["breakdowns"]["item_popularity"]) == {"unpopular", "normal", "popular"}


def test_compare_by_groups_of_a_multi_seed_run(tmp_path, capsys):
    import statistics

    import compare
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
                           "--epochs", "1", "--batch_size", "64", "--model", "lightgcn",
                           "--seeds", "1", "2"], tmp_path)
    assert rc == 0
    run = result / "Synth" / "run"
    assert compare.main([str(run), "--by", "user_activity"]) == 0
    out = capsys.readouterr().out
    seeds = [json.loads((run / f"seed{s}" / "metrics.json").read_text())["breakdowns"]
             for s in (1, 2)]
    values = [b["user_activity"]["q2"]["recall@20"] for b in seeds]
    line = next(ln for ln in out.splitlines() if ln.startswith("q2 R@20"))
    assert line.split()[-1] == f"{statistics.fmean(values):.4f}±{statistics.stdev(values):.4f}"
    assert compare.main([str(run / "seed1" / "train.log"), "--by", "user_activity"]) == 2
    assert "is not a run folder" in capsys.readouterr().err
