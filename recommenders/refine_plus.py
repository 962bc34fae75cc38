"""ReFINe++ (``--model refine_plus``, the default): its settings, sampling, batch loss,
optimizer and epoch. The model (LightGCN over all of T plus the two dispreference
autoencoders) and the loss terms are in model.py; docs/method.md explains the method.

Each batch of T draws n = floor(I/10) negatives per positive from the re-weighted weights
(0 on the user's rows in T, gamma on its confirmed negatives, 1 elsewhere) and minimises
L = L_ssm + (λ1/2)||E0||² + L_ae + (λ2/2)||θ_AE||² + L_align. ``--impl fast`` / ``reference``:
the same values and updates (tests/test_oracles.py), the second the slow, obvious one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F

from model import (ReFINePlus, ae_terms_dense, ae_terms_sparse, alignment_loss, gumbel_topk,
                   half_l2, multinomial_without_replacement, per_row_scores,
                   sampled_softmax_loss)
from recommenders.base import (GCN_SPACE, PAPER_DEPTH, Graphs, Recommender, TrainingError,
                               batches, epoch_loss, gamma, log_uniform, on_off, setting, uniform)
from recommenders.compiled import EAGER, LossKernels, make_kernels
from runs.config import ConfigError, require

if TYPE_CHECKING:
    from runs.config import Config
    from runs.distributed import Shard


@dataclass
class Settings:
    """ReFINe++'s own flags (the reference's defaults)."""

    negatives: str = setting("shared", "shared: the batch's 2nd positive's draws for all "
                             "(the reference); per_user: each positive its own user's",
                             choices=("shared", "per_user"))
    ae_input: str = setting("batch", "AE input: the batch's confirmed negatives (the "
                            "reference) or every confirmed negative of the users/items involved",
                            choices=("batch", "user_negatives"))
    lambda1: float = setting(1e-7, "L2 weight on the embedding table")
    lambda2: float = setting(1e-5, "L2 weight on the autoencoders")
    impl: str = setting("fast", "fast or the reference-equivalent slow path "
                        "(benchmarks, oracles)", choices=("fast", "reference"))
    compile: str = on_off("off", "fast path: torch.compile the loss's elementwise parts "
                          "(needs a C++ compiler on CPU; falls back to eager): on/off")
    real_neg_samp_prob: float = gamma()

    def __post_init__(self):
        require((self.lambda1 >= 0 and self.lambda2 >= 0, "--lambda1 and --lambda2 must be >= 0"),
                (self.real_neg_samp_prob > 0, "--real_neg_samp_prob must be > 0"),
                *((getattr(self, name) in allowed, f"--{name} must be {' or '.join(allowed)}")
                  for name, allowed in (("negatives", ("shared", "per_user")),
                                        ("ae_input", ("batch", "user_negatives")),
                                        ("impl", ("fast", "reference")),
                                        ("compile", ("on", "off")))))


def check(config: Config) -> None:
    if config.settings.compile == "on" and config.settings.impl == "reference":
        raise ConfigError("--compile on compiles the fast path; --impl reference runs eagerly")
    if config.settings.negatives == "shared" and config.batch_size < 2:
        raise ConfigError(f"--batch_size {config.batch_size}: --negatives shared needs >= 2 "
                          f"positives per batch; use a larger --batch_size or --negatives "
                          f"per_user")


def distributed(settings: Settings) -> str | None:
    """Why these settings cannot train under torchrun (None: they can)."""
    return None if settings.impl == "fast" else "torchrun (distributed) training needs --impl fast"


def header(config: Config) -> tuple[list, list]:
    return [("real_negative_sampling_probabilities", config.settings.real_neg_samp_prob)], [
                ("model", "refine_plus"), ("negatives", config.settings.negatives),
                ("ae_input", config.settings.ae_input), ("lambda1", config.settings.lambda1),
                ("lambda2", config.settings.lambda2), ("impl", config.settings.impl),
                *([("compile", "on")] if config.settings.compile == "on" else [])]


# --------------------------------------------------------------------------- sampling

def num_negatives(num_items: int) -> int:
    """n = floor(I / 10) sampled negatives per positive (docs/method.md)."""
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
    """n >= 1 (else L_ssm = 0); every user with a positive leaves >= n items of weight > 0."""
    if n < 1:
        raise TrainingError(f"the dataset has {graphs.num_items} items: n = floor(I/10) = {n} "
                            f"negatives, L_ssm would be 0; ReFINe++ needs >= 10 items")
    pos_users = torch.unique(graphs.train.users[graphs.is_pos])
    candidates = graphs.num_items - graphs.t_by_user.degree()[pos_users] \
        + graphs.neg_by_user.degree()[pos_users]
    short = candidates < n
    if short.any():
        raise TrainingError(
            f"{int(short.sum())} user(s) leave fewer than n = floor(I/10) = {n} items to sample "
            f"negatives from (fewest: {int(candidates.min())}); this dataset is too dense for "
            f"the sampled softmax")


def draw_negatives(pos_users: torch.Tensor, graphs: Graphs, n: int, gamma: float,
                   shared: bool) -> torch.Tensor:
    """Negatives for the batch's positives by Gumbel top-n over the sparse log-weights:
    (n,) when ``shared`` — the n draws of the batch's SECOND positive's user serve every
    positive, as in the reference — else (P, n), each positive from its own user's."""
    if shared:
        _check_shared(pos_users)
        return gumbel_topk(sampling_log_weights(pos_users[1:2], graphs, gamma), n)[0]
    users, inverse = torch.unique(pos_users, return_inverse=True)
    return gumbel_topk(sampling_log_weights(users, graphs, gamma)[inverse], n)


def draw_negatives_reference(pos_users: torch.Tensor, dense_weights: torch.Tensor, n: int,
                             shared: bool) -> torch.Tensor:
    """The same draws as the reference makes them: multinomial rows of the U x I weights."""
    if shared:
        _check_shared(pos_users)
    drawn = multinomial_without_replacement(dense_weights[pos_users], n)
    return drawn[1] if shared else drawn


def _check_shared(pos_users: torch.Tensor) -> None:
    if pos_users.numel() < 2:
        raise TrainingError(f"a batch has {pos_users.numel()} positive row(s); --negatives shared "
                            f"needs >= 2 (use --negatives per_user or another --batch_size)")


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
    """Adam. On the fast path the two L2 terms (λ/2)||θ||² enter as Adam's L2 weight decay
    (grad += λθ): the very same gradient, without autograd passes over every parameter; and
    the fused kernel. The reference path keeps them in the loss."""
    if config.settings.impl == "reference":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    groups = [{"params": [model.gcn.embedding.weight], "weight_decay": config.settings.lambda1},
              {"params": ae_parameters(model), "weight_decay": config.settings.lambda2}]
    return torch.optim.Adam(groups, lr=config.learning_rate, fused=True)


def batch_loss(model: ReFINePlus, graphs: Graphs, batch: torch.Tensor, negatives: torch.Tensor,
               settings: Settings, shard: Shard | None = None, kernels: LossKernels = EAGER
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """loss = L_ssm + L_ae + L_align of one batch of T rows with one propagation and the
    sparse AE; the L2 terms' gradient is Adam's weight decay (``make_optimizer``), their
    value is added to the reported loss. Returns (the tensor to backpropagate, the loss
    value to report, |P|). ``shard``: this rank's part of the loss (``Shard``);
    ``kernels``: the elementwise parts, eager or compiled (recommenders/compiled.py)."""
    users, items = graphs.train.users[batch], graphs.train.items[batch]
    is_pos = graphs.is_pos[batch]
    if shard is not None:
        return _shard_loss(model, graphs, users, items, is_pos, negatives, settings, shard,
                           kernels)
    pos_users, pos_items = users[is_pos], items[is_pos]
    e_users, e_items = model(graphs.norm_adj)
    # two gathers of the users' rows, so their gradients reach E in the same two sums as
    # ever (one shared gather would round differently: runs would not repeat bit for bit)
    pos_scores, neg_scores = _scores(e_users[pos_users], e_users[pos_users], e_items, pos_items,
                                     negatives)
    user_in, item_in = ae_inputs(users[~is_pos], items[~is_pos], graphs, settings.ae_input)
    bce_u, z_users = ae_terms_sparse(model.user_ae, *user_in, graphs.num_users,
                                     kernels=kernels.bce)
    bce_i, z_items = ae_terms_sparse(model.item_ae, *item_in, graphs.num_items,
                                     kernels=kernels.bce)
    loss = kernels.sampled_softmax(pos_scores, neg_scores) + bce_u + bce_i \
        + kernels.alignment(e_users, z_users, e_items, z_items)
    return loss, loss.detach() + _l2_value(model, settings), int(pos_users.numel())


def _scores(u_pos: torch.Tensor, u_neg: torch.Tensor, e_items: torch.Tensor,
            pos_items: torch.Tensor, negatives: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(s(u_p, i_p) (P,), s(u_p, j) (P, n)) of the fast path from the positives' user rows
    (``u_pos``, ``u_neg``: the same values, gathered once or twice): shared negatives (n,)
    by one (P, d) @ (d, n) product, per-user ones (P, n) by one GEMM and a gather."""
    pos_scores = (u_pos * e_items[pos_items]).sum(1)
    if negatives.dim() == 1:
        return pos_scores, u_neg @ e_items[negatives].t()
    return pos_scores, per_row_scores(u_neg, e_items, negatives)


def batch_loss_reference(model: ReFINePlus, graphs: Graphs, batch: torch.Tensor,
                         negatives: torch.Tensor, settings: Settings
                         ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The same loss as the reference computes it: E propagated twice, a dense U x I
    autoencoder input, the plain gather of the negatives' embeddings, L2 in the loss."""
    users, items = graphs.train.users[batch], graphs.train.items[batch]
    is_pos = graphs.is_pos[batch]
    pos_users, pos_items = users[is_pos], items[is_pos]
    U, I = graphs.num_users, graphs.num_items
    e_users, e_items = model(graphs.norm_adj)
    pos_scores = (e_users[pos_users] * e_items[pos_items]).sum(1)
    if negatives.dim() == 1:
        neg_scores = e_users[pos_users] @ e_items[negatives].t()
    else:
        neg_scores = torch.einsum("pd,pnd->pn", e_users[pos_users], e_items[negatives])
    loss = sampled_softmax_loss(pos_scores, neg_scores)
    user_in, item_in = ae_inputs(users[~is_pos], items[~is_pos], graphs, settings.ae_input)
    bce_u, z_users = ae_terms_dense(model.user_ae, _dense_rows(*user_in, U, I, e_users))
    bce_i, z_items = ae_terms_dense(model.item_ae, _dense_rows(*item_in, I, U, e_users))
    e_users, e_items = model(graphs.norm_adj)  # the reference propagates a second time
    loss = loss + bce_u + bce_i + alignment_loss(e_users, z_users, e_items, z_items) \
        + half_l2([model.gcn.embedding.weight], settings.lambda1) \
        + half_l2(ae_parameters(model), settings.lambda2)
    return loss, loss.detach(), int(pos_users.numel())


def _squared_norm(p: torch.Tensor) -> torch.Tensor:
    flat = p.detach().reshape(-1)
    # BLAS dot: one pass, twice as fast as vector_norm here and closer to the float64 value
    # (ML-1M autoencoders: 4669.377 vs 4669.077, float64 4669.382)
    return torch.dot(flat, flat)


def _l2_value(model: ReFINePlus, settings: Settings) -> torch.Tensor:
    """(λ1/2)||E0||² + (λ2/2)||θ_AE||², the value only (the gradient is Adam's weight decay)."""
    with torch.no_grad():
        ae = torch.stack([_squared_norm(p) for p in ae_parameters(model)]).sum()
        return settings.lambda1 / 2 * _squared_norm(model.gcn.embedding.weight) \
            + settings.lambda2 / 2 * ae


def _shard_loss(model: ReFINePlus, graphs: Graphs, users, items, is_pos, negatives,
                settings: Settings, shard: Shard, kernels: LossKernels = EAGER
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's part of the fast-path batch loss (see ``Shard``); the parts of all ranks
    sum to ``batch_loss`` without a shard. Returns (part, part value, the batch's |P|)."""
    U, I = graphs.num_users, graphs.num_items
    pos_users, pos_items = users[is_pos], items[is_pos]
    num_pos = pos_users.numel()
    e_users, e_items = model(graphs.norm_adj)
    lo, hi = shard.bounds(num_pos)
    loss = e_users.new_zeros(())
    if hi > lo:  # mean over the part, times part/|P|: the part's sum divided by |P|
        part = negatives if negatives.dim() == 1 else negatives[lo:hi]
        u_emb = e_users[pos_users[lo:hi]]
        pos_scores, neg_scores = _scores(u_emb, u_emb, e_items, pos_items[lo:hi], part)
        loss = kernels.sampled_softmax(pos_scores, neg_scores) * ((hi - lo) / num_pos)

    user_in, item_in = ae_inputs(users[~is_pos], items[~is_pos], graphs, settings.ae_input)
    (ulo, uhi), (ilo, ihi) = shard.bounds(U), shard.bounds(I)
    bce_u, z_users = ae_terms_sparse(model.user_ae, *rows_in_range(*user_in, ulo, uhi), U,
                                     row_range=(ulo, uhi), kernels=kernels.bce)
    bce_i, z_items = ae_terms_sparse(model.item_ae, *rows_in_range(*item_in, ilo, ihi), I,
                                     row_range=(ilo, ihi), kernels=kernels.bce)
    d = e_users.size(1)
    align = F.mse_loss(e_users[ulo:uhi], z_users, reduction="sum") / (U * d) \
        + F.mse_loss(e_items[ilo:ihi], z_items, reduction="sum") / (I * d)
    loss = loss + bce_u + bce_i + align
    value = loss.detach() + _l2_value(model, settings) if shard.rank == 0 else loss.detach()
    return loss, value, num_pos


def sync_gradients(model: torch.nn.Module) -> None:
    """Sum every parameter's gradient over the ranks (the loss parts add up, see Shard)."""
    for p in model.parameters():
        if p.grad is None:  # every rank must take part in every all-reduce
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


@dataclass(frozen=True)
class Sampling:
    """What an epoch needs besides the batches: n, gamma, (reference) the U x I weights and
    the loss's elementwise kernels (eager, or compiled with --compile on)."""

    n: int
    gamma: float
    dense_weights: torch.Tensor | None
    kernels: LossKernels = EAGER
    warnings: list[str] = field(default_factory=list)  # for train.log (the trainer adds them)


def prepare(graphs: Graphs, config: Config) -> Sampling:
    n = num_negatives(graphs.num_items)
    check_sampling_feasible(graphs, n)
    dense = (dense_sampling_weights(graphs, config.settings.real_neg_samp_prob)
             if config.settings.impl == "reference" else None)
    warnings: list[str] = []
    # check() refuses --compile on with --impl reference
    kernels = make_kernels(config.settings.compile == "on", graphs.norm_adj.device, warnings.append)
    return Sampling(n, config.settings.real_neg_samp_prob, dense, kernels, warnings)


def draw(pos_users: torch.Tensor, graphs: Graphs, config: Config,
         sampling: Sampling) -> torch.Tensor:
    """The batch's negatives, by the run's --impl and --negatives."""
    shared = config.settings.negatives == "shared"
    if config.settings.impl == "reference":
        return draw_negatives_reference(pos_users, sampling.dense_weights, sampling.n, shared)
    return draw_negatives(pos_users, graphs, sampling.n, sampling.gamma, shared)


def loss_of(model, graphs: Graphs, batch: torch.Tensor, negatives: torch.Tensor,
            config: Config, shard: Shard | None = None, kernels: LossKernels = EAGER):
    """``batch_loss`` or ``batch_loss_reference``, by the run's --impl."""
    if config.settings.impl == "reference":
        return batch_loss_reference(model, graphs, batch, negatives, config.settings)
    return batch_loss(model, graphs, batch, negatives, config.settings, shard, kernels)


def train_steps(model, optimizer, graphs: Graphs, config: Config, sampling: Sampling,
                batch_rows, shard: Shard | None = None) -> tuple[list, list]:
    """One optimizer step per batch of T row indices in ``batch_rows``; returns the batches'
    loss values and |P| (a batch of confirmed negatives only has no L_ssm term: skipped)."""
    losses, sizes = [], []
    for batch in batch_rows:
        pos_users = graphs.train.users[batch][graphs.is_pos[batch]]
        if pos_users.numel() == 0:
            continue
        negatives = draw(pos_users, graphs, config, sampling)
        loss, value, num_pos = loss_of(model, graphs, batch, negatives, config, shard,
                                       sampling.kernels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if shard is not None:
            sync_gradients(model)
        optimizer.step()
        losses.append(value)
        sizes.append(num_pos)
    return losses, sizes


def train_epoch(model, optimizer, graphs: Graphs, config: Config, epoch: int,
                sampling: Sampling, shard: Shard | None = None, progress=None) -> float:
    """One pass over shuffled T in batches; returns sum(loss_b |P_b|) / sum(|P_b|)."""
    rows = batches(len(graphs.train), config.batch_size, graphs.norm_adj.device, progress)
    losses, sizes = train_steps(model, optimizer, graphs, config, sampling, rows, shard)
    if shard is not None and losses:  # the epoch's loss values: the sum of the ranks' parts
        losses = torch.stack(losses)
        dist.all_reduce(losses)
        losses = list(losses)
    return epoch_loss(losses, sizes, epoch)


def build(graphs: Graphs, config: Config) -> ReFINePlus:
    return ReFINePlus(graphs.num_users, graphs.num_items, config.embedding_dim, config.layers,
                      symmetric_backward=config.settings.impl == "fast")


RECOMMENDER = Recommender(
    "refine_plus", Settings, positives_graph=False, build=build, make_optimizer=make_optimizer,
    prepare=prepare, train_epoch=train_epoch, header=header, check=check, distributed=distributed,
    dataset_defaults=PAPER_DEPTH, search_space={**GCN_SPACE, "lambda1": log_uniform(1e-9, 1e-5),
    "lambda2": log_uniform(1e-7, 1e-3), "real_neg_samp_prob": uniform(0.5, 3.0)})  # tune.py
