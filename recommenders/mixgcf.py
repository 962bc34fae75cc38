"""MixGCF (``--model mixgcf``; Huang et al. 2021): LightGCN whose negatives are synthesized
from the layer embeddings instead of drawn.

Per training row (u, i+) and each of its K negatives, M candidates are drawn uniformly from
the items u has no train-file row with. Then, with E^(l) the layer-l LightGCN embeddings
(l = 0..L) and one alpha^(l) ~ U(0, 1) per (row, negative, layer):

1. positive mixing: e'^(l)_m = alpha^(l) e_{i+}^(l) + (1 - alpha^(l)) e_m^(l) for each m;
2. hop mixing: per layer the candidate m*_l maximising <q^(l), e'^(l)_m> (q = the pooled
   user embedding, or with ``--pool concat`` u's own layer-l embedding); a choice, not a
   differentiable step;
3. pooling: e_{v-} = pool(e'^(0)_{m*_0}, ..., e'^(L)_{m*_L}), the pool of users and items.

Loss: mean_b log(1 + sum_k exp(<e_u, e_{v-_k}> - <e_u, e_{i+}>)) (K = 1: BPR), plus
lambda (||e_u^(0)||^2 + ||e_{i+}^(0)||^2 + ||layer 0 of each e_{v-}||^2) / 2 / B. Gradients
reach e_{i+} and the chosen candidates through the mixing. Scores at evaluation: the dot
product of pooled embeddings. ``mixgcf_negatives`` is the vectorised form;
``mixgcf_negatives_literal`` (tests) the same per row, negative and layer in Python loops.
The official code drops the last partial batch of an epoch (``--drop_last on``); by default
every row is trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from model import LightGCN, draws_from_cdf
from recommenders.base import Graphs, Recommender, adam, lambda_reg, minibatch_epoch, no_shard, \
    on_off, setting, setting_lines
from recommenders.base import GCN_SPACE, integer, log_uniform  # tune.py
from recommenders.bpr import check_candidates, unseen_weights
from runs.config import require

if TYPE_CHECKING:
    from runs.config import Config

POOLS = ("mean", "sum", "concat", "final")


def pool_layers(layers: Tensor, pool: str) -> Tensor:
    """(..., L+1, d) layer embeddings -> (..., d) (concat: (..., (L+1) d))."""
    if pool == "mean":
        return layers.mean(-2)
    if pool == "sum":
        return layers.sum(-2)
    if pool == "concat":
        return layers.flatten(-2)
    return layers[..., -1, :]


class LayerGCN(LightGCN):
    """LightGCN whose scoring embeddings pool its layers (``--pool``) instead of averaging
    them: (users, items) = pool(E(0..L)) split."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int, num_layers: int,
                 pool: str):
        super().__init__(num_users + num_items, embedding_dim, num_layers)
        self.num_users, self.num_items, self.pool = num_users, num_items, pool

    def forward(self, norm_adj: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled embeddings (users, items), the scoring embeddings."""
        pooled = pool_layers(self.layers(norm_adj), self.pool)
        return pooled[:self.num_users], pooled[self.num_users:]


def mixgcf_negatives(user_layers: Tensor, pos_layers: Tensor, cand_layers: Tensor,
                     alpha: Tensor, pool: str) -> tuple[Tensor, Tensor]:
    """The synthesized negatives. user_layers, pos_layers: (B, L+1, d); cand_layers:
    (B, K, M, L+1, d); alpha: (B, K, L+1). Returns (pooled e_{v-} (B, K, d'), their layer-0
    embeddings (B, K, d))."""
    a = alpha.unsqueeze(2).unsqueeze(-1)  # (B, K, 1, L+1, 1)
    mixed = a * pos_layers[:, None, None] + (1 - a) * cand_layers  # (B, K, M, L+1, d)
    if pool == "concat":
        query = user_layers[:, None, None]  # (B, 1, 1, L+1, d): layer by layer
    else:
        query = pool_layers(user_layers, pool)[:, None, None, None, :]
    scores = (mixed * query).sum(-1)  # (B, K, M, L+1)
    best = scores.detach().argmax(2)  # (B, K, L+1)
    index = best[:, :, None, :, None].expand(-1, -1, 1, -1, mixed.size(-1))
    chosen = mixed.gather(2, index).squeeze(2)  # (B, K, L+1, d)
    return pool_layers(chosen, pool), chosen[:, :, 0]


def mixgcf_negatives_literal(user_layers, pos_layers, cand_layers, alpha, pool):
    """``mixgcf_negatives`` one row, negative and layer at a time (the oracle in tests)."""
    rows, negs = [], []
    for b in range(cand_layers.size(0)):
        per_k, layer0 = [], []
        for k in range(cand_layers.size(1)):
            picked = []
            for layer in range(cand_layers.size(3)):
                q = (user_layers[b, layer] if pool == "concat"
                     else pool_layers(user_layers[b], pool))
                options = [alpha[b, k, layer] * pos_layers[b, layer]
                           + (1 - alpha[b, k, layer]) * cand_layers[b, k, m, layer]
                           for m in range(cand_layers.size(2))]
                best = max(range(len(options)), key=lambda m: float((options[m] @ q).detach()))
                picked.append(options[best])
            chosen = torch.stack(picked)
            per_k.append(pool_layers(chosen, pool))
            layer0.append(chosen[0])
        rows.append(torch.stack(per_k))
        negs.append(torch.stack(layer0))
    return torch.stack(rows), torch.stack(negs)


def mixgcf_loss(user_layers: Tensor, pos_layers: Tensor, cand_layers: Tensor, alpha: Tensor,
                pool: str, weight: float, negatives=mixgcf_negatives) -> Tensor:
    """K-pair loss + L2 of one batch (module docstring)."""
    e_neg, neg0 = negatives(user_layers, pos_layers, cand_layers, alpha, pool)
    e_u, e_pos = pool_layers(user_layers, pool), pool_layers(pos_layers, pool)
    pos_scores = (e_u * e_pos).sum(-1, keepdim=True)  # (B, 1)
    neg_scores = (e_u.unsqueeze(1) * e_neg).sum(-1)  # (B, K)
    diff = neg_scores - pos_scores
    k_pair = torch.logsumexp(F.pad(diff, (1, 0)), 1).mean()  # log(1 + sum_k exp(diff))
    batch = user_layers.size(0)
    l2 = (user_layers[:, 0].pow(2).sum() + pos_layers[:, 0].pow(2).sum()
          + neg0.pow(2).sum()) / 2 / batch
    return k_pair + weight * l2


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(1e-4)
    candidates: int = setting(16, "M, candidates per synthesized negative", type=int)
    num_negatives: int = setting(1, "K, synthesized negatives per row (1: BPR)", type=int)
    pool: str = setting("mean", "layer pooling of users, items and negatives",
                        choices=POOLS)
    drop_last: str = on_off("off", "on: skip each epoch's last partial batch, as the official "
                                   "code does")

    def __post_init__(self):
        require((self.lambda_reg >= 0, "--lambda_reg must be >= 0"),
                (self.candidates is None or self.candidates >= 1, "--candidates must be >= 1"),
                (self.num_negatives >= 1, "--num_negatives must be >= 1"),
                (self.pool in POOLS, f"--pool must be one of {', '.join(POOLS)}"))


@dataclass(frozen=True)
class MixState:
    pos_users: Tensor
    pos_items: Tensor
    cdf: Tensor  # (U, I) float64 cumulative weights: 1 where u has no train-file row, else 0


def prepare(graphs: Graphs, config: Config) -> MixState:
    weights = unseen_weights(graphs)
    users, items = graphs.train.users[graphs.is_pos], graphs.train.items[graphs.is_pos]
    check_candidates(weights, torch.unique(users), "every item has a training row")
    return MixState(users, items, weights.to(torch.float64).cumsum(1))  # built once


def train_epoch(model: LayerGCN, optimizer, graphs: Graphs, config: Config, epoch: int,
                state: MixState, shard=None, progress=None) -> float:
    no_shard(config.model, shard)
    K, M, U = config.settings.num_negatives, config.settings.candidates, graphs.num_users

    def step_loss(batch: Tensor) -> Tensor:
        users, items = state.pos_users[batch], state.pos_items[batch]
        cands = draws_from_cdf(state.cdf, users, K * M).view(-1, K, M)
        layers = model.layers(graphs.norm_adj)  # (U+I, L+1, d)
        alpha = torch.rand(users.numel(), K, layers.size(1), device=layers.device)
        return mixgcf_loss(layers[users], layers[items + U], layers[cands + U], alpha,
                           config.settings.pool, config.settings.lambda_reg)
    return minibatch_epoch(optimizer, state.pos_users.numel(), config.batch_size, epoch,
                           state.cdf.device, step_loss, progress,
                           drop_last=config.settings.drop_last == "on")


def build(graphs: Graphs, config: Config) -> LayerGCN:
    return LayerGCN(graphs.num_users, graphs.num_items, config.embedding_dim, config.layers,
                    config.settings.pool)


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "mixgcf"), *setting_lines(
        config.settings, "lambda_reg", "candidates", "num_negatives", "pool", "drop_last")]


# tune.py's ranges (docs/experiments.md): around the defaults, weights in log scale
SEARCH_SPACE = {**GCN_SPACE, "lambda_reg": log_uniform(1e-6, 1e-2),
                "candidates": integer(4, 64, log=True)}

RECOMMENDER = Recommender("mixgcf", Settings, positives_graph=True, build=build,
                          make_optimizer=adam, prepare=prepare, train_epoch=train_epoch,
                          header=header, defaults={"layers": 3},
                          dataset_defaults={"ML-1M": {"candidates": 32}},
                          search_space=SEARCH_SPACE)
