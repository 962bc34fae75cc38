"""PN-GNN (``--model pngnn``; the LLM-PNGNN report's model without its LLM half): a
LightGCN over the positive graph and one over the negative graph (recommenders/signed.py),
fused by attention, trained with Dual-BPR on positive and negative rows and negatives
drawn by item degree.

By default it computes what the authors' code computes (hliei/Recommender-System:
``pngnn.py``, ``helper_func.py``, ``main.py``; docs/baselines.md lists each behaviour):
the loss form of ``weighted_bpr_pairs`` summed over the batch, deg(j) over every train
row, attention dropout 0.5, xavier-normal tables, and the negative-graph LightGCN
propagating the POSITIVE table from layer 1 on (``--neg_graph_input positive``). The
earlier readings of the report stay behind ``--neg_form reversed``, ``--degree_rows
positive``, ``--reduction mean``, ``--dropout 0`` and ``--neg_graph_input own``."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dataloader
import recommenders.llm_augmentation as augmentation
from model import LightGCN
from recommenders.base import Graphs, Recommender, adam, lambda_reg, setting, setting_lines
from recommenders.base import LEARNING_RATE, integer, log_uniform, uniform  # tune.py
from recommenders.signed import (ViewAttention, degree_rows, neg_form, negative_graph_header,
                                 negative_graph_rows, num_negatives, reduce_pairs, reduction,
                                 sampler, signed_epoch, signed_prepare, weighted_bpr_pairs)
from runs.config import require

if TYPE_CHECKING:
    from runs.config import Config


class PositiveNegativeGCN(nn.Module):
    """PN-GNN: two embedding tables E1, E2; z_p = LightGCN of E1 over the positive graph,
    z_n = LightGCN over the negative graph (each graph with its own D^-1/2 A D^-1/2), fused
    per node by ``ViewAttention`` (dropout ``dropout`` on its tanh output while training).

    ``neg_input="positive"`` (the authors' ``pngnn.py``, ``get_embedding``): z_n = mean(E2,
    A_n E1, A_n^2 E1, ...) — layer 1 of the negative graph propagates E1, E2 is only its
    layer-0 term. ``"own"``: z_n = mean(E2, A_n E2, ...), the report's description.
    ``init``: "normal" (xavier-normal, the code) or "uniform"."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 num_layers: int = 4, dropout: float = 0.0, neg_input: str = "own",
                 init: str = "uniform"):
        super().__init__()
        self.num_users, self.num_items, self.neg_input = num_users, num_items, neg_input
        self.pos_gcn = LightGCN(num_users + num_items, embedding_dim, num_layers, init=init)
        self.neg_gcn = LightGCN(num_users + num_items, embedding_dim, num_layers, init=init)
        self.attention = ViewAttention(embedding_dim, dropout)

    def fuse(self, pos_adj: Tensor, neg_adj: Tensor) -> tuple[Tensor, Tensor]:
        """(Z (U+I, d), alpha (U+I, 2): column 0 the positive view, 1 the negative view)."""
        source = self.pos_gcn.embedding.weight if self.neg_input == "positive" else None
        return self.attention([self.pos_gcn(pos_adj), self.neg_gcn(neg_adj, source)])

    def forward(self, pos_adj: Tensor, neg_adj: Tensor) -> tuple[Tensor, Tensor]:
        """Final embeddings split into (users U x d, items I x d)."""
        out, _ = self.fuse(pos_adj, neg_adj)
        return out[:self.num_users], out[self.num_users:]


def dual_bpr_loss(obs_scores: Tensor, neg_scores: Tensor, is_pos: Tensor, b: float,
                  form: str = "code", reduction: str = "sum",
                  prune: tuple[float, str] = (0.0, "high_loss")) -> Tensor:
    """Dual-BPR over the batch's rows and their sampled items j (``reduce_pairs``: summed,
    or averaged with ``reduction="mean"``). A positive-graph row (u, i) always gives
    -log sigmoid(s(u,i) - s(u,j)) = softplus(s(u,j) - s(u,i)); a negative-graph row (u, k):

    - ``form="code"`` (the authors' ``pngnn.py``): -log sigmoid(b s(u,k) - s(u,j)), b = 2 —
      the disliked k still above the unobserved j ("positive > negative > no feedback");
    - ``form="reversed"`` (a reading of the report's Eq. 10): the order reversed, the
      observed score scaled by b: -log sigmoid(s(u,j) - b s(u,k)) = softplus(b s(u,k) -
      s(u,j)) — k pushed BELOW the unobserved items.

    obs_scores: (B,), neg_scores: (B, n), is_pos: (B,) bool. ``prune`` = (drop, keep): with
    drop > 0, LLMRec's pruning keeps some rows by their loss (``reduce_pairs``).
    """
    if form == "code":
        pairs = weighted_bpr_pairs(obs_scores, neg_scores, is_pos, b)
    else:
        obs = obs_scores.unsqueeze(1)
        pairs = F.softplus(torch.where(is_pos.unsqueeze(1), neg_scores - obs,
                                       b * obs - neg_scores))
    return reduce_pairs(pairs, reduction, prune)


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(0.05)
    num_negatives: int = num_negatives(40)
    b: float = setting(2.0, "Dual-BPR weight of a negative-graph row's observed score (>= 1)")
    neg_form: str = neg_form("the report's Eq. 10 read as -log sigmoid(s(u,j) - b s(u,k))")
    degree_rows: str = degree_rows()
    reduction: str = reduction()
    sampler: str = sampler()
    dropout: float = setting(0.5, "attention dropout (the authors' code: 0.5; 0: off)")
    neg_graph_input: str = setting(
        "positive", "what the negative graph's layer 1 propagates: the positive table "
                    "(positive; the authors' code) or its own (own; the report)",
        choices=("positive", "own"))
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
                (self.b >= 1, "--b must be >= 1"),
                (0 <= self.dropout < 1, "--dropout must be in [0, 1)"))


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
                                config.layers, config.settings.dropout,
                                config.settings.neg_graph_input, init="normal")
    return WithNegativeGraph(model, neg_adj.to(graphs.norm_adj.device))


def loss(obs_scores: Tensor, neg_scores: Tensor, is_pos: Tensor, config: Config) -> Tensor:
    s = config.settings
    return dual_bpr_loss(obs_scores, neg_scores, is_pos, s.b, s.neg_form, s.reduction,
                         (s.prune_drop, s.prune_keep))


def prepare(graphs: Graphs, config: Config):
    return signed_prepare(graphs, config, augment_rows=config.settings.augment_mode == "rows")


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "pngnn"), *setting_lines(config.settings, "lambda_reg"),
                *negative_graph_header(config),
                *setting_lines(config.settings, "b", "dropout", "neg_graph_input"),
                *augmentation.header(config)]


# tune.py's ranges (docs/experiments.md): around the defaults, weights in log scale
SEARCH_SPACE = {**LEARNING_RATE, "lambda_reg": log_uniform(1e-3, 0.2),
                "num_negatives": integer(10, 80, log=True), "b": uniform(1.0, 4.0),
                "dropout": uniform(0.0, 0.6)}

RECOMMENDER = Recommender(
    "pngnn", Settings, positives_graph=True, build=build, make_optimizer=adam,
    prepare=prepare, train_epoch=signed_epoch(loss), header=header,
    defaults={"learning_rate": 5e-3}, transform=partial(augmentation.transform, negatives=True),
    search_space=SEARCH_SPACE)
