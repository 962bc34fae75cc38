"""What the two models that learn from a negative signal as well as from positives share
(``--model pngnn``: recommenders/pngnn.py, ``--model siren``: recommenders/siren.py): the
negative graph, the rows of an epoch, the degree-based negatives, the loss reduction and
the epoch. docs/baselines.md traces every behaviour to the authors' files.

Rows an epoch trains on: every positive row (rating >= 4) and every row of the negative
graph, which is
- ``--dataset_augment original``: every row rated below 4 in the train file (1, 2, 3: the
  confirmed negatives of T and the neutral rows), the threshold 3.5 of PN-GNN and SiReN;
- ``--dataset_augment augment`` (refined data): the confirmed negatives, rating <= 1
  (1 and the LLM's 0.5); unrefined 2/3 rows stay out, as in T.

Negatives: for a row of user u, ``--num_negatives`` independent draws (with replacement)
from P_u(j) = deg(j)^0.75 / sum_{j' not in S_u} deg(j')^0.75 for j not in S_u, 0 for j in
S_u, where S_u = every item u has a train-file row with, and deg(j) counts
- ``--degree_rows all`` (default; both authors' codes, ``deg_dist`` over every train row):
  every train-file row of item j, positive or negative;
- ``--degree_rows positive`` (the earlier reading): the positive rows only, so an item
  without a positive row is never drawn.
Fresh draws every epoch. ``DegreeSampler`` draws them by rejection (exact, fast);
``degree_negatives`` is the plain per-user CDF it is tested against (``--sampler cdf``).

Reduction (``--reduction``): ``sum`` (default; both codes) sums the pair losses over the
batch's rows and sampled items and adds lambda_reg * (sum of the squared norms of the
batch's scored user, item and negative embeddings); ``mean`` (the earlier reading) divides
both terms by B n — the same ratio of the two terms, only the scale (and so Adam's epsilon
and the printed loss) differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dataloader import Interactions, RowIndex
from model import inverse_cdf, categorical_draws, per_row_scores, pruned_mean
from recommenders.llm_augmentation import sample_rows
from recommenders.base import Graphs, TrainingError, minibatch_epoch, no_shard, setting

if TYPE_CHECKING:
    from runs.config import Config

DEGREE_EXPONENT = 0.75
BITMAP_MAX = 1 << 28  # U * I bytes: the rejection sampler's seen-flags up to 256 MiB


# ------------------------------------------------------ the modules and losses they share

class ViewAttention(nn.Module):
    """Per-node attention over V views z_1..z_V of the same node (SiReN's attention model):

    w_v = q^T tanh(W z_v + b), alpha = softmax_v(w_1..w_V) (so alpha sums to 1 per node),
    Z = sum_v alpha_v z_v. W, b and q are shared by the views; ``dropout`` acts on the tanh
    output while training (SiReN's public code uses 0.5; 0 switches it off).
    """

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, 1, bias=False)
        self.dropout = dropout

    def weights(self, views: list[Tensor]) -> Tensor:
        """alpha: (N, V), each row a probability vector."""
        scores = [self.query(F.dropout(torch.tanh(self.proj(z)), self.dropout, self.training))
                  for z in views]  # V x (N, 1)
        return torch.softmax(torch.cat(scores, 1), 1)

    def forward(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """views: V tensors (N, d). Returns (Z (N, d), alpha (N, V))."""
        alpha = self.weights(views)
        fused = sum(alpha[:, v:v + 1] * z for v, z in enumerate(views))
        return fused, alpha


def pairwise_l2(e_users: Tensor, e_items: Tensor, e_negatives: Tensor, weight: float,
                reduction: str = "sum") -> Tensor:
    """weight * (sum_b ||z_u||^2 + ||z_i||^2 + sum_j ||z_j||^2) on the final embeddings the
    loss scored, every occurrence counted (``reg_loss`` of pngnn.py / siren.py in the
    authors' codes); ``reduction="mean"`` divides it by B n.

    e_users, e_items: (B, d); e_negatives: (B, n, d).
    """
    total = e_users.pow(2).sum() + e_items.pow(2).sum() + e_negatives.pow(2).sum()
    count = e_negatives.shape[0] * e_negatives.shape[1] if reduction == "mean" else 1
    return weight * total / count


def pairwise_l2_counted(e_users: Tensor, e_items: Tensor, table: Tensor, negatives: Tensor,
                        weight: float, reduction: str = "sum") -> Tensor:
    """``pairwise_l2`` without the (B, n, d) copy of the negatives' embeddings: their term,
    sum over the B n draws of ||table[j]||^2, is sum_j count_j ||table[j]||^2 with count_j
    the times item j was drawn. e_users, e_items: (B, d); table: (I, d); negatives: (B, n).
    Same value and gradient up to float rounding (tests/test_negative_models.py)."""
    counts = torch.bincount(negatives.flatten(), minlength=table.shape[0]).to(table.dtype)
    negatives_term = (counts * table.pow(2).sum(1)).sum()
    count = negatives.numel() if reduction == "mean" else 1
    return weight * (e_users.pow(2).sum() + e_items.pow(2).sum() + negatives_term) / count


def reduce_pairs(pair_losses: Tensor, reduction: str = "sum",
                 prune: tuple[float, str] = (0.0, "high_loss")) -> Tensor:
    """The batch loss from the (B, n) losses of each row's sampled pairs: their sum
    (``"sum"``, the authors' codes) or mean (``"mean"``). With ``prune`` = (drop, keep),
    drop > 0, LLMRec's noise pruning keeps some rows by their row loss (``pruned_mean``)
    and the result is the sum (or mean) over the kept rows."""
    rows = pair_losses.sum(1) if reduction == "sum" else pair_losses.mean(1)
    if prune[0] > 0:
        kept = max(1, int((1.0 - prune[0]) * rows.numel()))
        mean = pruned_mean(rows, *prune)
        return mean * kept if reduction == "sum" else mean
    return rows.sum() if reduction == "sum" else rows.mean()


def weighted_bpr_pairs(obs_scores: Tensor, neg_scores: Tensor, is_pos: Tensor,
                       c: float) -> Tensor:
    """The pair losses both authors' codes compute (PN-GNN's ``pngnn.py`` and SiReN's
    ``siren.py``, ``forward``): -log sigmoid(c_r s(u,i) - s(u,j)) = softplus(s(u,j) - c_r
    s(u,i)) with c_r = 1 on a positive row and c_r = c on a negative-graph row (their
    -sign(w)/2 + 3/2 of w = rating - 3.5, i.e. c = 2): an observed negative still ranks
    above the unobserved j, less strongly than a positive.

    obs_scores: (B,), neg_scores: (B, n), is_pos: (B,) bool -> (B, n).
    """
    weight = torch.where(is_pos, torch.ones_like(obs_scores), torch.full_like(obs_scores, c))
    return F.softplus(neg_scores - (weight * obs_scores).unsqueeze(1))


def negative_graph_rows(graphs: Graphs, dataset_augment: str) -> Interactions:
    """The negative graph's (u, i) rows (see the module docstring): T's confirmed negatives,
    plus, on original data, the neutral rows (every train-file row that is not in T)."""
    users, items = graphs.train.users[~graphs.is_pos], graphs.train.items[~graphs.is_pos]
    if dataset_augment == "original":
        I = graphs.num_items
        all_users = torch.arange(graphs.num_users, device=users.device)
        owner, cols = graphs.seen_by_user.gather(all_users)  # T and neutral rows
        neutral = ~torch.isin(owner * I + cols, graphs.train.users * I + graphs.train.items)
        users, items = torch.cat([users, owner[neutral]]), torch.cat([items, cols[neutral]])
    return Interactions(users, items)


def degree_weights(graphs: Graphs, rows: str = "all",
                   exponent: float = DEGREE_EXPONENT) -> Tensor:
    """deg(j)^exponent: (I,) float; deg(j) = every train-file row of item j (``rows="all"``,
    positive, negative and neutral, as ``deg_dist`` in both authors' codes) or its positive
    rows only (``"positive"``)."""
    if rows == "all":
        items = graphs.seen_by_user.indices  # T and the neutral rows
    else:
        items = graphs.train.items[graphs.is_pos]
    deg = torch.bincount(items, minlength=graphs.num_items)
    return deg.to(torch.float32).pow(exponent)


def degree_negatives(users: Tensor, item_weights: Tensor, seen: RowIndex, n: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """n draws per row (with replacement) from P_u(j) ∝ item_weights[j] over the items not in
    ``seen`` row u. users: (B,) -> (B, n) item indices."""
    distinct, inverse = torch.unique(users, return_inverse=True)
    weights = item_weights.expand(distinct.numel(), -1).clone()  # (users in batch, I)
    owner, cols = seen.gather(distinct)
    weights[owner, cols] = 0.0
    return categorical_draws(weights, inverse, n, generator)


class DegreeSampler:
    """Exact draws from P_u(j) ∝ w_j over the items not in S_u, by rejection: draw from the
    global distribution w_j / sum w (one inverse-CDF search), redraw only the draws that hit
    S_u; a draw accepted is distributed as P_u. After ``max_rounds`` rounds the still
    rejected draws (users whose S_u holds most of the weight) come from the per-user CDF
    (``degree_negatives``), so the result is exact whatever the data. Costs O(B n log I)
    per batch instead of the per-user CDF's O(B I)."""

    def __init__(self, item_weights: Tensor, seen: RowIndex, max_rounds: int = 16):
        self.item_weights, self.seen, self.max_rounds = item_weights, seen, max_rounds
        self.num_items = item_weights.numel()
        self.cdf = item_weights.to(torch.float64).cumsum(0).unsqueeze(0)  # (1, I)
        num_users = seen.indptr.numel() - 1
        owner = torch.repeat_interleave(
            torch.arange(num_users, device=seen.indices.device), seen.degree())
        # sorted: RowIndex keeps rows in order and each row's columns sorted
        self.seen_keys = owner * self.num_items + seen.indices
        self.bitmap = None  # U x I flags when they fit: a lookup ~25x cheaper than a search
        if num_users * self.num_items <= BITMAP_MAX:
            self.bitmap = torch.zeros(num_users * self.num_items, dtype=torch.bool,
                                      device=seen.indices.device)
            self.bitmap[self.seen_keys] = True

    def is_seen(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users * self.num_items + items
        if self.bitmap is not None:
            return self.bitmap[keys]
        at = torch.searchsorted(self.seen_keys, keys).clamp(max=self.seen_keys.numel() - 1)
        return self.seen_keys[at] == keys

    def _global(self, count: int, generator) -> Tensor:
        u = torch.rand((1, count), generator=generator, dtype=torch.float64,
                       device=self.cdf.device)
        return inverse_cdf(self.cdf, u)[0]

    def __call__(self, users: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """users: (B,) -> (B, n) item indices."""
        draws = self._global(users.numel() * n, generator).view(-1, n)
        owners = users.unsqueeze(1).expand(-1, n)
        bad = self.is_seen(owners, draws).nonzero(as_tuple=True)
        for _ in range(self.max_rounds):
            if bad[0].numel() == 0:
                return draws
            new = self._global(bad[0].numel(), generator)
            draws[bad] = new
            hit = self.is_seen(users[bad[0]], new)
            bad = (bad[0][hit], bad[1][hit])
        if bad[0].numel():
            draws[bad] = degree_negatives(users[bad[0]], self.item_weights, self.seen, 1,
                                          generator)[:, 0]
        return draws


def check_degree_sampling(users: Tensor, item_weights: Tensor, seen: RowIndex) -> None:
    """Every user with a training row needs an item of positive weight outside S_u."""
    distinct = torch.unique(users)
    owner, cols = seen.gather(distinct)
    drawable = item_weights > 0
    seen_drawable = torch.zeros(distinct.numel(), dtype=torch.long, device=users.device)
    seen_drawable.index_add_(0, owner, drawable[cols].long())
    empty = seen_drawable == int(drawable.sum())
    if empty.any():
        raise TrainingError(f"{int(empty.sum())} user(s) have a train-file row with every item "
                            f"the sampler can draw (deg > 0): no negative to sample for them")


@dataclass(frozen=True)
class SignedRows:
    """The rows of an epoch (positive rows, then negative-graph rows) and their sampler."""

    users: Tensor
    items: Tensor
    is_pos: Tensor
    item_weights: Tensor  # deg(j)^0.75
    seen: RowIndex  # S_u: every train-file row
    sampler: str = "rejection"  # or "cdf": the per-user CDF (the oracle)
    augment_rows: object = None  # rows mode: the LLM triples batches draw extra rows from

    def __post_init__(self):
        object.__setattr__(self, "rejection", DegreeSampler(self.item_weights, self.seen))

    def negatives(self, users: Tensor, n: int) -> Tensor:
        if self.sampler == "cdf":
            return degree_negatives(users, self.item_weights, self.seen, n)
        return self.rejection(users, n)


def signed_prepare(graphs: Graphs, config: Config, augment_rows: bool = False) -> SignedRows:
    """The signed rows and their sampler; ``augment_rows``: the run's augmentation triples
    (if any) are added to every batch (--augment_mode rows)."""
    neg = negative_graph_rows(graphs, config.dataset_augment)
    pos_users, pos_items = graphs.train.users[graphs.is_pos], graphs.train.items[graphs.is_pos]
    is_pos = torch.cat([torch.ones_like(pos_users, dtype=torch.bool),
                        torch.zeros_like(neg.users, dtype=torch.bool)])
    rows = SignedRows(torch.cat([pos_users, neg.users]), torch.cat([pos_items, neg.items]),
                      is_pos, degree_weights(graphs, config.settings.degree_rows),
                      graphs.seen_by_user, config.settings.sampler,
                      graphs.augmented if augment_rows else None)
    check_degree_sampling(rows.users, rows.item_weights, rows.seen)
    return rows


Loss = Callable[[Tensor, Tensor, Tensor, "Config"], Tensor]  # (obs, neg, is_pos, config)


def signed_batch_loss(model: nn.Module, graphs: Graphs, users: Tensor, items: Tensor,
                      is_pos: Tensor, negatives: Tensor, config: Config, loss_fn: Loss) -> Tensor:
    """The model's loss (Dual-BPR for pngnn, sign-aware BPR for siren) over the batch's rows
    and their sampled negatives, plus ``pairwise_l2`` (--lambda_reg) on the final embeddings
    scored."""
    e_users, e_items = model(graphs.norm_adj)
    u, i = e_users[users], e_items[items]  # (B, d)
    obs_scores = (u * i).sum(1)
    # per_row_scores and pairwise_l2_counted: the einsum over e_items[negatives] and
    # pairwise_l2 of that (B, n, d) copy, without the copy (tests/test_negative_models.py)
    neg_scores = per_row_scores(u, e_items, negatives)
    return loss_fn(obs_scores, neg_scores, is_pos, config) \
        + pairwise_l2_counted(u, i, e_items, negatives, config.settings.lambda_reg,
                              config.settings.reduction)


def signed_epoch(loss_fn: Loss):
    """The epoch of a model with loss ``loss_fn``: one pass over the shuffled rows in
    batches of --batch_size, --num_negatives drawn per row by ``degree_negatives``;
    returns sum(loss_b |B_b|) / sum |B_b| (single process)."""
    def train_epoch(model, optimizer, graphs: Graphs, config: Config, epoch: int,
                    state: SignedRows, shard=None, progress=None) -> float:
        no_shard(config.model, shard)

        def step_loss(batch: torch.Tensor) -> torch.Tensor:
            users, items, is_pos = state.users[batch], state.items[batch], state.is_pos[batch]
            extra = sample_rows(state.augment_rows, batch.numel(), users.device)
            if extra is not None:  # rows mode: positive rows (u, i+), i- their 1st negative
                users, items = torch.cat([users, extra.users]), torch.cat([items, extra.pos])
                is_pos = torch.cat([is_pos, torch.ones(len(extra), dtype=torch.bool,
                                                       device=users.device)])
            negatives = state.negatives(users, config.settings.num_negatives)
            if extra is not None:
                negatives[-len(extra):, 0] = extra.neg
            return signed_batch_loss(model, graphs, users, items, is_pos, negatives, config,
                                     loss_fn)
        return minibatch_epoch(optimizer, state.users.numel(), config.batch_size, epoch,
                               state.users.device, step_loss, progress)
    return train_epoch


def negative_graph_header(config: Config) -> list:
    rule = "rating <= 1" if config.dataset_augment == "augment" else "rating < 4"
    return [("num_negatives", config.settings.num_negatives), ("negative_graph", rule),
            ("neg_form", config.settings.neg_form), ("degree_rows", config.settings.degree_rows),
            ("reduction", config.settings.reduction), ("sampler", config.settings.sampler)]


def neg_form(help_reversed: str):
    return setting("code", "the loss of a negative-graph row: code (the authors' "
                           f"code: -log sigmoid(c s(u,k) - s(u,j))) or reversed ({help_reversed})",
                   choices=("code", "reversed"))


def degree_rows():
    return setting("all", "deg(j) of the negative sampler counts every train row of j (all, "
                          "the authors' codes) or its positive rows (positive)",
                   choices=("all", "positive"))


def reduction():
    return setting("sum", "sum (the authors' codes) or mean the pair losses and the L2 term "
                          "over the batch", choices=("sum", "mean"))


def sampler():
    return setting("rejection", "draw the degree-based negatives by rejection (fast) or by "
                                "each user's CDF (cdf; the slow oracle, same distribution)",
                   choices=("rejection", "cdf"))


def num_negatives(default: int = 40):
    return setting(default, "negatives sampled per training row", type=int)
