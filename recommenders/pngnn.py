"""PN-GNN (``--model pngnn``; the LLM-PNGNN report's model without its LLM half): a
LightGCN over the positive graph and one over the negative graph (recommenders/signed.py),
fused by attention, trained with Dual-BPR on positive and negative rows and negatives
drawn by item degree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dataloader
import recommenders.augmentation as augmentation
from model import LightGCN, pruned_mean
from recommenders.base import Graphs, Recommender, adam, lambda_reg, setting
from recommenders.signed import (ViewAttention, negative_graph_header, negative_graph_rows,
                                 num_negatives, signed_epoch, signed_prepare)
from runs.config import require

if TYPE_CHECKING:
    from runs.config import Config


class PositiveNegativeGCN(nn.Module):
    """PN-GNN: two embedding tables, one propagated by LightGCN over the positive graph, the
    other by LightGCN over the negative graph (each with its own D^-1/2 A D^-1/2), fused per
    node by ``ViewAttention``."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 num_layers: int = 4):
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.pos_gcn = LightGCN(num_users + num_items, embedding_dim, num_layers)
        self.neg_gcn = LightGCN(num_users + num_items, embedding_dim, num_layers)
        self.attention = ViewAttention(embedding_dim)

    def fuse(self, pos_adj: Tensor, neg_adj: Tensor) -> tuple[Tensor, Tensor]:
        """(Z (U+I, d), alpha (U+I, 2): column 0 the positive view, 1 the negative view)."""
        return self.attention([self.pos_gcn(pos_adj), self.neg_gcn(neg_adj)])

    def forward(self, pos_adj: Tensor, neg_adj: Tensor) -> tuple[Tensor, Tensor]:
        """Final embeddings split into (users U x d, items I x d)."""
        out, _ = self.fuse(pos_adj, neg_adj)
        return out[:self.num_users], out[self.num_users:]


def dual_bpr_loss(obs_scores: Tensor, neg_scores: Tensor, is_pos: Tensor, b: float,
                  prune: tuple[float, str] = (0.0, "high_loss")) -> Tensor:
    """Dual-BPR, mean over rows and sampled items j:

    a positive-graph row (u, i): -log sigmoid(s(u,i) - s(u,j)) = softplus(s(u,j) - s(u,i));
    a negative-graph row (u, k): the order reversed and the observed score scaled by b > 1,
    -log sigmoid(s(u,j) - b s(u,k)) = softplus(b s(u,k) - s(u,j)).

    obs_scores: (B,), neg_scores: (B, n), is_pos: (B,) bool. ``prune`` = (drop, keep): with
    drop > 0, a row's loss is its mean over j and ``pruned_mean`` keeps some rows.
    """
    obs = obs_scores.unsqueeze(1)
    diff = torch.where(is_pos.unsqueeze(1), neg_scores - obs, b * obs - neg_scores)
    if prune[0] > 0:
        return pruned_mean(F.softplus(diff).mean(1), *prune)
    return F.softplus(diff).mean()


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(0.05)
    num_negatives: int = num_negatives(40)
    b: float = setting(2.0, "Dual-BPR scale of a negative-graph row's score (>= 1; 2)")
    augment_file: str | None = augmentation.file_setting()
    augment_mode: str = augmentation.mode_setting("edges")
    augment_weight: float = augmentation.weight_setting()
    prune_drop: float = augmentation.prune_drop_setting()
    prune_keep: str = augmentation.prune_keep_setting()

    def __post_init__(self):
        augmentation.check_settings(self)
        require((self.augment_weight == 1.0, "pngnn: --augment_weight must be 1 (its Dual-BPR "
                                             "rows carry no weights)"))
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
    return dual_bpr_loss(obs_scores, neg_scores, is_pos, config.b,
                         (config.prune_drop, config.prune_keep))


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "pngnn"), ("lambda_reg", config.lambda_reg),
                *negative_graph_header(config), ("b", config.b), *augmentation.header(config)]


RECOMMENDER = Recommender(
    "pngnn", Settings, positives_graph=True, build=build, make_optimizer=adam,
    prepare=signed_prepare, train_epoch=signed_epoch(loss), header=header,
    defaults=lambda dataset: {"learning_rate": 5e-3, "layers": 4},
    transform=augmentation.transform)
