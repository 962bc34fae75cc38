"""ReFINe (``--model refine``): LightGCN on the positive rows; BPR with one negative per
positive drawn from the re-weighted weights (0 on the user's rows in T, gamma on its
confirmed negatives, 1 elsewhere); from epoch t on the weights are re-derived each epoch
from the item-item similarity of the current embeddings (p, q, r, s; docs/baselines.md)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from recommenders.base import (PAPER_DEPTH, Graphs, Recommender, TrainingError, adam,
                               build_gcn, gamma, lambda_reg, setting)
from recommenders.base import GCN_SPACE, log_uniform, uniform  # tune.py
from recommenders.bpr import BPRSampling, bpr_epoch, bpr_sampling, check_candidates
from recommenders.refine_plus import dense_sampling_weights
from runs.config import ConfigError

if TYPE_CHECKING:
    from runs.config import Config


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(1e-4)
    real_neg_samp_prob: float = gamma()
    p: float = setting(1.5, "weight of items similar to a confirmed negative")
    q: float = setting(0.75, "weight of items similar to a positive")
    r: int = setting(100, "similar items per confirmed negative")
    s: int = setting(5, "similar items per positive")
    t: int = setting(50, "first epoch of the similarity re-weighting")

    def __post_init__(self):
        if min(self.p, self.q, self.lambda_reg) < 0 or min(self.r, self.s, self.t) < 1:
            raise ConfigError("--p, --q, --lambda_reg must be >= 0 and --r, --s, --t >= 1")
        if self.real_neg_samp_prob <= 0:
            raise ConfigError("--real_neg_samp_prob must be > 0")


def similarity_sampling_weights(base: Tensor, item_emb: Tensor, pos_users: Tensor,
                                pos_items: Tensor, neg_users: Tensor, neg_items: Tensor,
                                p: float, q: float, r: int, s: int) -> Tensor:
    """ReFINe's re-weighted negative-sampling weights of one epoch (docs/baselines.md).

    S = E_I E_I^T with the diagonal at -inf. Starting from a copy of ``base`` (U x I):
    for every positive (u, i), each of i's top-s similar items j with w_u(j) = 1 gets q;
    then for every confirmed negative (u, i), each of i's top-r similar items j still at
    weight 1 gets p. Both passes only touch entries at weight 1 and q != 1, so this equals
    the sequential loops (tests/test_baselines.py): an entry becomes q if it is at 1 in
    ``base`` and marked by a positive, else p if marked by a negative (with q = 1 the
    positives' marks leave the entry at 1, so a negative may still set it to p).
    """
    sim = item_emb @ item_emb.t()  # (I, I)
    sim.fill_diagonal_(float("-inf"))
    top = sim.topk(max(r, s), dim=1).indices  # (I, max(r, s)), most similar first

    def marked(users: Tensor, items: Tensor, k: int) -> Tensor:
        mask = torch.zeros_like(base, dtype=torch.bool)
        mask[users.repeat_interleave(k), top[items, :k].reshape(-1)] = True
        return mask

    free = base == 1
    by_pos = marked(pos_users, pos_items, s) & free
    still_one = free & ~by_pos if q != 1 else free
    by_neg = marked(neg_users, neg_items, r) & still_one
    weights = base.clone()
    weights[by_pos] = q
    weights[by_neg] = p
    return weights


def prepare(graphs: Graphs, config: Config) -> BPRSampling:
    for flag, k in (("--r", config.settings.r), ("--s", config.settings.s)):
        if k >= graphs.num_items:
            raise TrainingError(f"{flag} {k} similar items need more than the dataset's "
                                f"{graphs.num_items} items; lower {flag}")
    base = bpr_sampling(graphs, dense_sampling_weights(graphs, config.settings.real_neg_samp_prob),
                        "weights are 0 on every item")
    return replace(base, reweight=lambda model, epoch: (
        epoch_weights(model, graphs, config, base) if epoch >= config.settings.t else None))


def epoch_weights(model: nn.Module, graphs: Graphs, config: Config,
                  state: BPRSampling) -> Tensor:
    """ReFINe's sampling weights of one epoch from t on: re-derived from a copy of the base
    weights and the current item embeddings."""
    with torch.no_grad():
        _, item_emb = model(graphs.norm_adj)
        weights = similarity_sampling_weights(
            state.base_weights, item_emb, state.pos_users, state.pos_items, state.neg_users,
            state.neg_items, *(getattr(config.settings, k) for k in "pqrs"))
    check_candidates(weights, torch.unique(state.pos_users), "after re-weighting")
    return weights


def header(config: Config) -> tuple[list, list]:
    """p, q, r, s, t sit in the reference's own block (ReFINe's reference logs them)."""
    return ([("real_negative_sampling_probabilities", config.settings.real_neg_samp_prob),
             *((k, getattr(config.settings, k)) for k in "pqrst")],
            [("model", "refine"), ("lambda_reg", config.settings.lambda_reg)])


# tune.py's ranges (docs/experiments.md): around the defaults, weights in log scale
SEARCH_SPACE = {**GCN_SPACE, "lambda_reg": log_uniform(1e-6, 1e-2),
                "real_neg_samp_prob": uniform(0.5, 3.0), "p": uniform(1.0, 3.0),
                "q": uniform(0.25, 1.0)}

RECOMMENDER = Recommender("refine", Settings, positives_graph=True, build=build_gcn,
                          make_optimizer=adam, prepare=prepare, train_epoch=bpr_epoch,
                          header=header,
                          dataset_defaults={"ML-1M": {"r": 250}, "Netflix-1M": {"r": 300},
                                            **PAPER_DEPTH},
                                            search_space=SEARCH_SPACE)
