"""per_user.npz (runs/evaluation.py): each user's values by hand, a byte-deterministic file,
and the same file from a resumed, a multi-seed and a distributed run as from a plain one."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import main as M
from conftest import interrupt_second_epoch, run_main, synthetic_rows, write_split_folder
from dataloader import RowIndex
from runs.evaluation import npz_bytes, read_per_user, write_per_user
from runs.metrics import CATALOGUE, evaluate
from runs.trained import load_trained


def rows(pairs, n):
    users, items = zip(*pairs) if pairs else ((), ())
    return RowIndex.build(torch.tensor(users, dtype=torch.long),
                          torch.tensor(items, dtype=torch.long), n)


def test_per_user_values_by_hand():
    # 3 users, 4 items; scores = user_emb @ item_emb.T with item_emb the identity
    user_emb = torch.tensor([[4.0, 3.0, 2.0, 1.0],    # ranks 0,1,2,3
                             [1.0, 2.0, 3.0, 4.0],    # ranks 3,2,1,0
                             [1.0, 1.0, 1.0, 1.0]])   # no truth: not counted
    item_emb = torch.eye(4)
    exclude = rows([(0, 0)], 3)                        # user 0 has trained on item 0
    truth = rows([(0, 2), (0, 3), (1, 3)], 3)
    values: dict = {}
    means = evaluate(user_emb, item_emb, exclude, truth, (1, 2), per_user=values)
    assert values["users"].tolist() == [0, 1] and values["num_relevant"].tolist() == [2, 1]
    # user 0 ranks 1, 2, 3 (0 masked): hits [0, 1]; user 1 ranks 3, 2, ...: hits [1, 0]
    assert values["precision@1"].tolist() == [0.0, 1.0]
    assert values["recall@2"].tolist() == [0.5, 1.0]
    idcg0 = 1 + 1 / math.log2(3)  # two relevant items
    assert values["ndcg@2"].tolist() == pytest.approx([(1 / math.log2(3)) / idcg0, 1.0])
    for name in ("precision@1", "recall@2", "ndcg@2"):
        assert values[name].mean() == pytest.approx(means[name], abs=1e-15)


def test_npz_bytes_are_deterministic_and_load():
    arrays = {"user_ids": np.asarray(["7", "x9"]), "test.recall@20": np.asarray([0.5, 1.0])}
    first = npz_bytes(arrays)
    assert first == npz_bytes(dict(arrays))
    loaded = np.load(io.BytesIO(first), allow_pickle=False)
    assert loaded["user_ids"].tolist() == ["7", "x9"]
    assert loaded["test.recall@20"].tolist() == [0.5, 1.0]
    assert npz_bytes({**arrays, "test.recall@20": np.asarray([0.5, 0.9])}) != first


def synth(tmp_path):
    data = tmp_path / "data"
    write_split_folder(data, "Synth", *synthetic_rows())
    return ["--dataset", "Synth", "--data_dir", str(data), "--batch_size", "64",
            "--threads", "1"]


def test_run_writes_the_means_it_reports(tmp_path):
    import json
    rc, result = run_main([*synth(tmp_path), "--epochs", "2"], tmp_path)
    assert rc == 0
    run = result / "Synth" / "run"
    ids, meta, splits = read_per_user(run / "per_user.npz")
    metrics = json.loads((run / "metrics.json").read_text())
    assert meta["splits"] == ["validation", "test"] and meta["best_epoch"] == \
        metrics["best_epoch"]
    for split, key in (("validation", "best_validation"), ("test", "test")):
        for name, value in metrics[key].items():
            if name.partition("@")[0] in CATALOGUE:  # catalogue-wide: no per-user value
                assert name not in splits[split]
                continue
            assert splits[split][name].mean() == pytest.approx(value, abs=1e-12), name
    test_users = {str(u) for u, _, _ in synthetic_rows()[2]}
    assert set(ids[splits["test"]["users"]].tolist()) == test_users


def test_resumed_and_seed_runs_write_the_same_file(tmp_path, monkeypatch):
    args = [*synth(tmp_path), "--epochs", "3"]
    rc, result = run_main(args, tmp_path, "straight")
    assert rc == 0
    interrupt_second_epoch(monkeypatch)
    assert run_main(args, tmp_path, "split")[0] == 130
    monkeypatch.undo()
    split = result / "Synth" / "split"
    assert M.main(["--resume", str(split), "--quiet", "--threads", "1"]) == 0
    straight = (result / "Synth" / "straight" / "per_user.npz").read_bytes()
    assert (split / "per_user.npz").read_bytes() == straight
    rc, _ = run_main([*args, "--seeds", "2024", "2025"], tmp_path, "seeds")
    assert rc == 0
    assert (result / "Synth" / "seeds" / "seed2024" / "per_user.npz").read_bytes() == straight
    assert (result / "Synth" / "seeds" / "seed2025" / "per_user.npz").read_bytes() != straight


def test_the_file_is_a_function_of_best_pt(tmp_path):
    """What a distributed run's rank 0 writes is what one process writes from its best.pt:
    the file depends on the selected weights only."""
    rc, result = run_main([*synth(tmp_path), "--epochs", "2"], tmp_path)
    assert rc == 0
    run = result / "Synth" / "run"
    trained = load_trained(run, "Synth", None)
    from recommenders.base import build_eval_index
    again = tmp_path / "again"
    again.mkdir()
    _, meta, _ = read_per_user(run / "per_user.npz")
    write_per_user(again, trained.model, trained.graphs,
                   build_eval_index(trained.data, "cpu"), trained.config, meta["best_epoch"],
                   with_validation=True)
    assert (again / "per_user.npz").read_bytes() == (run / "per_user.npz").read_bytes()
