"""PN-GNN (``--model pngnn``; the LLM-PNGNN report's model without its LLM half): a
LightGCN over the positive graph and one over the negative graph (recommenders/signed.py),
fused by attention, trained with Dual-BPR on positive and negative rows and negatives
drawn by item degree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

import dataloader
from model import PositiveNegativeGCN, dual_bpr_loss
from recommenders.base import Graphs, Recommender, adam, lambda_reg, setting
from recommenders.signed import (negative_graph_header, negative_graph_rows, num_negatives,
                                 signed_epoch, signed_prepare)
from runs.config import require

if TYPE_CHECKING:
    from runs.config import Config


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(0.05)
    num_negatives: int = num_negatives(40)
    b: float = setting(2.0, "pngnn: Dual-BPR scale of a negative-graph row's score (>= 1; 2)")

    def __post_init__(self):
        require((self.lambda_reg >= 0, "--lambda_reg must be >= 0"),
                (self.num_negatives >= 1, "--num_negatives must be >= 1"),
                (self.b >= 1, "--b must be >= 1"))


class WithNegativeGraph(nn.Module):
    """PN-GNN bound to its negative-graph adjacency, so that ``model(norm_adj)`` (the
    positive graph) gives (users, items) as for every model. The adjacency is a plain
    attribute, not a buffer: checkpoints hold parameters only."""

    def __init__(self, model: PositiveNegativeGCN, neg_adj: Tensor):
        super().__init__()
        self.model, self.neg_adj = model, neg_adj

    def forward(self, norm_adj: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(norm_adj, self.neg_adj)


def build(graphs: Graphs, config: Config) -> nn.Module:
    neg = negative_graph_rows(graphs, config.dataset_augment)
    neg_adj = dataloader.build_norm_adj(neg, graphs.num_users, graphs.num_items)
    model = PositiveNegativeGCN(graphs.num_users, graphs.num_items, config.embedding_dim,
                                config.layers)
    return WithNegativeGraph(model, neg_adj.to(graphs.norm_adj.device))


def loss(obs_scores: Tensor, neg_scores: Tensor, is_pos: Tensor, config: Config) -> Tensor:
    return dual_bpr_loss(obs_scores, neg_scores, is_pos, config.b)


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "pngnn"), ("lambda_reg", config.lambda_reg),
                *negative_graph_header(config), ("b", config.b)]


RECOMMENDER = Recommender(
    "pngnn", Settings, positives_graph=True, build=build, make_optimizer=adam,
    prepare=signed_prepare, train_epoch=signed_epoch(loss), header=header,
    defaults=lambda dataset: {"learning_rate": 5e-3, "layers": 4})
