"""pngnn and siren (recommenders/pngnn.py, siren.py, signed.py): each loss form by hand and
against the authors' expression, the fast step against the plain one, attention weights,
PN-GNN's negative view, and the degree samplers' distributions (the authors' codes'
counting, the rejection sampler, its fallback and its two seen-tests)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import dataloader
from conftest import synthetic_rows, write_split_folder
from dataloader import RowIndex
from recommenders import base, make_config, pngnn, signed, siren
from recommenders.pngnn import PositiveNegativeGCN, dual_bpr_loss
from recommenders.signed import pairwise_l2, pairwise_l2_counted
from recommenders.siren import SignAwareGCN, sign_aware_bpr_loss

def softplus(x):
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------- losses by hand

# three rows: (u0, i) positive with s = 2, (u1, k) negative with s = 0.5, (u2, i') positive
# with s = -1; one sampled item each, scored 1, 0.25, 0.5
OBS = torch.tensor([2.0, 0.5, -1.0])
NEG = torch.tensor([[1.0], [0.25], [0.5]])
IS_POS = torch.tensor([True, False, True])


# the positive rows' terms, the same in every form: softplus(s_j - s_i)
POS_TERMS = softplus(1 - 2) + softplus(0.5 + 1)


def test_code_form_by_hand():
    # both authors' codes: -log sigmoid(c s(u,k) - s(u,j)) = softplus(s_j - c s_k) on the
    # negative row, c = 2 (their -sign(w)/2 + 3/2 of w = r - 3.5 < 0), summed over the batch
    want = POS_TERMS + softplus(0.25 - 2 * 0.5)
    assert float(dual_bpr_loss(OBS, NEG, IS_POS, b=2.0)) == pytest.approx(want)
    assert float(sign_aware_bpr_loss(OBS, NEG, IS_POS, c_neg=2.0)) == pytest.approx(want)
    # c = 3 changes only the negative row's term
    want3 = POS_TERMS + softplus(0.25 - 3 * 0.5)
    assert float(dual_bpr_loss(OBS, NEG, IS_POS, b=3.0)) == pytest.approx(want3)
    # reduction mean: the same terms averaged over the 3 pairs
    assert float(dual_bpr_loss(OBS, NEG, IS_POS, 2.0, reduction="mean")) == \
        pytest.approx(want / 3)


def test_code_form_matches_the_authors_expression():
    # the authors' forward(): -sum(logsigmoid((-sign(w)/2 + 3/2) * s_ui - s_uj).sum(1)),
    # w = rating - 3.5, written out with their ratings (5, 2, 4 -> w = 1.5, -1.5, 0.5)
    w = torch.tensor([1.5, -1.5, 0.5], dtype=torch.float64)
    obs, neg = OBS.double(), torch.tensor([[1.0, -0.3], [0.25, 2.0], [0.5, 0.1]],
                                          dtype=torch.float64)
    theirs = -torch.nn.functional.logsigmoid(
        (-0.5 * torch.sign(w) + 1.5).view(-1, 1) * obs.view(-1, 1) - neg).sum(1).sum()
    for ours in (dual_bpr_loss(obs, neg, w > 0, 2.0),
                 sign_aware_bpr_loss(obs, neg, w > 0, 2.0)):
        torch.testing.assert_close(ours, theirs, rtol=1e-15, atol=0)


def test_reversed_forms_by_hand():
    # pngnn reversed (the report's Eq. 10 read literally): softplus(b s_k - s_j), mean
    want = (POS_TERMS + softplus(3 * 0.5 - 0.25)) / 3
    assert float(dual_bpr_loss(OBS, NEG, IS_POS, 3.0, "reversed", "mean")) == \
        pytest.approx(want)
    # siren reversed: softplus(s_j - m s_i), m = -c_neg on the negative row
    want = (POS_TERMS + softplus(0.25 + 2 * 0.5)) / 3
    assert float(sign_aware_bpr_loss(OBS, NEG, IS_POS, 2.0, "reversed", "mean")) == \
        pytest.approx(want)
    assert float(sign_aware_bpr_loss(OBS, NEG, IS_POS, 2.0, "reversed", "sum")) == \
        pytest.approx(3 * want)


def test_losses_sum_or_average_over_sampled_items():
    neg = torch.tensor([[1.0, 3.0]])  # one positive row with two sampled items
    total = softplus(1 - 2) + softplus(3 - 2)
    for loss in (dual_bpr_loss, sign_aware_bpr_loss):
        assert float(loss(OBS[:1], neg, IS_POS[:1], 2.0)) == pytest.approx(total)
        assert float(loss(OBS[:1], neg, IS_POS[:1], 2.0, "reversed", "mean")) == \
            pytest.approx(total / 2)


def test_pruning_keeps_the_rows_by_their_summed_loss():
    # rows' summed losses: row 0 softplus(-1), row 1 softplus(0.25 - 1), row 2 softplus(1.5)
    rows = [softplus(-1.0), softplus(0.25 - 1.0), softplus(1.5)]
    got = dual_bpr_loss(OBS, NEG, IS_POS, 2.0, prune=(0.5, "high_loss"))  # keeps 1 row
    assert float(got) == pytest.approx(max(rows))
    got = dual_bpr_loss(OBS, NEG, IS_POS, 2.0, "code", "mean", prune=(0.5, "low_loss"))
    assert float(got) == pytest.approx(min(rows))


def test_pairwise_l2_by_hand():
    u, i = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    j = torch.tensor([[[1.0, 1.0], [3.0, 0.0]]])  # (B=1, n=2, d=2)
    # the authors' reg * (|u|^2 + |i|^2 + sum_j |j|^2) = 0.1 * (1 + 4 + 2 + 9); mean: / (1 * 2)
    assert float(pairwise_l2(u, i, j, 0.1)) == pytest.approx(1.6)
    assert float(pairwise_l2(u, i, j, 0.1, "mean")) == pytest.approx(0.8)


def test_counted_pairwise_l2_by_hand_and_against_the_gather():
    u, i = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    table = torch.tensor([[1.0, 1.0], [3.0, 0.0], [5.0, 5.0]])  # row 2 is never drawn
    assert float(pairwise_l2_counted(u, i, table, torch.tensor([[0, 1]]), 0.1, "mean")) == \
        pytest.approx(0.8)
    assert float(pairwise_l2_counted(u, i, table, torch.tensor([[0, 1]]), 0.1)) == \
        pytest.approx(1.6)
    # random, with repeated draws: the same value and gradients as pairwise_l2 of the copy
    g = torch.Generator().manual_seed(4)
    u, i = (torch.randn(6, 3, dtype=torch.float64, generator=g) for _ in range(2))
    table = torch.randn(5, 3, dtype=torch.float64, generator=g)
    negatives = torch.randint(0, 5, (6, 4), generator=g)
    results = []
    for counted in (True, False):
        uu, ii, tt = (x.clone().requires_grad_() for x in (u, i, table))
        value = pairwise_l2_counted(uu, ii, tt, negatives, 0.3) if counted \
            else pairwise_l2(uu, ii, tt[negatives], 0.3)
        value.backward()
        results.append((value.detach(), uu.grad, ii.grad, tt.grad))
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)


def _plain_signed_loss(model, graphs, users, items, is_pos, negatives, config):
    """signed.signed_batch_loss the obvious way: the (B, n, d) copy of the negatives'
    embeddings, an einsum and pairwise_l2 of the copy (the oracle of the fast step)."""
    e_users, e_items = model(graphs.norm_adj)
    u, i, j = e_users[users], e_items[items], e_items[negatives]
    obs, neg = (u * i).sum(1), torch.einsum("bd,bnd->bn", u, j)
    loss = dual_bpr_loss(obs, neg, is_pos, config.settings.b, config.settings.neg_form, config.settings.reduction) \
        if config.model == "pngnn" else \
        sign_aware_bpr_loss(obs, neg, is_pos, config.settings.c_neg, config.settings.neg_form, config.settings.reduction)
    return loss + pairwise_l2(u, i, j, config.settings.lambda_reg, config.settings.reduction)


@pytest.mark.parametrize("form", ["code", "reversed"])
@pytest.mark.parametrize("which", ["pngnn", "siren"])
def test_signed_step_equals_the_plain_step(which, form):
    torch.manual_seed(0)
    U, I = 11, 13
    pos_adj, neg_adj = _random_adj(U, I, 40, 1).double(), _random_adj(U, I, 15, 2).double()
    if which == "pngnn":
        model = pngnn.WithNegativeGraph(
            PositiveNegativeGCN(U, I, embedding_dim=8, num_layers=2, dropout=0.5,
                                neg_input="positive").double(), neg_adj)
    else:
        model = SignAwareGCN(U, I, embedding_dim=8, num_layers=2, dropout=0.3).double()
    own = {"b": 2.0} if which == "pngnn" else {"c_neg": 2.0}
    config = make_config(model=which, lambda_reg=0.05, neg_form=form,
                         reduction="sum" if form == "code" else "mean", **own)
    loss_fn = pngnn.loss if which == "pngnn" else siren.loss
    graphs = SimpleNamespace(norm_adj=pos_adj)
    users, items = torch.randint(0, U, (20,)), torch.randint(0, I, (20,))
    is_pos, negatives = torch.rand(20) < 0.7, torch.randint(0, I, (20, 6))
    results = []
    fast_step = lambda *a: signed.signed_batch_loss(*a, loss_fn)  # noqa: E731
    for step in (fast_step, _plain_signed_loss):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks in both steps
        loss = step(model, graphs, users, items, is_pos, negatives, config)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (fast, fast_grads), (plain, plain_grads) = results
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=0)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------- attention

def _random_adj(num_users, num_items, num_rows, seed):
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(num_users * num_items, generator=gen)[:num_rows]
    rows = dataloader.Interactions(pairs // num_items, pairs % num_items)
    return dataloader.build_norm_adj(rows, num_users, num_items)


@pytest.mark.parametrize("which", ["pngnn", "siren"])
def test_attention_weights_sum_to_one(which):
    torch.manual_seed(0)
    U, I = 7, 9
    pos_adj, neg_adj = _random_adj(U, I, 25, 1), _random_adj(U, I, 10, 2)
    if which == "pngnn":
        model = PositiveNegativeGCN(U, I, embedding_dim=8, num_layers=2)
        views = [model.pos_gcn(pos_adj), model.neg_gcn(neg_adj)]
        fused, alpha = model.fuse(pos_adj, neg_adj)
        users, items = model(pos_adj, neg_adj)
    else:
        model = SignAwareGCN(U, I, embedding_dim=8, num_layers=2, dropout=0.5).eval()
        views = [model.gcn(pos_adj), model.mlp(model.neg_embedding.weight)]
        fused, alpha = model.fuse(pos_adj)
        users, items = model(pos_adj)
    assert alpha.shape == (U + I, 2)
    assert torch.allclose(alpha.sum(1), torch.ones(U + I))
    assert ((alpha > 0) & (alpha < 1)).all()
    assert torch.allclose(fused, alpha[:, :1] * views[0] + alpha[:, 1:] * views[1], atol=1e-6)
    assert torch.equal(torch.cat([users, items]), fused)
    if which == "siren":  # dropout acts in training mode only; the weights still sum to 1
        _, alpha_train = model.train().fuse(pos_adj)
        assert torch.allclose(alpha_train.sum(1), torch.ones(U + I))


# ----------------------------------------------------------------------------- samplers

def _within(freq, expected, n, sigmas=4.5):
    return bool(((freq - expected).abs() <= sigmas * (expected * (1 - expected) / n).sqrt()).all())


def test_degree_weights_count_every_train_row_or_positive_rows():
    train = dataloader.Interactions(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 2, 2]))
    neutral = (torch.tensor([1]), torch.tensor([1]))  # a 2/3 row of user 1 with item 1
    seen = RowIndex.build(torch.cat([train.users, neutral[0]]),
                          torch.cat([train.items, neutral[1]]), 2)
    graphs = SimpleNamespace(train=train, is_pos=torch.tensor([True, True, True, False]),
                             seen_by_user=seen, num_items=4)
    # all (the authors' deg_dist): item 0 two rows, item 1 one (neutral), item 2 two
    # (one positive, one negative), item 3 none
    assert signed.degree_weights(graphs, "all").tolist() == pytest.approx(
        [2 ** 0.75, 1.0, 2 ** 0.75, 0.0])
    # positive: item 0 two positive rows, item 2 one, items 1, 3 none
    assert signed.degree_weights(graphs, "positive").tolist() == pytest.approx(
        [2 ** 0.75, 0.0, 1.0, 0.0])


def test_every_item_with_a_train_row_can_be_drawn():
    # item 2 has only a negative row (of user 0): with deg over every row user 1 can draw it
    train = dataloader.Interactions(torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2]))
    seen = RowIndex.build(train.users, train.items, 2)
    graphs = SimpleNamespace(train=train, is_pos=torch.tensor([True, True, False]),
                             seen_by_user=seen, num_items=3)
    weights = signed.degree_weights(graphs, "all")
    assert (weights > 0).all()
    torch.manual_seed(0)
    draws = signed.DegreeSampler(weights, seen)(torch.tensor([1] * 50), 40)
    assert set(draws.flatten().tolist()) == {0, 2}
    assert signed.degree_weights(graphs, "positive")[2] == 0  # the earlier reading: never


@pytest.mark.parametrize("how", ["cdf", "rejection"])
def test_degree_sampler_follows_deg_to_the_three_quarters(how):
    """A chi-square-free check per cell: each item's frequency within 4.5 binomial standard
    deviations of P_u(j) (false alarm < 1e-4 over the 12 cells); deg^1 must fail it."""
    deg = torch.tensor([4.0, 1.0, 0.0, 9.0, 2.0, 16.0])
    weights = deg.pow(0.75)
    # user 0 has train-file rows with items 3 and 4 (most of the weight); user 1 with none
    seen = RowIndex.build(torch.tensor([0, 0]), torch.tensor([3, 4]), 2)
    torch.manual_seed(0)
    n = 100_000
    users = torch.tensor([0, 1])
    draws = signed.degree_negatives(users, weights, seen, n) if how == "cdf" \
        else signed.DegreeSampler(weights, seen)(users, n)  # (2, n)
    assert not torch.isin(draws[0], torch.tensor([2, 3, 4])).any()  # seen or degree 0
    assert not (draws[1] == 2).any()
    for user, allowed in ((0, torch.tensor([1.0, 1, 0, 0, 0, 1])), (1, torch.ones(6))):
        freq = torch.bincount(draws[user], minlength=6).double() / n
        p = (weights * allowed).double()
        assert _within(freq, p / p.sum(), n), (user, freq)
        wrong = (deg * allowed).double()  # deg^1: the test must be able to tell
        assert not _within(freq, wrong / wrong.sum(), n)


def test_rejection_sampler_falls_back_exactly_when_rejections_persist():
    # user 0 has seen items holding 99.99 % of the weight: most draws exhaust max_rounds
    # and come from the per-user CDF; the result is still exactly P_u
    weights = torch.tensor([10000.0, 0.5, 0.5])
    seen = RowIndex.build(torch.tensor([0]), torch.tensor([0]), 1)
    sampler = signed.DegreeSampler(weights, seen, max_rounds=2)
    torch.manual_seed(1)
    n = 20_000
    draws = sampler(torch.tensor([0]), n)[0]
    assert not (draws == 0).any()
    freq = torch.bincount(draws, minlength=3).double() / n
    assert _within(freq, torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64), n)

def test_degree_sampler_refuses_a_user_without_candidates():
    seen = RowIndex.build(torch.tensor([0, 0]), torch.tensor([0, 2]), 1)
    with pytest.raises(base.TrainingError, match="no negative to sample"):
        signed.check_degree_sampling(torch.tensor([0]), torch.tensor([1.0, 0.0, 2.0]),
                                            seen)


def test_negative_graph_per_dataset_augment(tmp_path):
    train, valid, test = synthetic_rows()
    for augment in ("augment", "original"):
        write_split_folder(tmp_path / "data", "Synth", train, valid, test, augment=augment)
    for augment, wanted in (("augment", lambda r: r <= 1), ("original", lambda r: r < 4)):
        data = dataloader.load_dataset(tmp_path / "data", "Synth", augment, warn=lambda x: None)
        graphs = base.build_graphs(data, "cpu", positives_graph=True)
        rows = signed.negative_graph_rows(graphs, augment)
        got = {(int(data.user_ids[u]), int(data.item_ids[i]))
               for u, i in zip(rows.users.tolist(), rows.items.tolist())}
        assert len(got) == len(rows)
        assert got == {(u, i) for u, i, r in train if wanted(r)}

def test_rejection_sampler_bitmap_and_search_give_the_same_draws(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    U, I = 40, 30
    pairs = torch.randperm(U * I, generator=gen)[:500]
    seen = RowIndex.build(pairs // I, pairs % I, U)
    weights = torch.rand(I, generator=gen) + 0.01
    users = torch.randint(0, U, (64,), generator=gen)
    draws = []
    for bitmap_max in (signed.BITMAP_MAX, 0):  # U x I flags, then the sorted-key search
        monkeypatch.setattr(signed, "BITMAP_MAX", bitmap_max)
        sampler = signed.DegreeSampler(weights, seen)
        assert (sampler.bitmap is None) == (bitmap_max == 0)
        draws.append(sampler(users, 20, torch.Generator().manual_seed(9)))
    assert torch.equal(draws[0], draws[1])
    flags = torch.zeros(U, I, dtype=torch.bool)
    flags[pairs // I, pairs % I] = True
    assert not flags[users.unsqueeze(1), draws[0]].any()  # never an item the user has


def test_pngnn_negative_view_propagates_the_positive_table():
    """The authors' get_embedding: z_n = mean(E2, A_n E1, A_n^2 E1) (E2 only as layer 0);
    --neg_graph_input own: mean(E2, A_n E2, A_n^2 E2). Dense products by hand."""
    torch.manual_seed(0)
    U, I = 5, 6
    pos_adj, neg_adj = _random_adj(U, I, 12, 1), _random_adj(U, I, 8, 2)
    dense = neg_adj.to_dense()
    for neg_input in ("positive", "own"):
        model = PositiveNegativeGCN(U, I, embedding_dim=4, num_layers=2, neg_input=neg_input)
        e1, e2 = model.pos_gcn.embedding.weight, model.neg_gcn.embedding.weight
        source = e1 if neg_input == "positive" else e2
        want = (e2 + dense @ source + dense @ (dense @ source)) / 3
        source_arg = e1 if neg_input == "positive" else None
        torch.testing.assert_close(model.neg_gcn(neg_adj, source_arg), want)
        views = [model.pos_gcn(pos_adj), want]
        fused, alpha = model.eval().fuse(pos_adj, neg_adj)
        torch.testing.assert_close(fused, alpha[:, :1] * views[0] + alpha[:, 1:] * views[1])
