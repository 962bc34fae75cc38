"""Training with an LLM interaction augmentation (``--augment_file``, written by
``python -m llm.augment``): one (user, favourite, least favourite) triple per user. Not
to be confused with ``--dataset_augment`` (the reference's name for which train file, the
LLM-refined ratings or the raw ones).

- ``--augment_mode rows`` (LLMRec): the graph is unchanged; each batch of B rows gets
  floor(0.1 B) augmented rows drawn uniformly (with replacement) from the triples: for a
  BPR model (u, i+, i-) with the LLM's i- as the negative and weight ``--augment_weight``;
  for PN-GNN a positive row (u, i+) whose first sampled negative is i-.
- ``--augment_mode edges`` (LLM-PNGNN): before training, (u, i+) becomes a positive
  training interaction — a graph edge; for PN-GNN (u, i-) becomes a negative row (an edge of
  the negative graph); for LightGCN i- is the user's fixed hard negative, replacing the
  drawn negative with probability 0.1.
- ``--prune_drop p`` (off by default): LLMRec's noise pruning; each batch's loss averages
  only the floor((1 - p) N) rows of highest loss (``--prune_keep high_loss``, its code) or of
  lowest loss (``low_loss``, its paper's stated intent), real and augmented rows together.

Triples naming a user or item absent from the training data, or a (user, item) pair of the
validation or test split (the LLM saw only the training rows masked), are dropped with a
count in train.log: trained on, a held-out pair would leak the test into training.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from data.splits import read_table
from recommenders.base import setting, setting_lines
from runs.config import require

if TYPE_CHECKING:
    from dataloader import RecData
    from runs.config import Config

COLUMNS = ("user_id:token", "pos_item_id:token", "neg_item_id:token")
ROWS_SHARE = 0.1  # augmented rows per batch row (LLMRec's aug_sample_rate)
HARD_NEGATIVE_RATE = 0.1  # edges mode, BPR models: how often i- replaces the drawn negative


def file_setting():
    return setting(None, "an augmentation file of python -m llm.augment (user, favourite, "
                         "least favourite; docs/llm.md)", type=str)


def mode_setting(default: str):
    return setting(default, "rows: extra rows in every batch (LLMRec); "
                            "edges: training interactions (LLM-PNGNN)",
                   choices=("rows", "edges"))


def weight_setting():
    return setting(1.0, "weight of an augmented BPR row in rows mode")


def prune_drop_setting():
    return setting(0.0, "LLMRec's noise pruning: share of each batch's rows left out of the "
                        "loss (0: off; 0.71 replicates LLMRec)")


def prune_keep_setting():
    return setting("high_loss", "with --prune_drop > 0, which rows stay: high_loss (LLMRec's "
                                "code) or low_loss (what its paper describes)",
                   choices=("high_loss", "low_loss"))


def header(config: Config) -> list:
    """The log header's augmentation and pruning lines (none when both are off)."""
    settings, lines = config.settings, []
    if settings.augment_file:
        lines += setting_lines(settings, "augment_file", "augment_mode", "augment_weight")
    if settings.prune_drop > 0:
        lines += setting_lines(settings, "prune_drop", "prune_keep")
    return lines


def check_settings(settings) -> None:
    require((settings.augment_mode in ("rows", "edges"), "--augment_mode must be rows or edges"),
            (settings.augment_weight > 0, "--augment_weight must be > 0"),
            (0 <= settings.prune_drop < 1, "--prune_drop must be in [0, 1)"),
            (settings.prune_keep in ("high_loss", "low_loss"),
             "--prune_keep must be high_loss or low_loss"))


@dataclass
class Triples:
    """Augmented (user, favourite, least favourite) rows in index space."""

    users: Tensor
    pos: Tensor
    neg: Tensor

    def __len__(self) -> int:
        return int(self.users.numel())


def read_triples(path: Path, user_ids, item_ids, held_out: set, warn) -> Triples:
    """The file's triples as indices; unknown ids and held-out pairs dropped (counted)."""
    df = read_table(Path(path), columns=COLUMNS, dtype=str)
    users = pd.Index(user_ids).get_indexer(df[COLUMNS[0]].to_numpy(dtype=object))
    pos, neg = (pd.Index(item_ids).get_indexer(df[c].to_numpy(dtype=object)) for c in COLUMNS[1:])
    known = (users >= 0) & (pos >= 0) & (neg >= 0)
    leak = np.array([(u, p) in held_out or (u, n) in held_out
                     for u, p, n in zip(users, pos, neg)], dtype=bool)
    keep = known & ~leak
    if (~known).any() or leak.any():
        warn(f"warning: {Path(path).name}: dropped {int((~known).sum())} triple(s) with ids "
             f"absent from the training data and {int((known & leak).sum())} naming a "
             f"validation/test pair")
    as_t = lambda a: torch.as_tensor(a[keep], dtype=torch.long)  # noqa: E731
    return Triples(as_t(users), as_t(pos), as_t(neg))


def held_out_pairs(data: RecData) -> set:
    return {(int(u), int(i)) for split in (data.validation, data.test)
            for u, i in zip(split.users.tolist(), split.items.tolist())}


def transform(data: RecData, config: Config, warn, negatives: bool = False) -> RecData:
    """The recommender hook before the graphs are built: record the file, and in edges
    mode add the triples to T (``negatives``: the (u, i-) rows too, for a model that learns
    from negative rows)."""
    if not config.settings.augment_file:
        return data
    data.files.append(("augment_file", Path(config.settings.augment_file)))
    triples = read_triples(config.settings.augment_file, data.user_ids, data.item_ids,
                           held_out_pairs(data), warn)
    data = dataclasses.replace(data, augmented=triples)
    if config.settings.augment_mode != "edges":
        return data
    return add_edges(data, triples, negatives=negatives)


def add_edges(data: RecData, triples: Triples, negatives: bool) -> RecData:
    """T plus (u, i+) as positives (and (u, i-) as confirmed negatives), pairs already in
    the train file left as they are."""
    seen = set(zip(data.train.users.tolist(), data.train.items.tolist())) \
        | set(zip(data.neutral.users.tolist(), data.neutral.items.tolist()))
    rows = [(u, i, True) for u, i in zip(triples.users.tolist(), triples.pos.tolist())]
    if negatives:
        rows += [(u, i, False) for u, i in zip(triples.users.tolist(), triples.neg.tolist())]
    rows = [r for r in dict.fromkeys(rows) if (r[0], r[1]) not in seen]
    users = torch.tensor([r[0] for r in rows], dtype=torch.long)
    items = torch.tensor([r[1] for r in rows], dtype=torch.long)
    is_pos = torch.tensor([r[2] for r in rows], dtype=torch.bool)
    train = type(data.train)(torch.cat([data.train.users, users]),
                             torch.cat([data.train.items, items]))
    return dataclasses.replace(data, train=train,
                               train_is_pos=torch.cat([data.train_is_pos, is_pos]))


def sample_rows(triples: Triples | None, batch_rows: int, device) -> Triples | None:
    """floor(0.1 B) triples drawn uniformly with replacement, or None (no file, rows=0)."""
    count = int(ROWS_SHARE * batch_rows)
    if triples is None or len(triples) == 0 or count == 0:
        return None
    pick = torch.randint(len(triples), (count,), device=device)
    return Triples(triples.users.to(device)[pick], triples.pos.to(device)[pick],
                   triples.neg.to(device)[pick])
