"""One ReFINe++ training step and epoch (SPEC.md §4): the graphs on the device, the
re-weighted negative sampling, the loss of a batch, the optimizer.

``impl="fast"`` and ``impl="reference"`` compute the same values and updates
(tests/test_oracles.py); the reference path is the slow, obvious one kept for benchmarks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F

import dataloader
from dataloader import Interactions, RecData, RowIndex
from model import (ReFINePlus, ae_terms_dense, ae_terms_sparse, alignment_loss, gumbel_topk,
                   half_l2, multinomial_without_replacement, per_row_scores,
                   sampled_softmax_loss)

if TYPE_CHECKING:
    from main import Config


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, impossible sampling); exit code 2."""


@dataclass(frozen=True)
class Shard:
    """This process's share of every batch under torch.distributed (``torchrun``).

    Every rank draws the same permutation and negatives (same seed, same RNG calls) and
    propagates the whole graph; rank r then computes only its part of each loss term —
    positives lo..hi-1 of the batch for L_ssm (divided by the batch's |P|, not the part's),
    users and items in its id range for the AE and alignment terms — so the parts sum to the
    single-process loss, and summing the gradients over ranks (``sync_gradients``) gives the
    single-process gradient of the same global batch.
    """

    rank: int
    world: int

    def bounds(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous share of n things."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world


@dataclass
class Graphs:
    """The training data in the form the step and the evaluation use, on the run's device."""

    norm_adj: torch.Tensor
    train: Interactions  # T in file order
    is_pos: torch.Tensor
    t_by_user: RowIndex  # items of each user in T (sampling weight 0)
    neg_by_user: RowIndex  # confirmed negatives per user (sampling weight gamma)
    neg_by_item: RowIndex  # confirmed negatives per item (item AE input)
    seen_by_user: RowIndex  # every train-file row (T and neutral): masked in evaluation
    seen_or_valid_by_user: RowIndex
    valid_by_user: RowIndex
    test_by_user: RowIndex
    num_users: int
    num_items: int


def build_graphs(data: RecData, device, positives_graph: bool = False) -> Graphs:
    """``positives_graph``: propagate over the positive rows only (LightGCN, ReFINe);
    otherwise over all of T (ReFINe++). Sampling and evaluation indexes are the same."""
    U, I = data.num_users, data.num_items
    neg, seen = data.negatives, data.train
    seen_users = torch.cat([seen.users, data.neutral.users])
    seen_items = torch.cat([seen.items, data.neutral.items])
    rows = lambda users, items, n: RowIndex.build(users, items, n).to(device)  # noqa: E731
    return Graphs(
        norm_adj=dataloader.build_norm_adj(data.positives if positives_graph else data.train,
                                           U, I).to(device),
        train=data.train.to(device), is_pos=data.train_is_pos.to(device),
        t_by_user=rows(data.train.users, data.train.items, U),
        neg_by_user=rows(neg.users, neg.items, U), neg_by_item=rows(neg.items, neg.users, I),
        seen_by_user=rows(seen_users, seen_items, U),
        seen_or_valid_by_user=rows(torch.cat([seen_users, data.validation.users]),
                                   torch.cat([seen_items, data.validation.items]), U),
        valid_by_user=rows(data.validation.users, data.validation.items, U),
        test_by_user=rows(data.test.users, data.test.items, U),
        num_users=U, num_items=I)


def num_negatives(num_items: int) -> int:
    """n = floor(I / 10) sampled negatives per positive (SPEC §4)."""
    return num_items // 10


def sampling_log_weights(users: torch.Tensor, graphs: Graphs, gamma: float) -> torch.Tensor:
    """log w_u(j) for each given user: -inf on u's items in T, log gamma on u's confirmed
    negatives (set last, as the reference does), 0 elsewhere. (len(users), I)."""
    log_w = torch.zeros(users.numel(), graphs.num_items, device=users.device)
    owner, cols = graphs.t_by_user.gather(users)
    log_w[owner, cols] = float("-inf")
    owner, cols = graphs.neg_by_user.gather(users)
    log_w[owner, cols] = math.log(gamma)
    return log_w


def dense_sampling_weights(graphs: Graphs, gamma: float) -> torch.Tensor:
    """The reference's U x I weight matrix (only the reference implementation uses it)."""
    w = torch.ones(graphs.num_users, graphs.num_items, device=graphs.norm_adj.device)
    w[graphs.train.users, graphs.train.items] = 0.0
    neg = ~graphs.is_pos
    w[graphs.train.users[neg], graphs.train.items[neg]] = gamma
    return w


def check_sampling_feasible(graphs: Graphs, n: int) -> None:
    """Every user with a positive must leave >= n items of non-zero sampling weight."""
    pos_users = torch.unique(graphs.train.users[graphs.is_pos])
    candidates = graphs.num_items - graphs.t_by_user.degree()[pos_users] \
        + graphs.neg_by_user.degree()[pos_users]
    short = candidates < n
    if short.any():
        raise TrainingError(
            f"{int(short.sum())} user(s) leave fewer than n = floor(I/10) = {n} items to sample "
            f"negatives from (fewest: {int(candidates.min())}); this dataset is too dense for "
            f"the sampled softmax")


def draw_negatives(pos_users: torch.Tensor, graphs: Graphs, config: Config, n: int,
                   dense_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Negatives for the batch's positives: (n,) in shared mode, (P, n) in per_user mode.

    shared (reference): the n draws of the batch's SECOND positive's user serve every positive.
    """
    if config.negatives == "shared" and pos_users.numel() < 2:
        raise TrainingError(f"a batch has {pos_users.numel()} positive row(s); --negatives shared "
                            f"needs >= 2 (use --negatives per_user or another --batch_size)")
    if config.impl == "reference":
        drawn = multinomial_without_replacement(dense_weights[pos_users], n)
        return drawn[1] if config.negatives == "shared" else drawn
    if config.negatives == "shared":
        return gumbel_topk(sampling_log_weights(pos_users[1:2], graphs,
                                                config.real_neg_samp_prob), n)[0]
    users, inverse = torch.unique(pos_users, return_inverse=True)
    log_w = sampling_log_weights(users, graphs, config.real_neg_samp_prob)
    return gumbel_topk(log_w[inverse], n)


def ae_inputs(neg_users: torch.Tensor, neg_items: torch.Tensor, graphs: Graphs, ae_input: str):
    """Non-zero rows of the user-AE input X and of the item-AE input X^T for one batch:
    two (rows, owner, cols) triples. ``batch``: X has ones at the batch's confirmed
    negatives only (reference); ``user_negatives``: every confirmed negative of those
    users (and, for the item AE, of those items)."""
    users, user_owner = torch.unique(neg_users, return_inverse=True)
    items, item_owner = torch.unique(neg_items, return_inverse=True)
    if ae_input == "batch":
        return (users, user_owner, neg_items), (items, item_owner, neg_users)
    return ((users, *graphs.neg_by_user.gather(users)),
            (items, *graphs.neg_by_item.gather(items)))


def rows_in_range(rows: torch.Tensor, owner: torch.Tensor, cols: torch.Tensor, lo: int,
                  hi: int):
    """The (rows, owner, cols) triple restricted to the rows with id in [lo, hi)."""
    keep = (rows >= lo) & (rows < hi)
    new_position = torch.cumsum(keep, 0) - 1
    entry = keep[owner]
    return rows[keep], new_position[owner[entry]], cols[entry]


def _dense_rows(rows, owner, cols, num_rows: int, num_cols: int, like) -> torch.Tensor:
    x = like.new_zeros(num_rows, num_cols)
    x[rows[owner], cols] = 1.0
    return x


def ae_parameters(model: ReFINePlus) -> list[torch.nn.Parameter]:
    return [*model.user_ae.parameters(), *model.item_ae.parameters()]


def make_optimizer(model: ReFINePlus, config: Config) -> torch.optim.Optimizer:
    """Adam, lr 1e-3. On the fast path the two L2 terms (λ/2)||θ||² enter as Adam's L2
    weight decay (grad += λθ): the very same gradient, without autograd passes over every
    parameter; and the fused kernel. The reference path keeps them in the loss."""
    if config.impl == "reference":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    groups = [{"params": [model.gcn.embedding.weight], "weight_decay": config.lambda1},
              {"params": ae_parameters(model), "weight_decay": config.lambda2}]
    return torch.optim.Adam(groups, lr=config.learning_rate, fused=True)


def batch_loss(model: ReFINePlus, graphs: Graphs, batch: torch.Tensor, negatives: torch.Tensor,
               config: Config, shard: Shard | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """loss = L_ssm + (λ1/2)||E0||² + L_ae + (λ2/2)||θ_AE||² + L_align for one batch of T rows.

    Returns (the tensor to backpropagate, the loss value to report, |P|).
    ``impl=reference`` computes it as the reference does (E propagated twice, dense U x I
    autoencoder input, L2 in the loss); ``impl=fast`` with one propagation, the sparse AE
    and the L2 gradient left to the optimizer (``make_optimizer``): same value, same
    update (tests/test_oracles.py). ``shard``: this rank's part of the loss (``Shard``).
    """
    users, items = graphs.train.users[batch], graphs.train.items[batch]
    is_pos = graphs.is_pos[batch]
    pos_users, pos_items = users[is_pos], items[is_pos]
    U, I = graphs.num_users, graphs.num_items
    if shard is not None:
        return _shard_loss(model, graphs, users, items, is_pos, negatives, config, shard)

    e_users, e_items = model(graphs.norm_adj)
    pos_scores = (e_users[pos_users] * e_items[pos_items]).sum(1)
    if negatives.dim() == 1:  # shared: (P, d) @ (d, n)
        neg_scores = e_users[pos_users] @ e_items[negatives].t()
    elif config.impl == "reference":  # per user: (P, n), the plain gather
        neg_scores = torch.einsum("pd,pnd->pn", e_users[pos_users], e_items[negatives])
    else:
        neg_scores = per_row_scores(e_users[pos_users], e_items, negatives)
    loss = sampled_softmax_loss(pos_scores, neg_scores)

    user_in, item_in = ae_inputs(users[~is_pos], items[~is_pos], graphs, config.ae_input)
    if config.impl == "reference":
        bce_u, z_users = ae_terms_dense(model.user_ae, _dense_rows(*user_in, U, I, e_users))
        bce_i, z_items = ae_terms_dense(model.item_ae, _dense_rows(*item_in, I, U, e_users))
        e_users, e_items = model(graphs.norm_adj)  # the reference propagates a second time
    else:
        bce_u, z_users = ae_terms_sparse(model.user_ae, *user_in, U)
        bce_i, z_items = ae_terms_sparse(model.item_ae, *item_in, I)
    loss = loss + bce_u + bce_i + alignment_loss(e_users, z_users, e_items, z_items)

    if config.impl == "reference":
        loss = loss + half_l2([model.gcn.embedding.weight], config.lambda1) \
            + half_l2(ae_parameters(model), config.lambda2)
        return loss, loss.detach(), int(pos_users.numel())
    return loss, loss.detach() + _l2_value(model, config), int(pos_users.numel())


def _squared_norm(p: torch.Tensor) -> torch.Tensor:
    flat = p.detach().reshape(-1)
    # BLAS dot: one pass, twice as fast as vector_norm here and closer to the float64 value
    # (ML-1M autoencoders: 4669.377 vs 4669.077, float64 4669.382)
    return torch.dot(flat, flat)


def _l2_value(model: ReFINePlus, config: Config) -> torch.Tensor:
    """(λ1/2)||E0||² + (λ2/2)||θ_AE||², the value only (the gradient is Adam's weight decay)."""
    with torch.no_grad():
        ae = torch.stack([_squared_norm(p) for p in ae_parameters(model)]).sum()
        return config.lambda1 / 2 * _squared_norm(model.gcn.embedding.weight) \
            + config.lambda2 / 2 * ae


def _shard_loss(model: ReFINePlus, graphs: Graphs, users, items, is_pos, negatives,
                config: Config, shard: Shard) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's part of the fast-path batch loss (see ``Shard``); the parts of all ranks
    sum to ``batch_loss`` without a shard. Returns (part, part value, the batch's |P|)."""
    U, I = graphs.num_users, graphs.num_items
    pos_users, pos_items = users[is_pos], items[is_pos]
    num_pos = pos_users.numel()
    e_users, e_items = model(graphs.norm_adj)
    lo, hi = shard.bounds(num_pos)
    loss = e_users.new_zeros(())
    if hi > lo:  # mean over the part, times part/|P|: the part's sum divided by |P|
        u_emb = e_users[pos_users[lo:hi]]
        pos_scores = (u_emb * e_items[pos_items[lo:hi]]).sum(1)
        if negatives.dim() == 1:
            neg_scores = u_emb @ e_items[negatives].t()
        else:
            neg_scores = per_row_scores(u_emb, e_items, negatives[lo:hi])
        loss = sampled_softmax_loss(pos_scores, neg_scores) * ((hi - lo) / num_pos)

    user_in, item_in = ae_inputs(users[~is_pos], items[~is_pos], graphs, config.ae_input)
    (ulo, uhi), (ilo, ihi) = shard.bounds(U), shard.bounds(I)
    bce_u, z_users = ae_terms_sparse(model.user_ae, *rows_in_range(*user_in, ulo, uhi), U,
                                     row_range=(ulo, uhi))
    bce_i, z_items = ae_terms_sparse(model.item_ae, *rows_in_range(*item_in, ilo, ihi), I,
                                     row_range=(ilo, ihi))
    d = e_users.size(1)
    align = F.mse_loss(e_users[ulo:uhi], z_users, reduction="sum") / (U * d) \
        + F.mse_loss(e_items[ilo:ihi], z_items, reduction="sum") / (I * d)
    loss = loss + bce_u + bce_i + align
    value = loss.detach() + _l2_value(model, config) if shard.rank == 0 else loss.detach()
    return loss, value, num_pos


def sync_gradients(model: torch.nn.Module) -> None:
    """Sum every parameter's gradient over the ranks (the loss parts add up, see Shard)."""
    for p in model.parameters():
        if p.grad is None:  # every rank must take part in every all-reduce
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def epoch_loss(losses: list[torch.Tensor], sizes: list[int], epoch: int) -> float:
    """sum(loss_b * size_b) / sum(size_b) over an epoch's batches; a non-finite batch loss
    stops the run, naming the epoch and batch (last.pt still holds the previous epoch)."""
    losses_t = torch.stack(losses)
    finite = torch.isfinite(losses_t)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise TrainingError(f"non-finite loss at epoch {epoch}, batch {bad + 1}; stopped. The "
                            f"last good state is last.pt of epoch {epoch - 1}")
    sizes_t = torch.tensor(sizes, dtype=losses_t.dtype, device=losses_t.device)
    return float((losses_t * sizes_t).sum() / sizes_t.sum())


def minibatch_epoch(optimizer: torch.optim.Optimizer, num_rows: int, batch_size: int,
                    epoch: int, device, step_loss) -> float:
    """The BPR-style epoch: shuffle num_rows rows, then per batch of row indices one
    optimizer step on ``step_loss(batch)``. Returns sum(loss_b |B_b|) / sum |B_b|."""
    perm = torch.randperm(num_rows, device=device)
    losses, sizes = [], []
    for start in range(0, num_rows, batch_size):
        batch = perm[start:start + batch_size]
        loss = step_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        sizes.append(batch.numel())
    return epoch_loss(losses, sizes, epoch)


def train_epoch(model, optimizer, graphs: Graphs, config: Config, epoch: int, n: int,
                dense_weights=None, max_batches: int | None = None,
                shard: Shard | None = None) -> float:
    """One pass over shuffled T in batches; returns sum(loss_b |P_b|) / sum(|P_b|).

    ``max_batches``: stop after that many batches (benchmarks time part of an epoch).
    ``shard``: distributed training; this rank's part of every batch (``Shard``)."""
    perm = torch.randperm(len(graphs.train), device=graphs.norm_adj.device)
    losses, sizes = [], []
    starts = range(0, perm.numel(), config.batch_size)
    for start in starts if max_batches is None else starts[:max_batches]:
        batch = perm[start:start + config.batch_size]
        pos_users = graphs.train.users[batch][graphs.is_pos[batch]]
        if pos_users.numel() == 0:
            continue  # a batch of confirmed negatives only has no L_ssm term to average
        negatives = draw_negatives(pos_users, graphs, config, n, dense_weights)
        loss, value, num_pos = batch_loss(model, graphs, batch, negatives, config, shard)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if shard is not None:
            sync_gradients(model)
        optimizer.step()
        losses.append(value)
        sizes.append(num_pos)
    if shard is not None and losses:  # the epoch's loss values: the sum of the ranks' parts
        losses = torch.stack(losses)
        dist.all_reduce(losses)
        losses = list(losses)
    return epoch_loss(losses, sizes, epoch)
