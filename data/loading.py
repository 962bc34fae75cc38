"""From the split files of one dataset to index arrays, in bounded memory (dataloader.py
wraps them into its ``RecData``; docs/method.md, "Data").

Every file is read chunk by chunk into integer codes (data/table.py) sharing one user and
one item vocabulary, so the checks between files (train_augment relabels train_original, no
pair in two splits) compare int64 keys, not strings. Only when a check fails (or an overlap
is allowed) are the rows concerned turned back into strings, for data/checks.py to word
the message exactly as before.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data import checks, dislikes, protocols
from data.schema import NEUTRAL_RATINGS, REFINED_RATINGS, DataError, sorted_ids
from data.splits import read_split_coded, split_path
from data.table import CodedSplit, Vocab


def read_checked_splits(data_dir, dataset: str, dataset_augment: str = "augment",
                        warn=print, allow_overlap: bool = False):
    """The train file, validation and test of ``dataset`` as ``CodedSplit``s sharing
    vocabularies, after checking that they fit together (data/checks.py); and the (role,
    path) of every file read — train_original too when it was read to check that
    train_augment relabels it."""
    if dataset_augment not in ("augment", "original"):
        raise DataError(f"--dataset_augment must be augment or original, got {dataset_augment!r}")
    users, items = Vocab(), Vocab()
    spec = protocols.read_protocol(data_dir, dataset)
    if spec is not None:
        *frames, files = protocols.read_protocol_splits(data_dir, dataset, dataset_augment,
                                                        spec, warn, allow_overlap)
        return (*[CodedSplit.of_frame(path, df, users, items)
                  for (_, path), df in zip(files, frames)], files)
    variant = dislikes.variant_inputs(data_dir, dataset)  # a variant's files: as recorded
    paths = {role: split_path(data_dir, dataset, role)
             for role in (f"train_{dataset_augment}", "validation", "test")}
    splits = {role: read_split_coded(path, is_train=role.startswith("train"), warn=warn,
                                     users=users, items=items)
              for role, path in paths.items()}
    train = splits[f"train_{dataset_augment}"]
    files = list(paths.items())
    original_path = split_path(data_dir, dataset, "train_original")
    if dataset_augment == "augment" and original_path.is_file():
        original = read_split_coded(original_path, is_train=True, warn=lambda line: None,
                                    users=users, items=items)
        _check_relabeling(original, train)
        checks.check_manifest(train.path, original_path, warn=warn)
        files.append(("train_original", original_path))
    _check_overlap([(paths[r].name, splits[r]) for r in paths], allow_overlap, warn)
    return train, splits["validation"], splits["test"], files + variant


def _check_relabeling(original: CodedSplit, augment: CodedSplit) -> None:
    """checks.check_relabeling on codes; its message (from the strings) when it fails."""
    same = len(original) == len(augment) and np.array_equal(original.users, augment.users) \
        and np.array_equal(original.items, augment.items)
    if same:
        before, after = original.ratings, augment.ratings
        same = bool(((before == after) | (np.isin(before, NEUTRAL_RATINGS)
                                          & np.isin(after, REFINED_RATINGS))).all())
    if not same:
        checks.check_relabeling(original.frame(), augment.frame(), original.path, augment.path)


def _check_overlap(splits: list[tuple[str, CodedSplit]], allow: bool, warn) -> None:
    """checks.check_overlap on int64 keys; the strings only when some pair is shared."""
    keys = [split.keys() for _, split in splits]
    shared = any(np.isin(keys[b], keys[a]).any()
                 for a in range(len(keys)) for b in range(a + 1, len(keys)))
    if shared:
        checks.check_overlap([(name, split.frame()) for name, split in splits], allow=allow,
                             warn=warn)


def index_map(ids: np.ndarray, vocab: Vocab) -> np.ndarray:
    """For every code of ``vocab``: the position of its string in ``ids``, or -1."""
    return pd.Index(ids).get_indexer(vocab.strings()) if len(vocab) else np.zeros(0, np.int64)


def lookup(mapping: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``mapping[codes]``; codes beyond the mapping (ids first seen in a later file) -1."""
    inside = codes < len(mapping)
    out = np.full(len(codes), -1, dtype=np.int64)
    out[inside] = mapping[codes[inside]]
    return out


def eval_rows(split: CodedSplit, user_map, item_map, user_ids, item_ids, spec, warn):
    """A validation/test split's ground-truth rows (rating >= 4) in index space; rows of
    users/items outside the index dropped with a counted warning. ``split.path`` None: a
    protocol folder's missing validation split (no rows)."""
    path = split.path
    if path is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    low = split.ratings < 4
    kept = np.flatnonzero(~low)
    users, items = lookup(user_map, split.users[kept]), lookup(item_map, split.items[kept])
    seen = (users >= 0) & (items >= 0)
    if not seen.any():
        raise DataError(checks.why_empty(path, split.frame(), user_ids, item_ids))
    if low.any() and spec is not None:
        warn(f"{path.name}: {int(low.sum())} row(s) rated below 4 are not ground truth "
             f"(threshold {spec['threshold']})")
    elif low.any():
        warn(f"warning: {path.name}: dropped {int(low.sum())} row(s) with rating < 4")
    if not seen.all():
        clash = checks.id_format_clash(path, split.frame(kept[~seen]), user_ids, item_ids)
        if clash:  # not unseen users/items: the same ones written another way
            raise DataError(clash)
        warn(f"warning: {path.name}: dropped {int((~seen).sum())} row(s) whose user or item "
             f"is not in the training data")
    return users[seen], items[seen]


def held_out(path: Path, user_map, item_map, users: Vocab, items: Vocab, warn):
    """A dislikes variant's held-out rows (every rating) in index space; rows of users or
    items absent from T dropped with a count."""
    split = read_split_coded(path, is_train=True, warn=warn, users=users, items=items)
    rows_u, rows_i = lookup(user_map, split.users), lookup(item_map, split.items)
    seen = (rows_u >= 0) & (rows_i >= 0)
    if not seen.all():
        warn(f"warning: {path.name}: {int((~seen).sum())} row(s) of users/items absent from T "
             f"not counted in disliked@k")
    return rows_u[seen], rows_i[seen]


def first_seen(*code_arrays: np.ndarray, vocab: Vocab) -> np.ndarray:
    """The id strings of the codes in ``code_arrays``, in the order they first occur."""
    codes = pd.unique(np.concatenate(code_arrays)) if code_arrays else np.zeros(0, np.int64)
    return vocab.strings()[codes]


def catalogue_ids(train: CodedSplit, test: CodedSplit, in_t: np.ndarray, spec):
    """The sorted user and item ids (data.schema.sorted_ids) of the catalogue: a protocol
    folder's every user and item of train and test, else those of T."""
    if spec is not None:
        users = first_seen(train.users, test.users, vocab=train.user_vocab)
        items = first_seen(train.items, test.items, vocab=train.item_vocab)
    else:
        users = first_seen(train.users[in_t], vocab=train.user_vocab)
        items = first_seen(train.items[in_t], vocab=train.item_vocab)
    return sorted_ids(users), sorted_ids(items)
