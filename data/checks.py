"""Checks that the split files of one dataset fit together before anything trains on them.

- train_augment must be a relabeling of train_original (when both are present): the same
  (user, item) rows in the same order, ratings equal except neutral 2/3 -> 0.5/4.5 — else
  it was made from another split (e.g. before ``prepare --overwrite``) and is stale;
  refine_llm.py's manifest, when present, must name the present train_original as input;
- no (user, item) pair may be in two of train file / validation / test;
- when an evaluation split empties, the message names the real cause (only low ratings, or
  ids written differently from the train file's).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from data.provenance import file_sha1
from data.schema import (ITEM_COL, NEUTRAL_RATINGS, RATING_COL, REFINED_RATINGS, USER_COL,
                         DataError)


def manifest_path(augment_path: Path) -> Path:
    """Where refine_llm.py writes the manifest of a train_augment file."""
    return augment_path.with_name(augment_path.stem + ".manifest.json")


def _stale(augment_path: Path, original_path: Path, reason: str) -> DataError:
    dataset = augment_path.parent.name
    return DataError(f"{augment_path.name} is stale: it is not a relabeling of "
                     f"{original_path.name} ({reason}); rebuild it with refine_llm.py "
                     f"--dataset {dataset} --overwrite (docs/llm.md) or, for a published "
                     f"dataset, delete it and download it (python dataloader.py download "
                     f"--dataset {dataset})")


def check_relabeling(original: pd.DataFrame, augment: pd.DataFrame, original_path: Path,
                     augment_path: Path) -> None:
    """DataError unless ``augment`` is ``original`` with some 2/3 ratings set to 0.5/4.5."""
    if len(original) != len(augment):
        raise _stale(augment_path, original_path, f"{len(augment)} rows against "
                                                  f"{len(original)}")
    same_pair = ((original[USER_COL].to_numpy() == augment[USER_COL].to_numpy())
                 & (original[ITEM_COL].to_numpy() == augment[ITEM_COL].to_numpy()))
    if not same_pair.all():
        n = int(np.flatnonzero(~same_pair)[0])
        raise _stale(augment_path, original_path,
                     f"data row {n + 1} is (user {augment[USER_COL].iloc[n]}, item "
                     f"{augment[ITEM_COL].iloc[n]}), there (user {original[USER_COL].iloc[n]}, "
                     f"item {original[ITEM_COL].iloc[n]})")
    before, after = original[RATING_COL].to_numpy(), augment[RATING_COL].to_numpy()
    ok = (before == after) | (np.isin(before, NEUTRAL_RATINGS) & np.isin(after, REFINED_RATINGS))
    if not ok.all():
        n = int(np.flatnonzero(~ok)[0])
        raise _stale(augment_path, original_path,
                     f"data row {n + 1} has rating {after[n]:g} where train_original has "
                     f"{before[n]:g}; only 2/3 may become 0.5/4.5")


def check_manifest(augment_path: Path, original_path: Path, warn=print) -> None:
    """A refine_llm.py manifest next to ``augment_path`` must name ``original_path``'s bytes
    as its input (DataError); one describing other output bytes is a warning."""
    path = manifest_path(augment_path)
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
        made_from, made = manifest["input_sha1"], manifest.get("output_sha1")
        if not isinstance(made_from, str) or not isinstance(made, (str, type(None))):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise DataError(f"{path}: not a refine_llm.py manifest (no input_sha1); move it "
                        f"away or rebuild {augment_path.name}") from None
    if made_from != file_sha1(original_path):
        raise DataError(f"{path.name} says {augment_path.name} was made from another "
                        f"train_original (SHA-1 {made_from[:12]}) than the present "
                        f"{original_path.name}; rebuild it with refine_llm.py --dataset "
                        f"{augment_path.parent.name} --overwrite (docs/llm.md)")
    if made and made != file_sha1(augment_path):
        warn(f"warning: {path.name} describes another version of {augment_path.name} (it was "
             f"edited after refine_llm.py wrote it)")


def pair_keys(df: pd.DataFrame) -> pd.Series:
    return df[USER_COL].astype(str) + "\x1f" + df[ITEM_COL].astype(str)


def overlaps(splits: list[tuple[str, pd.DataFrame]]):
    """For every two of the named frames sharing (user, item) pairs: the count and the
    first shared pair (in the later frame's order), as a phrase."""
    keys = [(name, pair_keys(df)) for name, df in splits]
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            (name_a, keys_a), (name_b, keys_b) = keys[a], keys[b]
            both = keys_b.isin(keys_a)
            if both.any():
                user, item = keys_b[both].iloc[0].split("\x1f")
                yield (f"{int(both.sum())} (user, item) pair(s) in both {name_a} and {name_b}, "
                       f"first: user {user}, item {item}")


def check_overlap(splits: list[tuple[str, pd.DataFrame]], allow: bool = False,
                  warn=print) -> None:
    """No (user, item) pair in two of the named frames: DataError naming the count and the
    first pair, or (``allow``) a warning."""
    for message in overlaps(splits):
        if not allow:
            raise DataError(f"{message}; a split must not hold rows of another (pass "
                            f"--allow_split_overlap to train on such data anyway)")
        warn(f"warning: {message} (allowed by --allow_split_overlap)")


def _canonical(value: str) -> str:
    """An id as a number would print it: no padding, no leading zeros, no '.0'."""
    text = value.strip()
    if re.fullmatch(r"\d+(\.0*)?", text):
        return text.split(".")[0].lstrip("0") or "0"
    return text


def id_format_clash(path: Path, df: pd.DataFrame, user_ids, item_ids) -> str | None:
    """A message when ids of ``df`` are written differently than the train file's same ids
    (``1.0`` / ``1``, padding, leading zeros), with an example; else None."""
    for column, known, what in ((USER_COL, user_ids, "user"), (ITEM_COL, item_ids, "item")):
        ours = {_canonical(str(v)): str(v) for v in known}
        for value in pd.unique(df[column].astype(str)):
            twin = ours.get(_canonical(value))
            if twin is not None and twin != value:
                return (f"{path}: ids are written differently than in the train file "
                        f"({what} {value!r} here, {twin!r} there); write them the same way")
    return None


def why_empty(path: Path, df: pd.DataFrame, user_ids, item_ids) -> str:
    """The message for an evaluation split of which no row is left: every rating < 4, ids
    written differently than in the train file (an example of each), or ids unseen there."""
    if not (df[RATING_COL] >= 4).any():
        return (f"{path}: every row has rating < 4, and evaluation keeps positives "
                f"(rating >= 4) only")
    clash = id_format_clash(path, df[df[RATING_COL] >= 4], user_ids, item_ids)
    return clash or f"{path}: no row left after dropping users/items unseen in training"
