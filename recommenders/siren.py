"""SiReN (``--model siren``): LightGCN over the positive graph and an MLP over the negative
graph (recommenders/signed.py), fused by attention, trained with the sign-aware BPR (an
observed negative row's score weighs -c_neg) and negatives drawn by item degree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from model import SignAwareGCN, sign_aware_bpr_loss
from recommenders.base import Graphs, Recommender, adam, lambda_reg, setting
from recommenders.signed import negative_graph_header, num_negatives, signed_epoch, signed_prepare
from runs.config import require

if TYPE_CHECKING:
    from runs.config import Config


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(0.05)
    num_negatives: int = num_negatives(40)
    c_neg: float = setting(2.0, "siren: a negative row's observed score weighs -c_neg (2)")
    dropout: float = setting(0.5, "siren: dropout in the MLP and the attention (0.5)")

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
