"""HNLMRec (``--model hnlmrec``; docs/baselines.md): LightGCN whose random negatives are
mixed with an LLM-made hard negative, and an alignment term.

Every positive training row (u, i+) may have a vector h_ui (``--negative_file``: the
embedding of the hard-negative title an LLM wrote for the pair, or the SCFT encoder's
output; data/vectors.py). An MLP adapter g: d_in -> 2048 -> 1024 -> d (ReLU between, and
after the last layer only with ``--adapter_final_relu on``) maps it to h^ = g(h_ui). With
j the row's uniform negative (an item u has no train-file row with):

    e~_j = alpha h^ + (1 - alpha) e_j
    L = L_rank(s(u, i+), s(u, e~_j)) + L2 + align_weight * L_CL

L_rank is BPR, softplus(s~ - s+) (``--rank_loss bpr``, the paper's) or the released code's
hinge max(0, s~ - s+ + 0.3); L2 is LightGCN's over the batch's distinct E0 rows; L_CL the
one-negative InfoNCE of the code, -log(exp(c+/tau) / (exp(c+/tau) + exp(c^/tau))) with
c+ = cos(e_u, e_i+) and c^ = cos(e_u, h^), over the rows that have a vector
(``--cl_inbatch on`` adds every other such row's h^ of the batch to the denominator, the
paper's "InfoNCE over the batch"; off by default, as in the code). A row without
one (``--missing mask``, default) keeps e_j alone and has no L_CL term; ``--missing random``
gives it a fresh N(0, I) vector as the code does. The adapter trains with the embeddings in
one Adam unless ``--freeze_adapter on`` (the released code never trains it).
With alpha = 0 and align_weight = 0 this trains exactly as ``--model lightgcn`` (tested).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.schema import DataError
from data.vectors import pair_vector_dim, read_pair_vectors
from model import LightGCNRecommender, batch_l2, bpr_loss, categorical_sample
from recommenders.base import (Graphs, Recommender, TrainingError, lambda_reg, minibatch_epoch,
                               no_shard, on_off, setting)
from recommenders.base import GCN_SPACE, log_uniform  # tune.py
from recommenders.bpr import check_candidates, unseen_weights
from runs.config import require

if TYPE_CHECKING:
    from runs.config import Config

HINGE_MARGIN = 0.3


@dataclass
class Settings:
    negative_file: str | None = setting(None, "the (user, item) hard-negative vectors "
                                              "(python -m llm.hnlm; required)", type=str)
    lambda_reg: float = lambda_reg(1e-4)
    alpha: float = setting(0.01, "weight of the LLM negative in the mixed negative")
    rank_loss: str = setting("bpr", "bpr (the paper's) or hinge (margin 0.3, the "
                                    "released code's)", choices=("bpr", "hinge"))
    align_weight: float = setting(0.001, "weight of the user / LLM-negative alignment "
                                         "InfoNCE (0: off)")
    align_temperature: float = setting(0.2, "InfoNCE temperature")
    missing: str = setting("mask", "rows without a vector: mask (mix nothing, no L_CL) "
                                   "or random (a fresh N(0, I) vector, the code's)",
                           choices=("mask", "random"))
    adapter_final_relu: str = on_off("off", "a ReLU after the adapter's last layer (the "
                                            "code's; off: CF embeddings are signed)")
    freeze_adapter: str = on_off("off", "keep the adapter at its initial weights (the "
                                        "released code's bug)")
    cl_inbatch: str = on_off("off", "L_CL also contrasts e_u with the other rows' adapted "
                                    "vectors in the batch (off: the row's own only, the code's)")

    def __post_init__(self):
        require((self.lambda_reg >= 0, "--lambda_reg must be >= 0"),
                (0 <= self.alpha <= 1, "--alpha must be in [0, 1]"),
                (self.align_weight >= 0 and self.align_temperature > 0,
                 "--align_weight must be >= 0 and --align_temperature > 0"),
                (self.rank_loss in ("bpr", "hinge"), "--rank_loss must be bpr or hinge"),
                (self.missing in ("mask", "random"), "--missing must be mask or random"))


class HNLMRecGCN(LightGCNRecommender):
    """LightGCN plus the adapter g (built from its own generator, so that the global random
    stream — batches, negatives — is the one LightGCN's training sees)."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int, num_layers: int,
                 input_dim: int, final_relu: bool, seed: int):
        super().__init__(num_users, num_items, embedding_dim, num_layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers = [nn.Linear(input_dim, 2048), nn.ReLU(), nn.Linear(2048, 1024), nn.ReLU(),
                      nn.Linear(1024, embedding_dim)]
            self.adapter = nn.Sequential(*layers, *([nn.ReLU()] if final_relu else []))


@dataclass(frozen=True)
class HNLMState:
    pos_users: Tensor
    pos_items: Tensor
    weights: Tensor  # (U, I): 1 where u has no train-file row
    row_vector: Tensor  # (P,) row of ``vectors`` for each positive row, -1: none
    vectors: Tensor  # (N, d_in)
    inputs: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def vectors_of_rows(path: Path, users: Tensor, items: Tensor, graphs: Graphs
                    ) -> tuple[Tensor, Tensor, str]:
    """(row -> vector index or -1, the vectors, a line saying how many rows have one)."""
    try:
        file_users, file_items, vectors, _ = read_pair_vectors(path)
    except DataError as err:
        raise TrainingError(str(err)) from None
    u_index = pd.Index(np.asarray(graphs.user_ids, dtype=str)).get_indexer(file_users)
    i_index = pd.Index(np.asarray(graphs.item_ids, dtype=str)).get_indexer(file_items)
    known = (u_index >= 0) & (i_index >= 0)
    keys = pd.Index(u_index[known].astype(np.int64) * graphs.num_items + i_index[known])
    if keys.has_duplicates:
        raise TrainingError(f"{path}: a (user, item) pair appears twice")
    at = keys.get_indexer((users * graphs.num_items + items).numpy())
    rows = np.flatnonzero(known)
    row_vector = np.full(len(at), -1, dtype=np.int64)
    row_vector[at >= 0] = rows[at[at >= 0]]
    unused = int(known.sum()) - len(np.unique(at[at >= 0]))
    line = (f"{Path(path).name}: vectors for {int((at >= 0).sum())} of {len(at)} positive "
            f"rows (d_in {vectors.shape[1]}); {int((~known).sum())} pair(s) of other ids, "
            f"{unused} of known ids that are not positive training rows (unused)")
    return torch.as_tensor(row_vector), torch.from_numpy(vectors), line


def prepare(graphs: Graphs, config: Config) -> HNLMState:
    if not config.settings.negative_file:
        raise TrainingError("--model hnlmrec needs --negative_file (python -m llm.hnlm)")
    device = graphs.norm_adj.device
    weights = unseen_weights(graphs)
    users, items = graphs.train.users[graphs.is_pos], graphs.train.items[graphs.is_pos]
    check_candidates(weights, torch.unique(users), "every item has a training row")
    row_vector, vectors, line = vectors_of_rows(Path(config.settings.negative_file), users.cpu(),
                                                items.cpu(), graphs)
    return HNLMState(users, items, weights, row_vector.to(device), vectors.to(device),
                     [("negative_file", Path(config.settings.negative_file))], [line])


def hnlm_batch_loss(model: HNLMRecGCN, graphs: Graphs, users: Tensor, items: Tensor,
                    negatives: Tensor, h: Tensor | None, has: Tensor, config: Config) -> Tensor:
    """L_rank + L2 (+ align_weight L_CL) of one batch (module docstring). has: (B,) bool,
    the rows with a vector; h: (has.sum(), d_in) their vectors, or None when no row has one.
    The adapter runs on those rows only (the others never use its output)."""
    e_users, e_items = model(graphs.norm_adj)
    u, e_pos, e_neg = e_users[users], e_items[items], e_items[negatives]
    h_hat = rows = None
    if h is not None:
        rows = has.nonzero().squeeze(1)
        h_hat = model.adapter(h)  # (H, d)
        mixed = config.settings.alpha * h_hat + (1 - config.settings.alpha) * e_neg[rows]
        e_neg = e_neg.index_put((rows,), mixed)
    pos_scores, neg_scores = (u * e_pos).sum(1), (u * e_neg).sum(1)
    if config.settings.rank_loss == "bpr":
        loss = bpr_loss(pos_scores, neg_scores)
    else:
        loss = (neg_scores - pos_scores + HINGE_MARGIN).clamp_min(0).mean()
    U = graphs.num_users
    nodes = torch.unique(torch.cat([users, items + U, negatives + U]))
    loss = loss + batch_l2(model.gcn.embedding.weight[nodes], users.numel(),
                           config.settings.lambda_reg)
    if config.settings.align_weight > 0 and h_hat is not None:
        tau = config.settings.align_temperature
        c_pos = F.cosine_similarity(u[rows], e_pos[rows]) / tau
        if config.settings.cl_inbatch == "on":  # (H, H): row r against every row's h^
            c_neg = F.normalize(u[rows], dim=1) @ F.normalize(h_hat, dim=1).T / tau
            l_cl = torch.logsumexp(torch.cat([c_pos.unsqueeze(1), c_neg], 1), 1) - c_pos
        else:
            l_cl = F.softplus(F.cosine_similarity(u[rows], h_hat) / tau - c_pos)
        loss = loss + config.settings.align_weight * l_cl.mean()
    return loss


def train_epoch(model: HNLMRecGCN, optimizer, graphs: Graphs, config: Config, epoch: int,
                state: HNLMState, shard=None, progress=None) -> float:
    no_shard(config.model, shard)

    def step_loss(batch: Tensor) -> Tensor:
        users, items = state.pos_users[batch], state.pos_items[batch]
        negatives = categorical_sample(state.weights[users])  # as LightGCN draws them
        at = state.row_vector[batch]
        has = at >= 0
        if config.settings.missing == "random":
            h = torch.randn(users.numel(), state.vectors.size(1), device=users.device)
            h[has] = state.vectors[at[has]]
            has = torch.ones_like(has)
        else:
            h = state.vectors[at[has]] if bool(has.any()) else None
        return hnlm_batch_loss(model, graphs, users, items, negatives, h, has, config)
    return minibatch_epoch(optimizer, state.pos_users.numel(), config.batch_size, epoch,
                           state.weights.device, step_loss, progress)


def build(graphs: Graphs, config: Config) -> HNLMRecGCN:
    if not config.settings.negative_file:
        raise TrainingError("--model hnlmrec needs --negative_file (python -m llm.hnlm)")
    try:
        input_dim = pair_vector_dim(Path(config.settings.negative_file))
    except DataError as err:
        raise TrainingError(str(err)) from None
    model = HNLMRecGCN(graphs.num_users, graphs.num_items, config.embedding_dim, config.layers,
                       input_dim, config.settings.adapter_final_relu == "on", config.random_seed)
    if config.settings.freeze_adapter == "on":
        model.adapter.requires_grad_(False)
    return model


def make_optimizer(model: HNLMRecGCN, config: Config) -> torch.optim.Optimizer:
    """Adam over the embeddings and (unless frozen) the adapter; L2 is in the loss."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                            lr=config.learning_rate)


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "hnlmrec"), *[(k, getattr(config.settings, k)) for k in (
        "negative_file", "lambda_reg", "alpha", "rank_loss", "align_weight", "align_temperature",
        "missing", "adapter_final_relu", "freeze_adapter", "cl_inbatch")]]


# tune.py's ranges (docs/experiments.md): around the defaults, weights in log scale
SEARCH_SPACE = {**GCN_SPACE, "lambda_reg": log_uniform(1e-6, 1e-2),
                "alpha": log_uniform(1e-3, 0.5), "align_weight": log_uniform(1e-4, 0.1)}

RECOMMENDER = Recommender("hnlmrec", Settings, positives_graph=True, build=build,
                          make_optimizer=make_optimizer, prepare=prepare,
                          train_epoch=train_epoch, header=header,
                          defaults={"layers": 3},  # HNLMRec's L
                          search_space=SEARCH_SPACE)
