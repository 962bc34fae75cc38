"""SiReN (``--model siren``): LightGCN over the positive graph and an MLP on a second table
for the negative signal (recommenders/signed.py), fused by attention, trained with the
sign-aware BPR and negatives drawn by item degree.

By default it computes what SiReN's official code computes (cw-seo/SiReN-reco:
``siren.py``, ``util.py``, ``main.py``; docs/baselines.md lists each behaviour): the
loss form of ``weighted_bpr_pairs`` (c = 2) summed over the batch, deg(j) over every
train row, dropout 0.5 in the MLP and the attention, xavier-normal tables and MLP
weights. The earlier reading stays behind ``--neg_form reversed``, ``--degree_rows
positive`` and ``--reduction mean``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import LightGCN
from recommenders.base import Graphs, Recommender, adam, lambda_reg, setting
from recommenders.base import LEARNING_RATE, integer, log_uniform, uniform  # tune.py
from recommenders.signed import (ViewAttention, degree_rows, neg_form, negative_graph_header,
                                 num_negatives, reduce_pairs, reduction, sampler, signed_epoch,
                                 signed_prepare, weighted_bpr_pairs)
from runs.config import require

if TYPE_CHECKING:
    from runs.config import Config


class SignAwareGCN(nn.Module):
    """SiReN: LightGCN over the positive graph on one table; a second table through a
    2-layer MLP (Linear-ReLU-Dropout twice) for the negative signal; ``ViewAttention`` fuses
    the two per node. As in SiReN's public code the MLP reads only its own table: the
    negative rows act through the loss (``sign_aware_bpr_loss``), not through the MLP."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 num_layers: int = 4, dropout: float = 0.5):
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.gcn = LightGCN(num_users + num_items, embedding_dim, num_layers, init="normal")
        self.neg_embedding = nn.Embedding(num_users + num_items, embedding_dim)
        nn.init.xavier_normal_(self.neg_embedding.weight)
        layers = []
        for _ in range(2):
            layers += [nn.Linear(embedding_dim, embedding_dim), nn.ReLU(), nn.Dropout(dropout)]
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
        self.attention = ViewAttention(embedding_dim, dropout)

    def fuse(self, norm_adj: Tensor) -> tuple[Tensor, Tensor]:
        """(Z (U+I, d), alpha (U+I, 2): column 0 the GCN view, 1 the MLP view)."""
        return self.attention([self.gcn(norm_adj), self.mlp(self.neg_embedding.weight)])

    def forward(self, norm_adj: Tensor) -> tuple[Tensor, Tensor]:
        out, _ = self.fuse(norm_adj)
        return out[:self.num_users], out[self.num_users:]


def sign_aware_bpr_loss(obs_scores: Tensor, neg_scores: Tensor, is_pos: Tensor,
                        c_neg: float, form: str = "code", reduction: str = "sum") -> Tensor:
    """Sign-aware BPR over the batch's rows and sampled items j (``reduce_pairs``: summed,
    or averaged with ``reduction="mean"``): -log sigmoid(m s(u,i) - s(u,j)) = softplus(s(u,j)
    - m s(u,i)) with m = +1 on positive rows and, on a negative-signal row,

    - ``form="code"`` (SiReN's ``siren.py``: -sign(w)/2 + 3/2 of w = r - 3.5): m = c_neg = 2,
      the disliked item still above the unobserved j, less strongly;
    - ``form="reversed"`` (the earlier reading of the paper's sign): m = -c_neg.

    obs_scores: (B,), neg_scores: (B, n), is_pos: (B,) bool.
    """
    if form == "code":
        return reduce_pairs(weighted_bpr_pairs(obs_scores, neg_scores, is_pos, c_neg),
                            reduction)
    m = torch.where(is_pos, torch.ones_like(obs_scores), torch.full_like(obs_scores, -c_neg))
    return reduce_pairs(F.softplus(neg_scores - (m * obs_scores).unsqueeze(1)), reduction)


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(0.05)
    num_negatives: int = num_negatives(40)
    c_neg: float = setting(2.0, "a negative row's observed score weighs c_neg (-c_neg "
                                "with --neg_form reversed)")
    neg_form: str = neg_form("-log sigmoid(-c_neg s(u,k) - s(u,j))")
    degree_rows: str = degree_rows()
    reduction: str = reduction()
    sampler: str = sampler()
    dropout: float = setting(0.5, "dropout in the MLP and the attention")

    def __post_init__(self):
        require((self.lambda_reg >= 0, "--lambda_reg must be >= 0"),
                (self.num_negatives >= 1, "--num_negatives must be >= 1"),
                (self.c_neg > 0, "--c_neg must be > 0"),
                (0 <= self.dropout < 1, "--dropout must be in [0, 1)"))


def build(graphs: Graphs, config: Config) -> nn.Module:
    return SignAwareGCN(graphs.num_users, graphs.num_items, config.embedding_dim,
                        config.layers, config.settings.dropout)


def loss(obs_scores: Tensor, neg_scores: Tensor, is_pos: Tensor, config: Config) -> Tensor:
    s = config.settings
    return sign_aware_bpr_loss(obs_scores, neg_scores, is_pos, s.c_neg, s.neg_form, s.reduction)


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "siren"), ("lambda_reg", config.settings.lambda_reg),
                *negative_graph_header(config), ("c_neg", config.settings.c_neg),
                ("dropout", config.settings.dropout)]


# tune.py's ranges (docs/experiments.md): around the defaults, weights in log scale
SEARCH_SPACE = {**LEARNING_RATE, "lambda_reg": log_uniform(1e-3, 0.2),
                "num_negatives": integer(10, 80, log=True), "c_neg": uniform(1.0, 4.0),
                "dropout": uniform(0.0, 0.6)}

RECOMMENDER = Recommender(
    "siren", Settings, positives_graph=True, build=build, make_optimizer=adam,
    prepare=signed_prepare, train_epoch=signed_epoch(loss), header=header,
    defaults={"learning_rate": 5e-3},
    search_space=SEARCH_SPACE)
