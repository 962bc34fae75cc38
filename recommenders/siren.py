"""SiReN (``--model siren``): LightGCN over the positive graph and an MLP over the negative
graph (recommenders/signed.py), fused by attention, trained with the sign-aware BPR (an
observed negative row's score weighs -c_neg) and negatives drawn by item degree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import LightGCN
from recommenders.base import Graphs, Recommender, adam, lambda_reg, setting
from recommenders.signed import (ViewAttention, negative_graph_header, num_negatives,
                                 signed_epoch, signed_prepare)
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
        self.gcn = LightGCN(num_users + num_items, embedding_dim, num_layers)
        self.neg_embedding = nn.Embedding(num_users + num_items, embedding_dim)
        nn.init.xavier_uniform_(self.neg_embedding.weight)
        layers = []
        for _ in range(2):
            layers += [nn.Linear(embedding_dim, embedding_dim), nn.ReLU(), nn.Dropout(dropout)]
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
        self.attention = ViewAttention(embedding_dim, dropout)

    def fuse(self, norm_adj: Tensor) -> tuple[Tensor, Tensor]:
        """(Z (U+I, d), alpha (U+I, 2): column 0 the GCN view, 1 the MLP view)."""
        return self.attention([self.gcn(norm_adj), self.mlp(self.neg_embedding.weight)])

    def forward(self, norm_adj: Tensor) -> tuple[Tensor, Tensor]:
        out, _ = self.fuse(norm_adj)
        return out[:self.num_users], out[self.num_users:]


def sign_aware_bpr_loss(obs_scores: Tensor, neg_scores: Tensor, is_pos: Tensor,
                        c_neg: float) -> Tensor:
    """Sign-aware BPR, mean over rows and sampled items j:
    -log sigmoid(m s(u,i) - s(u,j)) = softplus(s(u,j) - m s(u,i)), with the observed-score
    weight m = +1 on positive rows and m = -c_neg on negative-signal rows (c_neg = 1 is
    sign(r - threshold), SiReN's public code).

    obs_scores: (B,), neg_scores: (B, n), is_pos: (B,) bool.
    """
    m = torch.where(is_pos, torch.ones_like(obs_scores), torch.full_like(obs_scores, -c_neg))
    return F.softplus(neg_scores - (m * obs_scores).unsqueeze(1)).mean()


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(0.05)
    num_negatives: int = num_negatives(40)
    c_neg: float = setting(2.0, "a negative row's observed score weighs -c_neg (2)")
    dropout: float = setting(0.5, "dropout in the MLP and the attention (0.5)")

    def __post_init__(self):
        require((self.lambda_reg >= 0, "--lambda_reg must be >= 0"),
                (self.num_negatives >= 1, "--num_negatives must be >= 1"),
                (self.c_neg > 0, "--c_neg must be > 0"),
                (0 <= self.dropout < 1, "--dropout must be in [0, 1)"))


def build(graphs: Graphs, config: Config) -> nn.Module:
    return SignAwareGCN(graphs.num_users, graphs.num_items, config.embedding_dim,
                        config.layers, config.dropout)


def loss(obs_scores: Tensor, neg_scores: Tensor, is_pos: Tensor, config: Config) -> Tensor:
    return sign_aware_bpr_loss(obs_scores, neg_scores, is_pos, config.c_neg)


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "siren"), ("lambda_reg", config.lambda_reg),
                *negative_graph_header(config), ("c_neg", config.c_neg),
                ("dropout", config.dropout)]


RECOMMENDER = Recommender(
    "siren", Settings, positives_graph=True, build=build, make_optimizer=adam,
    prepare=signed_prepare, train_epoch=signed_epoch(loss), header=header,
    defaults=lambda dataset: {"learning_rate": 5e-3, "layers": 4})
