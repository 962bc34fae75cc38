"""MixGCF: the vectorised synthesis against its literal loop twin (values and gradients),
a case by hand, the candidate draws, and a real short run."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import run_main, synthetic_rows, write_split_folder
from recommenders.mixgcf import (mixgcf_loss, mixgcf_negatives, mixgcf_negatives_literal,
                                 pool_layers)


@pytest.mark.parametrize("pool", ["mean", "sum", "concat", "final"])
def test_vectorised_synthesis_equals_the_literal_loops(pool):
    g = torch.Generator().manual_seed(7)
    B, K, M, L1, d = 6, 2, 4, 3, 5
    leaves = [torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
              for shape in ((B, L1, d), (B, L1, d), (B, K, M, L1, d))]
    alpha = torch.rand(B, K, L1, dtype=torch.float64, generator=g)
    grads = []
    for negatives in (mixgcf_negatives, mixgcf_negatives_literal):
        loss = mixgcf_loss(*leaves, alpha, pool, 0.3, negatives=negatives)
        parts = negatives(*leaves, alpha, pool)
        grads.append((loss.detach(), *(p.detach() for p in parts),
                      *torch.autograd.grad(loss, leaves)))
    for fast, slow in zip(*grads):
        torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    assert grads[0][-1].abs().sum() > 0  # the chosen candidates get gradients


def test_one_row_by_hand():
    user = torch.tensor([[[1.0, 0.0]]])  # B = 1, one layer (L = 0), d = 2
    pos = torch.tensor([[[0.0, 0.0]]])
    cands = torch.tensor([[[[[2.0, 0.0]], [[0.0, 3.0]]]]])  # K = 1, M = 2
    alpha = torch.tensor([[[0.5]]])
    # mixed: (1, 0) and (0, 1.5); scores with the user 1 and 0: the first is chosen
    e_neg, neg0 = mixgcf_negatives(user, pos, cands, alpha, "mean")
    assert e_neg.tolist() == [[[1.0, 0.0]]] and neg0.tolist() == [[[1.0, 0.0]]]
    # K = 1: BPR, softplus(s- - s+) = log(1 + e^(1 - 0)); L2 (1 + 0 + 1) / 2 / 1
    loss = mixgcf_loss(user, pos, cands, alpha, "mean", 0.1)
    assert float(loss) == pytest.approx(math.log(1 + math.e) + 0.1 * 1.0, rel=1e-6)


def test_pool_layers():
    layers = torch.arange(12.0).view(2, 3, 2)  # (nodes, L+1, d)
    assert pool_layers(layers, "mean")[0].tolist() == [2.0, 3.0]
    assert pool_layers(layers, "sum")[0].tolist() == [6.0, 9.0]
    assert pool_layers(layers, "final")[0].tolist() == [4.0, 5.0]
    assert pool_layers(layers, "concat")[0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_candidates_are_never_the_users_train_rows(tmp_path):
    import dataloader
    from model import draws_from_cdf
    from recommenders import make_config, mixgcf
    from recommenders.base import build_graphs
    write_split_folder(tmp_path, "Synth", *synthetic_rows())
    data = dataloader.load_dataset(tmp_path, "Synth", warn=lambda _: None)
    graphs = build_graphs(data, "cpu", positives_graph=True)
    state = mixgcf.prepare(graphs, make_config(model="mixgcf", dataset="Synth"))
    users = torch.arange(graphs.num_users).repeat_interleave(50)
    drawn = draws_from_cdf(state.cdf, users, 16)
    owner, cols = graphs.seen_by_user.gather(torch.arange(graphs.num_users))
    seen = set(zip(owner.tolist(), cols.tolist()))
    assert not any((int(u), int(j)) in seen for u, row in zip(users, drawn) for j in row)
    assert len(torch.unique(drawn)) > 0.8 * (graphs.num_items - 16)  # uniform, not stuck


@pytest.mark.parametrize("rows, drop_last, expected", [
    (10, False, [4, 4, 2]), (10, True, [4, 4]), (8, True, [4, 4]), (3, True, [3])])
def test_drop_last_skips_only_a_trailing_partial_batch(rows, drop_last, expected):
    from recommenders.base import minibatch_epoch
    w = torch.zeros(1, requires_grad=True)
    seen = []

    def step_loss(batch):
        seen.append(batch.numel())
        return (w * batch.numel()).sum()
    minibatch_epoch(torch.optim.SGD([w], lr=0.1), rows, 4, 1, "cpu", step_loss,
                    drop_last=drop_last)
    assert seen == expected


def test_a_short_mixgcf_run(tmp_path):
    data = tmp_path / "data"
    write_split_folder(data, "Synth", *synthetic_rows())
    rc, result = run_main(["--model", "mixgcf", "--dataset", "Synth", "--data_dir", str(data),
                           "--epochs", "2", "--batch_size", "64", "--pool", "concat",
                           "--num_negatives", "2", "--drop_last", "on"], tmp_path)
    assert rc == 0
    log = (result / "Synth" / "run" / "train.log").read_text()
    assert "model: mixgcf" in log and "candidates: 16" in log and "pool: concat" in log
    assert "drop_last: on" in log
    assert log.count("Epoch: ") == 2
