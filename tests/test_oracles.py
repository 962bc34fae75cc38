"""Every exact speed-up against its slow, obvious twin: values AND gradients (allclose).

- LightGCN with the symmetric-backward spmm vs a dense D^-1/2 A D^-1/2 and vs PyG's own
  LGConv(normalize=True) on an edge list (what the reference runs);
- the sparse autoencoder (zero-row shortcut, sum-of-columns first layer, fused BCE) vs the
  dense AE over every U x I entry;
- the per-row scores of per_user negatives (one GEMM, then a gather) vs the einsum over a
  gathered (P, n, d) copy;
- one training step: single propagation + sparse AE + L2 in the optimizer vs the
  reference's double propagation + dense AE + L2 in the loss, in every mode.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import LGConv

import dataloader
from recommenders import make_config, refine_plus
from conftest import step_rows
from dataloader import Interactions
from model import (DispreferenceAE, LightGCN, Propagation, ReFINePlus, ae_terms_dense,
                   ae_terms_sparse, per_row_scores, sigmoid_bce_sum, spmm)


def random_bipartite(num_users=13, num_items=17, edges=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(num_users * num_items, generator=g)[:edges]
    users, items = pairs // num_items, pairs % num_items
    # make sure every node has an edge, as T guarantees
    users = torch.cat([users, torch.arange(num_users), torch.zeros(num_items, dtype=torch.long)])
    items = torch.cat([items, torch.zeros(num_users, dtype=torch.long), torch.arange(num_items)])
    pairs = torch.unique(users * num_items + items)
    return Interactions(pairs // num_items, pairs % num_items)


def assert_grads_close(a: torch.nn.Module, b: torch.nn.Module, rtol=1e-6, atol=1e-10):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pa.grad is not None and pb.grad is not None, name
        torch.testing.assert_close(pa.grad, pb.grad, rtol=rtol, atol=atol, msg=name)


def test_propagation_equals_dense_and_pyg_lgconv():
    U, I = 13, 17
    train = random_bipartite(U, I)
    norm_adj = dataloader.build_norm_adj(train, U, I).double()
    fast = LightGCN(U + I, 8, 3).double()
    # dense oracle: D^-1/2 A D^-1/2 built by hand
    A = torch.zeros(U + I, U + I, dtype=torch.float64)
    A[train.users, train.items + U] = 1
    A[train.items + U, train.users] = 1
    d = A.sum(1).pow(-0.5)
    dense = d[:, None] * A * d[None, :]
    e0 = fast.embedding.weight.detach().clone().requires_grad_()
    layers, x = [e0], e0
    for _ in range(3):
        x = dense @ x
        layers.append(x)
    expected = torch.stack(layers).mean(0)
    # PyG's LGConv normalising an edge list itself
    edge_index = torch.stack([torch.cat([train.users, train.items + U]),
                              torch.cat([train.items + U, train.users])])
    e1 = fast.embedding.weight.detach().clone().requires_grad_()
    conv, layers, x = LGConv(normalize=True), [e1], e1
    for _ in range(3):
        x = conv(x, edge_index)
        layers.append(x)
    pyg = torch.stack(layers).mean(0)

    got = fast(norm_adj)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(pyg, expected)
    weight = torch.randn_like(got)
    (got * weight).sum().backward()
    (expected * weight).sum().backward()
    (pyg * weight).sum().backward()
    torch.testing.assert_close(fast.embedding.weight.grad, e0.grad)
    torch.testing.assert_close(e1.grad, e0.grad)


@pytest.mark.parametrize("symmetric_backward", [True, False])
def test_our_propagation_layer_is_pyg_lgconv_bit_for_bit(symmetric_backward):
    """model.Propagation (no torch_geometric import at run time) == LGConv(normalize=False)
    on the same pre-normalised CSR adjacency: values and gradients, float32."""
    U, I = 13, 17
    norm_adj = dataloader.build_norm_adj(random_bipartite(U, I), U, I)
    ours, pyg = Propagation(symmetric_backward), LGConv(normalize=False)
    x1 = torch.randn(U + I, 8, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ours(x1, norm_adj), pyg(x2, norm_adj)
    assert torch.equal(y1, y2)
    weight = torch.randn_like(y1)
    (y1 * weight).sum().backward()
    (y2 * weight).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spmm_equals_sparse_matmul_bit_for_bit(dtype, monkeypatch):
    U, I = 13, 17
    adj = dataloader.build_norm_adj(random_bipartite(U, I), U, I).to(dtype)
    x = torch.randn(U + I, 8, dtype=dtype)
    # spmm writes into an uninitialised tensor: make it NaN to show it is never read
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: torch.full(a, float("nan"), **kw))
    got = spmm(adj, x)
    assert torch.equal(got, adj @ x)
    assert torch.equal(spmm(adj, x[:, ::2]), adj @ x[:, ::2])  # a strided input


@pytest.mark.parametrize("nonzero_rows", [0, 1, 9, 40])
def test_sparse_autoencoder_equals_dense(nonzero_rows):
    torch.manual_seed(nonzero_rows)
    num_rows, num_inputs = 40, 30
    dense_ae = DispreferenceAE(num_inputs, hidden_dim=20, code_dim=8).double()
    sparse_ae = copy.deepcopy(dense_ae)
    x = torch.zeros(num_rows, num_inputs, dtype=torch.float64)
    rows = torch.randperm(num_rows)[:nonzero_rows].sort().values
    for r in rows:
        x[r, torch.randperm(num_inputs)[:int(torch.randint(1, 5, ()))]] = 1.0
    owner_rows, cols = x[rows].nonzero(as_tuple=True)
    embeddings = torch.randn(num_rows, 8, dtype=torch.float64)

    bce_d, z_d = ae_terms_dense(dense_ae, x)
    bce_s, z_s = ae_terms_sparse(sparse_ae, rows, owner_rows, cols, num_rows)
    torch.testing.assert_close(bce_s, bce_d)
    torch.testing.assert_close(z_s, z_d)
    (bce_d + F.mse_loss(embeddings, z_d)).backward()
    (bce_s + F.mse_loss(embeddings, z_s)).backward()
    assert_grads_close(sparse_ae, dense_ae)


def test_fused_sigmoid_bce_matches_torch_including_saturation():
    # logits beyond +-17 saturate the float32 sigmoid: torch clamps log(0) at -100
    logits = torch.tensor([[-120.0, -30.0, -2.0, 0.0, 3.0, 18.0, 40.0, 120.0]] * 2,
                          requires_grad=True)
    target = torch.tensor([[0, 0, 1, 0, 1, 0, 1, 0], [1, 1, 0, 1, 0, 1, 0, 1]],
                          dtype=torch.float32)
    weight = torch.tensor([3.0, 1.0])
    got = sigmoid_bce_sum(logits, target, weight)
    (got_grad,) = torch.autograd.grad(got, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    per_entry = F.binary_cross_entropy(torch.sigmoid(ref_logits), target, reduction="none")
    expected = (per_entry.sum(1) * weight).sum()
    (expected_grad,) = torch.autograd.grad(expected, ref_logits)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)
    assert float(per_entry.detach().max()) == pytest.approx(100.0)  # the clamp is exercised


def test_per_row_scores_equal_gathered_einsum():
    g = torch.Generator().manual_seed(3)
    queries = torch.randn(7, 5, dtype=torch.float64, generator=g)
    table = torch.randn(11, 5, dtype=torch.float64, generator=g)
    # repeated columns within a row and across rows: their gradients must add up
    columns = torch.randint(0, 11, (7, 9), generator=g)
    columns[0, :3] = 4
    weights = torch.randn(7, 9, dtype=torch.float64, generator=g)
    grads = []
    for score in (lambda q, t: per_row_scores(q, t, columns),
                  lambda q, t: torch.einsum("pd,pnd->pn", q, t[columns])):
        q, t = queries.clone().requires_grad_(), table.clone().requires_grad_()
        s = score(q, t)
        (s * weights).sum().backward()
        grads.append((s.detach(), q.grad, t.grad))
    for fast, plain in zip(*grads):
        torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    # and by hand for one entry
    torch.testing.assert_close(grads[0][0][2, 5], queries[2] @ table[columns[2, 5]])


@pytest.mark.parametrize("negatives", ["shared", "per_user"])
@pytest.mark.parametrize("ae_input", ["batch", "user_negatives"])
def test_fast_step_equals_reference_step(step_graphs, negatives, ae_input):
    """step_graphs: synthetic rows (conftest.varied_rows) and, where present, ML-100K."""
    graphs = dataclasses.replace(step_graphs, norm_adj=step_graphs.norm_adj.double())
    fast_cfg = make_config(negatives=negatives, ae_input=ae_input)
    ref_cfg = make_config(negatives=negatives, ae_input=ae_input, impl="reference")
    torch.manual_seed(1)
    fast = ReFINePlus(graphs.num_users, graphs.num_items).double()
    ref = copy.deepcopy(fast)
    ref.gcn.convs = torch.nn.ModuleList(LGConv(normalize=False) for _ in range(4))
    batch = torch.randperm(len(graphs.train))[:step_rows(len(graphs.train))]
    pos_users = graphs.train.users[batch][graphs.is_pos[batch]]
    negs = refine_plus.draw_negatives(pos_users, graphs,
                                      refine_plus.num_negatives(graphs.num_items),
                                      fast_cfg.settings.real_neg_samp_prob, negatives == "shared")

    loss_f, value_f, _ = refine_plus.loss_of(fast, graphs, batch, negs, fast_cfg)
    loss_r, value_r, _ = refine_plus.loss_of(ref, graphs, batch, negs, ref_cfg)
    torch.testing.assert_close(value_f, value_r, rtol=1e-12, atol=0)
    loss_f.backward()
    loss_r.backward()
    # the fast path leaves (λ/2)||θ||² to the optimizer: its gradient is λθ
    for name, p in fast.named_parameters():
        lam = fast_cfg.settings.lambda1 if name.startswith("gcn.embedding") \
            else fast_cfg.settings.lambda2
        p.grad += lam * p.detach()
    assert_grads_close(fast, ref, rtol=1e-9, atol=1e-15)


def test_fast_optimizer_step_equals_reference_step(step_graphs):
    """Fused Adam with L2 weight decay == plain Adam on the loss with the L2 terms."""
    graphs = step_graphs
    fast_cfg, ref_cfg = make_config(), make_config(impl="reference")
    torch.manual_seed(2)
    fast = ReFINePlus(graphs.num_users, graphs.num_items)
    ref = copy.deepcopy(fast)
    opt_f = refine_plus.make_optimizer(fast, fast_cfg)
    opt_r = refine_plus.make_optimizer(ref, ref_cfg)
    n = refine_plus.num_negatives(graphs.num_items)
    for _ in range(3):
        batch = torch.randperm(len(graphs.train))[:step_rows(len(graphs.train))]
        pos_users = graphs.train.users[batch][graphs.is_pos[batch]]
        negs = refine_plus.draw_negatives(pos_users, graphs, n,
                                          fast_cfg.settings.real_neg_samp_prob,
                                          fast_cfg.settings.negatives == "shared")
        for model, opt, cfg in ((fast, opt_f, fast_cfg), (ref, opt_r, ref_cfg)):
            loss, _, _ = refine_plus.loss_of(model, graphs, batch, negs, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, pf), pr in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pf, pr, rtol=1e-4, atol=1e-6, msg=name)
