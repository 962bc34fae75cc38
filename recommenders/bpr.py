"""The BPR training shared by LightGCN and ReFINe: one negative per positive row, drawn
from per-user sampling weights, and BPR + L2 over the batch's nodes (He et al. 2020)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import batch_l2, bpr_loss, categorical_sample, pruned_mean
from recommenders.llm_augmentation import HARD_NEGATIVE_RATE, sample_rows
from recommenders.base import Graphs, TrainingError, minibatch_epoch, no_shard

if TYPE_CHECKING:
    from runs.config import Config


@dataclass(frozen=True)
class BPRSampling:
    """The positive rows a BPR epoch iterates over and the U x I sampling weights, built
    once per run; ``reweight(model, epoch)`` gives the weights of an epoch (None:
    ``base_weights``)."""

    pos_users: Tensor
    pos_items: Tensor
    base_weights: Tensor  # (U, I)
    neg_users: Tensor  # confirmed negatives: ReFINe's re-weighting reads them
    neg_items: Tensor
    reweight: Callable[[nn.Module, int], Tensor | None] | None = None
    augment_rows: object = None  # rows mode: the triples batches draw extra rows from
    augment_weight: float = 1.0
    hard_negative: Tensor | None = None  # edges mode: (U,) the LLM's i- per user, -1: none
    prune: tuple[float, str] = (0.0, "high_loss")  # LLMRec's pruning (drop, keep); 0: off


def unseen_weights(graphs: Graphs) -> Tensor:
    """(U, I) sampling weights: 1 where the user has no train-file row with the item
    (positive, confirmed negative or neutral), 0 where it has one."""
    weights = torch.ones(graphs.num_users, graphs.num_items, device=graphs.norm_adj.device)
    owner, cols = graphs.seen_by_user.gather(torch.arange(graphs.num_users,
                                                          device=weights.device))
    weights[owner, cols] = 0.0
    return weights


def check_candidates(weights: Tensor, users: Tensor, what: str) -> None:
    empty = ~(weights[users] > 0).any(1)
    if empty.any():
        raise TrainingError(f"{int(empty.sum())} user(s) with positives have no item left to "
                            f"sample a negative from ({what})")


def bpr_sampling(graphs: Graphs, base_weights: Tensor, what: str, **extra) -> BPRSampling:
    """The sampling state of T's positive rows; ``extra``: BPRSampling's optional fields.
    TrainingError (naming ``what`` the weights are) when a user has nothing to draw."""
    is_pos = graphs.is_pos
    users, items = graphs.train.users, graphs.train.items
    state = BPRSampling(users[is_pos], items[is_pos], base_weights, users[~is_pos],
                        items[~is_pos], **extra)
    check_candidates(base_weights, torch.unique(state.pos_users), what)
    return state


def bpr_batch_loss(model: nn.Module, graphs: Graphs, users: Tensor, items: Tensor,
                   negatives: Tensor, lambda_reg: float, row_weight: Tensor | None = None,
                   prune: tuple[float, str] = (0.0, "high_loss")) -> Tensor:
    """L_bpr over the batch's positives (u, i) with their negatives j, plus
    lambda_reg * ||E0[distinct users, items i, items j]||^2 / batch size. ``row_weight``:
    each row's weight in sum(w_b l_b) / B (None: the plain mean). ``prune`` = (drop, keep):
    with drop > 0 the BPR part averages only the rows ``pruned_mean`` keeps (the L2 part
    is unchanged)."""
    e_users, e_items = model(graphs.norm_adj)
    u = e_users[users]  # (B, d)
    pos_scores = (u * e_items[items]).sum(1)
    neg_scores = (u * e_items[negatives]).sum(1)
    U = graphs.num_users
    nodes = torch.unique(torch.cat([users, items + U, negatives + U]))
    l2 = batch_l2(model.gcn.embedding.weight[nodes], users.numel(), lambda_reg)
    if prune[0] > 0:
        return pruned_mean(F.softplus(neg_scores - pos_scores), *prune, row_weight) + l2
    if row_weight is None:
        return bpr_loss(pos_scores, neg_scores) + l2
    return (row_weight * F.softplus(neg_scores - pos_scores)).sum() / users.numel() + l2


def bpr_epoch(model, optimizer, graphs: Graphs, config: Config, epoch: int,
              state: BPRSampling, shard=None, progress=None) -> float:
    """One pass over the shuffled positive rows in batches; one negative per positive drawn
    from its user's weights. Returns sum(loss_b |B_b|) / sum |B_b| (single process)."""
    no_shard(config.model, shard)
    weights = state.reweight(model, epoch) if state.reweight is not None else None
    weights = state.base_weights if weights is None else weights

    def step_loss(batch: Tensor) -> Tensor:
        users, items = state.pos_users[batch], state.pos_items[batch]
        negatives = categorical_sample(weights[users])  # (B,): one per positive
        if state.hard_negative is not None:  # edges mode: sometimes the LLM's i-
            hard = state.hard_negative[users]
            use = (hard >= 0) & (torch.rand(users.shape, device=users.device)
                                 < HARD_NEGATIVE_RATE)
            negatives = torch.where(use, hard, negatives)
        extra = sample_rows(state.augment_rows, batch.numel(), users.device)
        if extra is None:
            return bpr_batch_loss(model, graphs, users, items, negatives,
                                  config.settings.lambda_reg, prune=state.prune)
        row_weight = torch.cat([torch.ones(users.numel(), device=users.device),
                                torch.full((len(extra),), state.augment_weight,
                                           device=users.device)])
        return bpr_batch_loss(model, graphs, torch.cat([users, extra.users]),
                              torch.cat([items, extra.pos]), torch.cat([negatives, extra.neg]),
                              config.settings.lambda_reg, row_weight, state.prune)
    return minibatch_epoch(optimizer, state.pos_users.numel(), config.batch_size, epoch,
                           weights.device, step_loss, progress)
