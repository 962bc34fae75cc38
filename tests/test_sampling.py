"""Negative sampling: Gumbel-top-k draws the same distribution as torch.multinomial without
replacement (a statistical test with a fixed seed and a tolerance that a wrong sampler
fails), and the sampling weights of docs/method.md (0 on T, gamma on confirmed negatives)."""
from __future__ import annotations

import math

import pytest
import torch

from recommenders import base, make_config, refine_plus
from conftest import write_split_folder
from dataloader import load_dataset
from model import gumbel_topk, multinomial_without_replacement

WEIGHTS = torch.tensor([0.0, 1.0, 1.0, 1.5, 4.0, 0.5, 1.0, 0.0, 2.0])
DRAWS, N = 20000, 3
TOLERANCE = 0.015  # ~5 standard errors of a frequency near 0.5 with 20,000 draws


def frequencies(samples: torch.Tensor, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """P(item in the sample) and P(item drawn first)."""
    inclusion = torch.zeros(num_items).index_add_(0, samples.flatten(),
                                                  torch.ones(samples.numel())) / samples.size(0)
    first = torch.bincount(samples[:, 0], minlength=num_items).float() / samples.size(0)
    return inclusion, first


def ordered_gumbel(log_w: torch.Tensor, n: int) -> torch.Tensor:
    """Gumbel-top-k with sorted output, so column 0 is the first draw."""
    keys = log_w - torch.log(-torch.log(torch.rand(log_w.shape)))
    return keys.topk(n, dim=-1, sorted=True).indices


def test_gumbel_topk_matches_multinomial_without_replacement():
    g = torch.Generator().manual_seed(2024)
    log_w = WEIGHTS.log().expand(DRAWS, -1)
    ours = gumbel_topk(log_w, N, generator=g)
    reference = multinomial_without_replacement(WEIGHTS.expand(DRAWS, -1), N, generator=g)
    inc_ours, _ = frequencies(ours, len(WEIGHTS))
    inc_ref, first_ref = frequencies(reference, len(WEIGHTS))
    assert (inc_ours - inc_ref).abs().max() < TOLERANCE
    # zero-weight items are never drawn, and draws within a row are distinct
    assert inc_ours[WEIGHTS == 0].sum() == 0
    assert all(len(set(row.tolist())) == N for row in ours[:500])
    # the first draw follows w / sum(w), as sequential sampling does
    torch.manual_seed(2024)
    _, first_ours = frequencies(ordered_gumbel(log_w, N), len(WEIGHTS))
    assert (first_ours - WEIGHTS / WEIGHTS.sum()).abs().max() < TOLERANCE
    assert (first_ref - WEIGHTS / WEIGHTS.sum()).abs().max() < TOLERANCE


def test_gumbel_topk_equals_the_plain_formula_bit_for_bit():
    """The in-place key computation gives the very draws of log_w - log(-log u)."""
    log_w = torch.zeros(64, 500)
    log_w[:, ::7] = math.log(1.5)
    log_w[:, ::11] = float("-inf")
    ours = gumbel_topk(log_w, 50, generator=torch.Generator().manual_seed(5))
    u = torch.rand(log_w.shape, generator=torch.Generator().manual_seed(5))
    plain = log_w + -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
    assert torch.equal(ours, plain.topk(50, dim=-1, sorted=False).indices)
    assert (ours % 11 != 0).all()  # zero-weight items are never drawn


def test_the_tolerance_can_fail():
    """A plausible wrong sampler (top-k of weights times uniform noise) is caught."""
    g = torch.Generator().manual_seed(2024)
    wrong = (WEIGHTS * torch.rand(DRAWS, len(WEIGHTS), generator=g)).topk(N, dim=1).indices
    reference = multinomial_without_replacement(WEIGHTS.expand(DRAWS, -1), N, generator=g)
    gap = (frequencies(wrong, len(WEIGHTS))[0] - frequencies(reference, len(WEIGHTS))[0])
    assert gap.abs().max() > TOLERANCE


@pytest.fixture
def tiny(tmp_path):
    # users a, b, c; items 1..24. a: positives 1-4, confirmed negatives 5 (0.5) and 6 (1),
    # neutral 7 (3; a positive of c). b and c: positives.
    train = [("a", i, 5) for i in (1, 2, 3, 4)] + [("a", 5, 0.5), ("a", 6, 1), ("a", 7, 3)]
    train += [("b", i, 4) for i in range(8, 25)] + [("c", i, 4.5) for i in (1, 7, 9, 10)]
    write_split_folder(tmp_path, "Tiny", train, [("a", 8, 5)], [("b", 1, 4)])
    data = load_dataset(tmp_path, "Tiny", "augment")
    return data, base.build_graphs(data, "cpu")


def test_sampling_log_weights_follow_spec(tiny):
    data, graphs = tiny
    item = {str(v): k for k, v in enumerate(data.item_ids)}
    log_w = refine_plus.sampling_log_weights(torch.tensor([0]), graphs, 1.5)[0]  # user "a"
    for i in (1, 2, 3, 4):
        assert log_w[item[str(i)]] == float("-inf")  # positives in T: weight 0
    for i in (5, 6):
        assert log_w[item[str(i)]] == pytest.approx(math.log(1.5))  # confirmed negatives
    assert log_w[item["7"]] == 0.0  # neutral: weight 1
    assert log_w[item["20"]] == 0.0


def test_shared_negatives_come_from_the_second_positive(tiny):
    data, graphs = tiny
    config = make_config(dataset="Tiny")
    # second positive belongs to user b (index 1): b's 17 training items are never drawn
    pos_users = torch.tensor([0, 1, 2, 0])
    b_items = set(graphs.t_by_user.indices[graphs.t_by_user.indptr[1]:graphs.t_by_user.indptr[2]]
                  .tolist())
    for _ in range(50):
        negs = refine_plus.draw_negatives(pos_users, graphs, 2, config.settings.real_neg_samp_prob,
        config.settings.negatives == "shared")
        assert negs.shape == (2,) and not (set(negs.tolist()) & b_items)
    per_user = refine_plus.draw_negatives(pos_users, graphs, 2, 1.5, shared=False)
    assert per_user.shape == (4, 2)


def test_shared_mode_needs_two_positives(tiny):
    _, graphs = tiny
    with pytest.raises(base.TrainingError, match="needs >= 2"):
        refine_plus.draw_negatives(torch.tensor([0]), graphs, 2, 1.5, shared=True)


def test_too_few_candidates_is_reported(tiny):
    _, graphs = tiny
    # user b has 17 of the 24 items in T: 7 candidates < n = 8
    with pytest.raises(base.TrainingError, match="fewer than n"):
        refine_plus.check_sampling_feasible(graphs, 8)
    refine_plus.check_sampling_feasible(graphs, 7)
