"""The BPR baselines (LightGCN, ReFINe; docs/baselines.md): hand-computed loss values, ReFINe's
re-weighting against the obvious sequential loops, and real short runs through main.main()."""
from __future__ import annotations

import json
import math

import pytest
import torch

from recommenders import make_config
import recommenders
from recommenders import bpr as bpr_training
from conftest import SHARED_DATASETS, SHARED_REFERENCE, shared_dataset, write_split_folder
from model import LightGCNRecommender, batch_l2, bpr_loss, categorical_sample
from recommenders.refine import similarity_sampling_weights
from conftest import fails_with, run_main, synthetic_rows
from runs.log_format import parse_log


def test_bpr_loss_by_hand():
    # mean(softplus(0 - 2), softplus(0 - 0)) = (log(1 + e^-2) + log 2) / 2
    value = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert float(value) == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2)


def test_batch_l2_by_hand():
    rows = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # squared norm 14
    assert float(batch_l2(rows, batch_size=7, weight=0.5)) == pytest.approx(1.0)


def test_categorical_sample_distribution(monkeypatch):
    # row 0: probabilities 0.1, 0, 0.3, 0.6, 0 (a zero weight last); row 1: a single item
    weights = torch.tensor([[0.5, 0.0, 1.5, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]])
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    draws = categorical_sample(weights.repeat(n, 1), generator=gen).view(n, 2)
    assert torch.equal(draws[:, 1], torch.full((n,), 4))
    freq = torch.bincount(draws[:, 0], minlength=5).double() / n
    # 4.5 standard errors of a binomial proportion; zero weights never drawn
    expected = torch.tensor([0.1, 0.0, 0.3, 0.6, 0.0], dtype=torch.float64)
    tolerance = 4.5 * (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= tolerance).all(), freq
    # the largest uniform below 1 still lands on an item of positive weight
    below_one = float(torch.nextafter(torch.tensor(1.0, dtype=torch.float64),
                                      torch.tensor(0.0, dtype=torch.float64)))
    monkeypatch.setattr(torch, "rand",
                        lambda shape, **kw: torch.full(shape, below_one, dtype=torch.float64))
    assert categorical_sample(weights).tolist() == [3, 4]


class _Graphs:
    def __init__(self, num_users):
        self.num_users = num_users
        self.norm_adj = None


def test_bpr_batch_loss_counts_each_node_once():
    model = LightGCNRecommender(num_users=2, num_items=3, embedding_dim=2, num_layers=0)
    with torch.no_grad():  # 0 layers: E = E0; rows: u0, u1, i0, i1, i2
        model.gcn.embedding.weight.copy_(torch.tensor(
            [[1.0, 0.0], [5.0, 5.0], [2.0, 1.0], [0.0, 1.0], [7.0, 7.0]]))
    users, items, negatives = torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([1, 1])
    loss = bpr_training.bpr_batch_loss(model, _Graphs(2), users, items, negatives, 0.1)
    # s(u0,i0) = 2, s(u0,i1) = 0; negatives i1: s = 0. BPR = (softplus(-2) + softplus(0)) / 2.
    # distinct nodes u0, i0, i1: |.|^2 = 1 + 5 + 1 = 7 (u1 and i2 are not in the batch)
    bpr = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(bpr + 0.1 * 7 / 2)


@pytest.mark.parametrize("keep,expected_rows", [("high_loss", [1]), ("low_loss", [0])])
def test_bpr_batch_loss_with_weights_and_pruning_by_hand(keep, expected_rows):
    """Rows (u0, i0, j=i1) loss softplus(-2), (u0, i1, j=i1) loss softplus(0) with weight 3;
    drop 0.5 keeps 1 row: the higher-loss second (high_loss) or the first (low_loss)."""
    model = LightGCNRecommender(num_users=2, num_items=3, embedding_dim=2, num_layers=0)
    with torch.no_grad():
        model.gcn.embedding.weight.copy_(torch.tensor(
            [[1.0, 0.0], [5.0, 5.0], [2.0, 1.0], [0.0, 1.0], [7.0, 7.0]]))
    users, items, negatives = torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([1, 1])
    weights = torch.tensor([1.0, 3.0])
    loss = bpr_training.bpr_batch_loss(model, _Graphs(2), users, items, negatives, 0.1,
                                       weights, prune=(0.5, keep))
    row_loss = [math.log(1 + math.exp(-2)), math.log(2)]
    kept = sum(weights[r].item() * row_loss[r] for r in expected_rows) / len(expected_rows)
    assert loss.item() == pytest.approx(kept + 0.1 * 7 / 2)  # the L2 part is not pruned
    unpruned = bpr_training.bpr_batch_loss(model, _Graphs(2), users, items, negatives, 0.1,
                                           weights)
    assert unpruned.item() == pytest.approx((row_loss[0] + 3 * row_loss[1]) / 2 + 0.35)


def sequential_reweighting(base, item_emb, pos, neg, p, q, r, s):
    """docs/baselines.md read literally: loops over the rows, checking 'weight 1' as they go."""
    sim = item_emb @ item_emb.t()
    sim.fill_diagonal_(float("-inf"))
    w = base.clone()
    for u, i in pos:
        for j in sim[i].topk(s).indices.tolist():
            if w[u, j] == 1:
                w[u, j] = q
    for u, i in neg:
        for j in sim[i].topk(r).indices.tolist():
            if w[u, j] == 1:
                w[u, j] = p
    return w


@pytest.mark.parametrize("q", [0.75, 1.0])
def test_reweighting_equals_sequential_loops(q):
    gen = torch.Generator().manual_seed(0)
    U, I = 12, 30
    item_emb = torch.randn(I, 8, generator=gen)
    base = torch.ones(U, I)
    pairs = torch.randperm(U * I, generator=gen)[:120]
    users, items = pairs // I, pairs % I
    pos, neg = slice(0, 80), slice(80, 120)
    base[users, items] = 0.0
    base[users[neg], items[neg]] = 1.5
    got = similarity_sampling_weights(base, item_emb, users[pos], items[pos], users[neg],
                                      items[neg], p=1.5, q=q, r=6, s=3)
    want = sequential_reweighting(base, item_emb, list(zip(users[pos].tolist(),
                                                           items[pos].tolist())),
                                  list(zip(users[neg].tolist(), items[neg].tolist())),
                                  1.5, q, 6, 3)
    assert torch.equal(got, want)
    assert torch.equal(base[0], base[0])  # the base weights are copied, not changed
    if q != 1:
        assert (got == q).any() and (got == 1.5).sum() > (base == 1.5).sum()


def test_reweighting_by_hand():
    # items on a line: similarity = product; item 0's most similar others: 3, 2, 1
    item_emb = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    base = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.5, 1.0, 0.0, 1.0]])
    # user 0: positive item 0 (top s=1: item 3 -> q); user 1: negative item 0 (top r=2:
    # items 3, 2 -> item 3 at 1 gets p, item 2 is at 0 and stays)
    w = similarity_sampling_weights(base, item_emb, torch.tensor([0]), torch.tensor([0]),
                                    torch.tensor([1]), torch.tensor([0]), 1.5, 0.75, 2, 1)
    assert w.tolist() == [[0.0, 1.0, 1.0, 0.75], [1.5, 1.0, 0.0, 1.5]]


def test_lightgcn_negatives_avoid_every_training_row(tmp_path):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    import dataloader
    from recommenders import base
    data = dataloader.load_dataset(tmp_path / "data", "Synth", warn=lambda line: None)
    graphs = base.build_graphs(data, "cpu", positives_graph=True)
    config = make_config(model="lightgcn", dataset="Synth")
    state = recommenders.MODELS["lightgcn"].prepare(graphs, config)
    seen = torch.zeros(data.num_users, data.num_items, dtype=torch.bool)
    seen[data.train.users, data.train.items] = True
    seen[data.neutral.users, data.neutral.items] = True  # neutral rows are training rows too
    assert torch.equal(state.base_weights == 0, seen)
    assert set(state.base_weights.unique().tolist()) == {0.0, 1.0}
    # the propagation graph holds the positive rows only
    assert graphs.norm_adj._nnz() == 2 * int(data.train_is_pos.sum())


@pytest.mark.parametrize("model", ["lightgcn", "refine"])
def test_baseline_trains_on_synthetic_data(model, tmp_path):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    rc, result = run_main(["--model", model, "--dataset", "Synth", "--data_dir",
                           str(tmp_path / "data"), "--epochs", "3", "--batch_size", "64",
                           *(["--r", "5", "--t", "2"] if model == "refine" else [])], tmp_path)
    assert rc == 0
    run_dir = result / "Synth" / "run"
    log = parse_log(run_dir / "train.log")
    assert log["hparams"]["model"] == model
    assert log["stats"]["train"] == 8 * 30  # the positive rows only
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3]
    assert json.loads((run_dir / "config.json").read_text())["model"] == model


def test_refine_r_larger_than_items(tmp_path, capsys):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    rc, _ = run_main(["--model", "refine", "--dataset", "Synth", "--data_dir",
                      str(tmp_path / "data"), "--epochs", "1"], tmp_path)
    fails_with(capsys, rc, "--r 100", "40 items")


@pytest.mark.parametrize("args,fragment", [
    (["--model", "bpr"], "--model must be one of refine_plus, refine, lightgcn"),
    (["--model", "refine", "--impl", "reference"], "--impl is a setting of refine_plus"),
    (["--model", "lightgcn", "--b", "3"], "--b is a setting of pngnn, not of --model lightgcn"),
    (["--model", "refine", "--s", "0"], "--r, --s, --t >= 1"),
])
def test_bad_model_flags(args, fragment, tmp_path, capsys):
    rc, _ = run_main([*args, "--dataset", "ML-100K", "--data_dir", str(tmp_path)], tmp_path)
    fails_with(capsys, rc, fragment)


def test_per_dataset_r():
    assert [make_config(dataset=d, model="refine").settings.r for d in ("ML-100K", "ML-1M", "Netflix-1M")] \
        == [100, 250, 300]
    assert make_config(dataset="ML-1M", model="refine", r=7).settings.r == 7


@shared_dataset("ML-100K")
def test_refine_two_epochs_on_ml100k(tmp_path):
    rc, result = run_main(["--model", "refine", "--dataset", "ML-100K", "--data_dir",
                           str(SHARED_DATASETS), "--epochs", "2", "--t", "2"], tmp_path)
    assert rc == 0
    log = parse_log(result / "ML-100K" / "run" / "train.log")
    ref_path = SHARED_REFERENCE / "refine" / "ReFINe_ML-100K.out"
    if ref_path.is_file():
        ref = parse_log(ref_path)
        assert log["stats"] == ref["stats"]  # 52,984 positive training rows
        for name in ("p", "q", "r", "s", "t"):
            assert name in log["hparams"]
        assert log["hparams"]["r"] == ref["hparams"]["r"]
    losses = [e["loss"] for e in log["epochs"]]
    # BPR starts near log 2 (the reference's first epoch: 0.6857) and falls
    assert 0.6 < losses[0] < math.log(2) and losses[1] < losses[0]
    assert 0.15 < log["epochs"][0]["metrics"]["recall@20"] < 0.3
