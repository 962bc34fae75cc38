"""The model registry behind ``--model``, and the training step of the two BPR baselines.

- ``refine_plus`` (default): ReFINe++ (SPEC.md §4), model.ReFINePlus + training.train_epoch.
- ``refine``: ReFINe (SPEC.md §7). LightGCN on the positive rows only; BPR with one negative
  per positive drawn from the re-weighted weights (0 on the user's rows in T, gamma on its
  confirmed negatives, 1 elsewhere); from epoch t on the weights are re-derived each epoch
  from the item-item similarity of the current embeddings (p, q, r, s).
- ``lightgcn``: LightGCN (He et al. 2020; SPEC.md §8). The same graph, loss and L2, with
  negatives uniform over the items the user has no training-file row with (positive,
  confirmed negative or neutral: the rows evaluation masks anyway).
- ``pngnn``, ``siren``: a positive and a negative signal fused by attention, Dual-BPR /
  sign-aware BPR with degree-based negatives (signed_models.py).
- ``semantic_neg``: LightGCN with hard negatives by item-text similarity
  (semantic_negatives.py).

Settings whose default depends on the model (``MODEL_DEFAULTS``) are None in Config until
resolved by ``model_defaults``.

Evaluation, early stopping, logging and checkpoints are shared by every model (main.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

import semantic_negatives
import signed_models
import training
from model import (GraphRecommender, ReFINePlus, batch_l2, bpr_loss, categorical_sample,
                   similarity_sampling_weights)
from training import Graphs, TrainingError

if TYPE_CHECKING:
    from main import Config

# learning rate, L2 weight, layers and negatives per row when the flags are not given;
# pngnn/siren: the PN-GNN report's settings (SiReN's public code uses the same lr and L2)
BASE_DEFAULTS = {"learning_rate": 1e-3, "lambda_reg": 1e-4, "num_negatives": 1}
MODEL_DEFAULTS = {
    "pngnn": {"learning_rate": 5e-3, "lambda_reg": 0.05, "layers": 4, "num_negatives": 40},
    "siren": {"learning_rate": 5e-3, "lambda_reg": 0.05, "layers": 4, "num_negatives": 40},
}


def model_defaults(model: str, dataset: str) -> dict:
    """The defaults of the model-dependent settings (layers: 2 on Amazon_Books, else 4,
    unless the model fixes it)."""
    return {**BASE_DEFAULTS, "layers": 2 if dataset == "Amazon_Books" else 4,
            **MODEL_DEFAULTS.get(model, {})}


# r, ReFINe's number of similar items per confirmed negative, as the reference sets it
REFINE_R = {"ML-100K": 100, "ML-1M": 250, "Netflix-1M": 300}
DEFAULT_REFINE_R = 100


@dataclass(frozen=True)
class Recommender:
    """What differs between models; ``prepare`` builds the sampling state once per run."""

    positives_graph: bool  # propagate over the positive rows only (else all of T)
    build: Callable[[Graphs, Config], nn.Module]
    make_optimizer: Callable[[nn.Module, Config], torch.optim.Optimizer]
    prepare: Callable[[Graphs, Config], Any]
    train_epoch: Callable[..., float]  # (model, optimizer, graphs, config, epoch, state) -> loss


# ------------------------------------------------------------------------------ ReFINe++

def _refine_plus_prepare(graphs: Graphs, config: Config):
    n = training.num_negatives(graphs.num_items)
    training.check_sampling_feasible(graphs, n)
    dense_weights = (training.dense_sampling_weights(graphs, config.real_neg_samp_prob)
                     if config.impl == "reference" else None)
    return n, dense_weights


def _refine_plus_epoch(model, optimizer, graphs: Graphs, config: Config, epoch: int, state,
                      shard=None):
    n, dense_weights = state
    # looked up at call time: tests replace training.train_epoch to simulate a crash
    return training.train_epoch(model, optimizer, graphs, config, epoch, n, dense_weights,
                                shard=shard)


def _build_refine_plus(graphs: Graphs, config: Config) -> nn.Module:
    return ReFINePlus(graphs.num_users, graphs.num_items, config.embedding_dim, config.layers,
                      symmetric_backward=config.impl == "fast")


# -------------------------------------------------------------------------- BPR baselines

@dataclass
class BPRSampling:
    """The positive rows a BPR epoch iterates over and the U x I sampling weights."""

    pos_users: Tensor
    pos_items: Tensor
    base_weights: Tensor  # (U, I)
    neg_users: Tensor  # confirmed negatives: ReFINe's re-weighting reads them
    neg_items: Tensor
    reweight_from: int | None  # ReFINe: the epoch t from which weights are re-derived


def _check_candidates(weights: Tensor, users: Tensor, what: str) -> None:
    empty = ~(weights[users] > 0).any(1)
    if empty.any():
        raise TrainingError(f"{int(empty.sum())} user(s) with positives have no item left to "
                            f"sample a negative from ({what})")


def _bpr_sampling(graphs: Graphs, base_weights: Tensor, reweight_from: int | None,
                  what: str) -> BPRSampling:
    is_pos = graphs.is_pos
    users, items = graphs.train.users, graphs.train.items
    state = BPRSampling(users[is_pos], items[is_pos], base_weights, users[~is_pos],
                        items[~is_pos], reweight_from)
    _check_candidates(base_weights, torch.unique(state.pos_users), what)
    return state


def _lightgcn_prepare(graphs: Graphs, config: Config) -> BPRSampling:
    weights = torch.ones(graphs.num_users, graphs.num_items, device=graphs.norm_adj.device)
    owner, cols = graphs.seen_by_user.gather(torch.arange(graphs.num_users,
                                                          device=weights.device))
    weights[owner, cols] = 0.0
    return _bpr_sampling(graphs, weights, None, "every item has a training row")


def _refine_prepare(graphs: Graphs, config: Config) -> BPRSampling:
    for flag, k in (("--r", config.r), ("--s", config.s)):
        if k >= graphs.num_items:
            raise TrainingError(f"{flag} {k} similar items need more than the dataset's "
                                f"{graphs.num_items} items; lower {flag}")
    weights = training.dense_sampling_weights(graphs, config.real_neg_samp_prob)
    return _bpr_sampling(graphs, weights, config.t, "weights are 0 on every item")


def refine_epoch_weights(model: nn.Module, graphs: Graphs, config: Config,
                         state: BPRSampling) -> Tensor:
    """ReFINe's sampling weights of one epoch: re-derived from a copy of the base weights
    and the current item embeddings from epoch t on (SPEC §7); the base weights before."""
    with torch.no_grad():
        _, item_emb = model(graphs.norm_adj)
        weights = similarity_sampling_weights(
            state.base_weights, item_emb, state.pos_users, state.pos_items, state.neg_users,
            state.neg_items, config.p, config.q, config.r, config.s)
    _check_candidates(weights, torch.unique(state.pos_users), "after re-weighting")
    return weights


def bpr_batch_loss(model: nn.Module, graphs: Graphs, users: Tensor, items: Tensor,
                   negatives: Tensor, lambda_reg: float) -> Tensor:
    """L_bpr over the batch's positives (u, i) with their negatives j, plus
    lambda_reg * ||E0[distinct users, items i, items j]||^2 / batch size."""
    e_users, e_items = model(graphs.norm_adj)
    u = e_users[users]  # (B, d)
    pos_scores = (u * e_items[items]).sum(1)
    neg_scores = (u * e_items[negatives]).sum(1)
    U = graphs.num_users
    nodes = torch.unique(torch.cat([users, items + U, negatives + U]))
    return bpr_loss(pos_scores, neg_scores) + batch_l2(model.gcn.embedding.weight[nodes],
                                                       users.numel(), lambda_reg)


def bpr_epoch(model, optimizer, graphs: Graphs, config: Config, epoch: int,
              state: BPRSampling, shard=None) -> float:
    """One pass over the shuffled positive rows in batches; one negative per positive drawn
    from its user's weights. Returns sum(loss_b |B_b|) / sum |B_b|. (Single process only:
    ``shard`` must be None.)"""
    if shard is not None:
        raise TrainingError("the BPR baselines do not train distributed")
    weights = state.base_weights
    if state.reweight_from is not None and epoch >= state.reweight_from:
        weights = refine_epoch_weights(model, graphs, config, state)

    def step_loss(batch: Tensor) -> Tensor:
        users, items = state.pos_users[batch], state.pos_items[batch]
        negatives = categorical_sample(weights[users])  # (B,): one per positive
        return bpr_batch_loss(model, graphs, users, items, negatives, config.lambda_reg)
    return training.minibatch_epoch(optimizer, state.pos_users.numel(), config.batch_size,
                                    epoch, weights.device, step_loss)


def _build_gcn(graphs: Graphs, config: Config) -> nn.Module:
    return GraphRecommender(graphs.num_users, graphs.num_items, config.embedding_dim,
                            config.layers)


def _bpr_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """Adam; the L2 term is part of the loss (it covers the batch's nodes only)."""
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


MODELS: dict[str, Recommender] = {
    "refine_plus": Recommender(False, _build_refine_plus,
                               lambda model, config: training.make_optimizer(model, config),
                               _refine_plus_prepare, _refine_plus_epoch),
    "refine": Recommender(True, _build_gcn, _bpr_optimizer, _refine_prepare, bpr_epoch),
    "lightgcn": Recommender(True, _build_gcn, _bpr_optimizer, _lightgcn_prepare, bpr_epoch),
    "pngnn": Recommender(True, signed_models.build_pngnn, _bpr_optimizer,
                         signed_models.signed_prepare, signed_models.signed_epoch),
    "siren": Recommender(True, signed_models.build_siren, _bpr_optimizer,
                         signed_models.signed_prepare, signed_models.signed_epoch),
    "semantic_neg": Recommender(True, semantic_negatives.build_semantic, _bpr_optimizer,
                                semantic_negatives.semantic_prepare,
                                semantic_negatives.semantic_epoch),
}
