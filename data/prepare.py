"""Preparing split files from raw RecBole atomic files exactly as the paper did (docs/datasets.md),
and their statistics. ``python dataloader.py prepare|download|stats`` is the CLI;
data/fetch.py downloads.

Preparation (docs/datasets.md), for every dataset alike:
  1. left-join the item text columns onto the interactions, drop rows missing user, item,
     rating or any text field (Netflix: first keep 5,000 drawn users);
  2. repeat until the row count is stable: pos = rating >= 4, neg = the rest; 5-core pos
     (items, then users); df = concat(pos, neg); 5-core df the same way;
  3. keep neg rows whose user and item occur in pos;
  4. per user in ascending id order, one global seed: permutation(n), test = first int(0.2 n),
     validation = next int(0.1 n), train = the rest, each in original row order;
  5. train_original = train parts + neg; write user_id:token, item_id:token, rating:float.
Between 1 and 2, rows repeating a (user, item) pair are dropped: the first row of each pair
in file order is kept (the loader's rule), so no pair can land in two splits; the count is
printed and recorded in ``prepared.json`` beside the splits, with the source and the
parameters. A pair in two of the splits about to be written is refused (nothing written).
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from data import checks
from data.provenance import file_sha1, git_blob_sha1
from data.registry import DATASETS, NETFLIX_GENRES, NETFLIX_TITLES, SPLITS, RawFormat
from data.schema import (ITEM_COL, RATING_COL, TRAIN_RATINGS, USER_COL, DataError,
                         canonical_int_ids, sorted_ids)
from data.splits import read_split, split_path
from runs.files import atomic_write, atomic_write_text

PREPARED_SPLITS = ("train_original", "validation", "test")
RAW_FORMATS = {name: d.raw for name, d in DATASETS.items()}
RECORD_FILE = "prepared.json"
KEPT_OF_DUPLICATES = "the first row of each (user, item) pair in file order"


@dataclass(frozen=True)
class SplitProtocol:
    """The thresholds of docs/datasets.md (defaults = the paper's)."""

    positive: float = 4.0      # pos = rating >= positive
    core: int = 5              # k-core on pos, then on pos + neg
    valid_ratio: float = 0.1
    test_ratio: float = 0.2
    min_split_rows: int = 5    # users with fewer positives go to train whole
    seed: int = 2024

    def __post_init__(self):
        if not (0 <= self.valid_ratio and 0 <= self.test_ratio
                and self.valid_ratio + self.test_ratio < 1):
            raise DataError(f"split ratios must be >= 0 with valid + test < 1, got "
                            f"{self.valid_ratio} + {self.test_ratio}")
        if self.core < 1:
            raise DataError(f"--core must be >= 1, got {self.core}")
        if not 0 <= self.seed < 2 ** 32:
            raise DataError(f"--seed must be in 0..{2 ** 32 - 1}, got {self.seed}")


def raw_format(dataset: str) -> RawFormat:
    if dataset not in RAW_FORMATS:
        raise DataError(f"unknown dataset {dataset!r}: one of {', '.join(RAW_FORMATS)}, or "
                        f"prepare your own with --inter FILE --name NAME")
    return RAW_FORMATS[dataset]


# ----------------------------------------------------------------------------- prepare

def _read_table(path: Path, required: list[str], sep: str = "\t", **kwargs) -> pd.DataFrame:
    """Read a RecBole atomic file (tab separated, no quoting); user/item ids stay strings."""
    if not path.is_file():
        raise DataError(f"missing raw file {path}")
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, quoting=csv.QUOTE_NONE,
                             encoding_errors="replace")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: cannot be read ({str(err).splitlines()[0]})") from None
    missing = [c for c in required if c not in header.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; "
                        f"found {', '.join(map(str, header.columns))}")
    dtype = {c: str for c in required if c != RATING_COL}
    try:
        return pd.read_csv(path, sep=sep, usecols=required, dtype=dtype,
                           quoting=csv.QUOTE_NONE, encoding_errors="replace", **kwargs)
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{path}: cannot be read ({str(err).splitlines()[0]})") from None


def _read_inter(path: Path, sample_users: int, seed: int, log=print) -> pd.DataFrame:
    """The three interaction columns, in file order; ``sample_users`` > 0 keeps only users
    drawn by ``np.random.seed(seed); np.random.choice(sorted unique users, n, replace=False)``
    (read in two passes so Netflix's 100M rows never sit in memory at once)."""
    keep = None
    if sample_users:
        seen = set()
        for chunk in _chunks(path, [USER_COL], "listing users of"):
            seen.update(chunk[USER_COL].dropna().unique())
        if len(seen) < sample_users:
            raise DataError(f"{path}: {len(seen)} users, fewer than the {sample_users} to draw")
        np.random.seed(seed)
        drawn = np.random.choice(sorted_ids(list(seen)),
                                 sample_users, replace=False)
        keep = {str(user) for user in drawn}  # numeric ids are canonical: str() round-trips
    chunks = [chunk if keep is None else chunk[chunk[USER_COL].isin(keep)]
              for chunk in _chunks(path, [USER_COL, ITEM_COL, RATING_COL], "reading")]
    df = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
    if len(df) == 0:
        raise DataError(f"{path}: no interactions")
    if not pd.api.types.is_numeric_dtype(df[RATING_COL]):
        bad = pd.to_numeric(df[RATING_COL], errors="coerce").isna() & df[RATING_COL].notna()
        raise DataError(f"{path}: {int(bad.sum())} non-numeric rating(s), e.g. "
                        f"{df.loc[bad, RATING_COL].iloc[0]!r}")
    if keep is not None:
        log(f"kept {len(df):,} rows of {sample_users:,} drawn users")
    return df


def read_raw_ratings(path: Path) -> pd.DataFrame:
    """A raw .inter file as integer ``userId, movieId, rating`` columns, in file order
    (data/protocols.py; MovieLens ids and ratings are integers)."""
    if not Path(path).is_file():
        raise DataError(f"missing raw file {path}: python dataloader.py download --dataset "
                        f"ML-1M --raw, or place it there")
    df = _read_inter(Path(path), 0, 0, log=lambda line: None)
    if (pd.to_numeric(df[RATING_COL], errors="coerce") % 1 != 0).any():
        raise DataError(f"{path}: ratings must be whole numbers (1..5) for this protocol")
    try:
        return pd.DataFrame({"userId": df[USER_COL].astype(np.int64),
                             "movieId": df[ITEM_COL].astype(np.int64),
                             "rating": df[RATING_COL].astype(np.int64)})
    except (ValueError, TypeError):
        raise DataError(f"{path}: user, item ids and ratings must be integers") from None


def _chunks(path: Path, cols: list[str], what: str):
    """``_read_table`` in chunks of 1M rows, with a progress bar and one-line parse errors."""
    reader = _read_table(path, cols, chunksize=1_000_000)
    with tqdm(desc=f"{what} {path.name}", unit=" rows", unit_scale=True, mininterval=1) as bar:
        try:
            for chunk in reader:
                bar.update(len(chunk))
                yield chunk
        except (pd.errors.ParserError, ValueError) as err:
            raise DataError(f"{path}: cannot be read ({str(err).splitlines()[0]})") from None


def _as_ids(ids: pd.Series) -> pd.Series:
    """Integer ids as int64 (ascending numeric order, as the reference's pandas read them),
    anything else as strings (data.schema.canonical_int_ids decides)."""
    return ids.astype(np.int64) if canonical_int_ids(ids) else ids.astype(object)


def _read_items(fmt: RawFormat, raw_dir: Path, item_path: Path | None) -> pd.DataFrame:
    if fmt.netflix_items:
        titles = _read_netflix_titles(raw_dir / NETFLIX_TITLES)
        genres = _read_table(raw_dir / NETFLIX_GENRES, ["movieId", "genres"], sep=",")
        genres = genres.rename(columns={"movieId": ITEM_COL, "genres": "genres:token"})
        return titles.merge(genres.astype({ITEM_COL: str}), on=ITEM_COL, how="left")
    return _read_table(item_path, [ITEM_COL, *fmt.text_cols])


def _read_netflix_titles(path: Path) -> pd.DataFrame:
    """movie_titles.csv: latin-1 lines ``id,year,title`` split on the first two commas only
    (titles hold commas); a year of NULL counts as missing."""
    if not path.is_file():
        raise DataError(f"missing raw file {path} (Kaggle: netflix-inc/netflix-prize-data)")
    rows = []
    with open(path, encoding="latin-1") as f:
        for number, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split(",", 2)
            if len(parts) != 3:
                raise DataError(f"{path}: line {number} is not 'id,year,title': {line.strip()!r}")
            rows.append(parts)
    df = pd.DataFrame(rows, columns=[ITEM_COL, "year:token", "title:token"], dtype=object)
    return df.replace({"year:token": {"NULL": np.nan, "": np.nan}, "title:token": {"": np.nan}})


def _core(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep rows of items with >= k rows, then of users with >= k rows (one pass each)."""
    df = df[df[ITEM_COL].map(df[ITEM_COL].value_counts()) >= k]
    return df[df[USER_COL].map(df[USER_COL].value_counts()) >= k]


def split_interactions(df: pd.DataFrame, protocol: SplitProtocol = SplitProtocol()):
    """Steps 2-5 above on the joined, cleaned rows (ids already typed by ``_as_ids``).
    Returns (train_original, validation, test) with the three output columns."""
    while True:
        size = len(df)
        pos = _core(df[df[RATING_COL] >= protocol.positive], protocol.core)
        neg = df[df[RATING_COL] < protocol.positive]
        df = _core(pd.concat([pos, neg]), protocol.core)
        if len(df) == size:
            break
    pos = df[df[RATING_COL] >= protocol.positive]
    neg = df[df[RATING_COL] < protocol.positive]
    neg = neg[neg[USER_COL].isin(pos[USER_COL].unique())
              & neg[ITEM_COL].isin(pos[ITEM_COL].unique())]

    np.random.seed(protocol.seed)
    parts = {"train": [], "validation": [], "test": []}
    groups = pos.groupby(USER_COL, sort=True).indices  # user -> row positions, in row order
    for user in sorted(groups):
        rows = groups[user]
        n = len(rows)
        if n < protocol.min_split_rows:
            parts["train"].append(rows)
            continue
        idx = np.random.permutation(n)
        n_test, n_valid = int(protocol.test_ratio * n), int(protocol.valid_ratio * n)
        parts["test"].append(rows[np.sort(idx[:n_test])])
        parts["validation"].append(rows[np.sort(idx[n_test:n_test + n_valid])])
        parts["train"].append(rows[np.sort(idx[n_test + n_valid:])])

    def take(name):
        rows = np.concatenate(parts[name]) if parts[name] else np.empty(0, dtype=np.int64)
        return pos.iloc[rows][[USER_COL, ITEM_COL, RATING_COL]]

    train = pd.concat([take("train"), neg[[USER_COL, ITEM_COL, RATING_COL]]], ignore_index=True)
    return train, take("validation").reset_index(drop=True), take("test").reset_index(drop=True)


def prepare_frame(inter: pd.DataFrame, items: pd.DataFrame | None, text_cols,
                  protocol: SplitProtocol = SplitProtocol(), log=print):
    """Step 1 (join the item text, drop incomplete rows), drop rows repeating a (user, item)
    pair (the first of each is kept), then ``split_interactions``. Returns the three frames
    and the counts for the record."""
    counts = {"rows_read": len(inter)}
    if items is not None:
        inter = inter.merge(items[[ITEM_COL, *text_cols]], on=ITEM_COL, how="left")
    inter = inter.dropna(subset=[USER_COL, ITEM_COL, RATING_COL, *text_cols])
    inter = inter.assign(**{USER_COL: _as_ids(inter[USER_COL]),
                            ITEM_COL: _as_ids(inter[ITEM_COL])})
    repeated = inter.duplicated([USER_COL, ITEM_COL], keep="first")
    counts.update(rows_complete=len(inter), duplicates_dropped=int(repeated.sum()),
                  kept_of_duplicates=KEPT_OF_DUPLICATES)
    if repeated.any():
        log(f"dropped {int(repeated.sum()):,} duplicate (user, item) row(s) of "
            f"{len(inter):,} complete rows; kept {KEPT_OF_DUPLICATES}")
        inter = inter[~repeated]
    return split_interactions(inter.reset_index(drop=True), protocol), counts


def refuse_overwrite(out_dir, name: str, overwrite: bool) -> None:
    """Existing split files are replaced only with ``overwrite`` (DataError otherwise)."""
    existing = [p for p in (split_path(out_dir, name, s) for s in PREPARED_SPLITS) if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]} exists; pass --overwrite to replace the split files of "
                        f"{name} (a train_augment that does not relabel the new split is then "
                        f"renamed to *.stale), or choose another --data_dir")


def write_splits(out_dir, name: str, frames, log=print, core: int = 5,
                 record: dict | None = None) -> list[Path]:
    """Write train_original/validation/test exactly as ``to_csv(index=False)`` does (LF line
    ends on every OS), atomically (runs.files.atomic_write: a crash leaves no half file). An
    empty split, or a (user, item) pair in two splits, is an error before anything is
    written. ``record`` (source, parameters, counts) goes to ``prepared.json`` with the rows
    and git blobs written. A train_augment there that no longer relabels the new
    train_original is renamed ``*.stale`` (with its manifest), so nothing trains on it."""
    empty = [split for split, frame in zip(PREPARED_SPLITS, frames) if len(frame) == 0]
    if empty:
        raise DataError(f"{name}: the {empty[0]} split came out empty after {core}-core "
                        f"filtering (check --core, --positive, the split ratios and the "
                        f"ratings scale); nothing written")
    for shared in checks.overlaps(list(zip(PREPARED_SPLITS, frames))):
        raise DataError(f"{name}: refusing to write splits that share pairs: {shared}; "
                        f"nothing written")
    paths = []
    for split, frame in zip(PREPARED_SPLITS, frames):
        dest = split_path(out_dir, name, split)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, lambda f, frame=frame: frame.to_csv(f, index=False,
                                                              lineterminator="\n"))
        log(f"wrote {dest}: {len(frame):,} rows")
        paths.append(dest)
    if record is not None:
        record = {**record, "rows_written": {s: len(f) for s, f in zip(PREPARED_SPLITS, frames)},
                  "git_blobs": {p.name: git_blob_sha1(p) for p in paths}}
        atomic_write_text(paths[0].parent / RECORD_FILE, json.dumps(record, indent=2) + "\n")
    retire_stale_augment(split_path(out_dir, name, "train_augment"), paths[0], log)
    return paths


def retire_stale_augment(augment: Path, original: Path, log=print) -> None:
    """Rename a train_augment (and its manifest) that does not relabel ``original`` — other
    rows, or a manifest naming another input — to ``*.stale`` (``.stale2`` … if taken)."""
    if not augment.is_file():
        return
    try:
        checks.check_relabeling(read_split(original, is_train=True, warn=lambda _: None),
                                read_split(augment, is_train=True, warn=lambda _: None),
                                original, augment)
        checks.check_manifest(augment, original, warn=lambda _: None)
        log(f"kept {augment}: it relabels the new {original.name}")
        return
    except DataError:
        pass
    suffix, n = ".stale", 1
    while any(p.with_name(p.name + suffix).exists()
              for p in (augment, checks.manifest_path(augment))):
        n += 1
        suffix = f".stale{n}"
    for old in (augment, checks.manifest_path(augment)):
        if old.is_file():
            os.replace(old, old.with_name(old.name + suffix))
    log(f"renamed {augment.name} to {augment.name}{suffix}: it does not relabel the new "
        f"{original.name} (rebuild it with refine_llm.py)")


def prepare_dataset(dataset: str, raw_dir, out_dir, protocol: SplitProtocol = SplitProtocol(),
                    log=print, overwrite: bool = False) -> list[Path]:
    """Prepare a published dataset from its raw files in ``raw_dir`` (docs/datasets.md)."""
    fmt = raw_format(dataset)
    refuse_overwrite(out_dir, dataset, overwrite)
    raw_dir = Path(raw_dir)
    inter = _read_inter(raw_dir / f"{fmt.stem}.inter", fmt.sample_users, protocol.seed, log)
    items = _read_items(fmt, raw_dir, raw_dir / f"{fmt.stem}.item")
    frames, counts = prepare_frame(inter, items, fmt.text_cols, protocol, log)
    return write_splits(out_dir, dataset, frames, log, protocol.core,
                        _record(raw_dir / f"{fmt.stem}.inter", protocol, counts))


def prepare_custom(inter_path, name: str, out_dir, item_path=None, text_cols=None,
                   protocol: SplitProtocol = SplitProtocol(), sample_users: int = 0,
                   log=print, overwrite: bool = False) -> list[Path]:
    """Bring your own dataset: a RecBole .inter (user_id:token, item_id:token, rating:float)
    and optionally a .item whose ``text_cols`` (default: all its other columns) must be set."""
    refuse_overwrite(out_dir, name, overwrite)
    inter = _read_inter(Path(inter_path), sample_users, protocol.seed, log)
    items = None
    if item_path is not None:
        if not text_cols:
            header = pd.read_csv(item_path, sep="\t", nrows=0, quoting=csv.QUOTE_NONE)
            text_cols = [c for c in header.columns if c != ITEM_COL]
        items = _read_table(Path(item_path), [ITEM_COL, *text_cols])
    frames, counts = prepare_frame(inter, items, list(text_cols or []), protocol, log)
    return write_splits(out_dir, name, frames, log, protocol.core,
                        _record(Path(inter_path), protocol, counts))


def _record(inter_path: Path, protocol: SplitProtocol, counts: dict) -> dict:
    """What prepared.json says besides the output: the source file, the parameters and the
    counts of ``prepare_frame``."""
    return {"made_by": "python dataloader.py prepare",
            "source": {"path": inter_path.as_posix(), "bytes": inter_path.stat().st_size,
                       "sha1": file_sha1(inter_path)},
            "protocol": asdict(protocol), **counts}


# ----------------------------------------------------------------------------- stats

def dataset_stats(data_dir, dataset: str, warn=print) -> pd.DataFrame:
    """One row per split file present: users, items, rows, density, rating histogram."""
    rows = []
    for split in SPLITS:
        path = split_path(data_dir, dataset, split)
        if not path.is_file():
            continue
        df = read_split(path, is_train=split.startswith("train"), warn=warn)
        users, items = df[USER_COL].nunique(), df[ITEM_COL].nunique()
        row = {"split": split, "users": users, "items": items, "rows": len(df),
               "density": len(df) / (users * items)}
        counts = df[RATING_COL].value_counts()
        row.update({f"r={r:g}": int(counts.get(r, 0)) for r in TRAIN_RATINGS})
        rows.append(row)
    if not rows:
        raise DataError(f"no split files of {dataset} in {Path(data_dir) / dataset}")
    return pd.DataFrame(rows).set_index("split")


def format_stats(stats: pd.DataFrame) -> str:
    """The stats table plus, for train_augment, the share of LLM-refined rows (0.5 / 4.5)."""
    lines = [stats.to_string(formatters={"density": "{:.5f}".format})]
    if "train_augment" in stats.index:
        aug = stats.loc["train_augment"]
        refined = int(aug["r=0.5"] + aug["r=4.5"])
        neutral = int(aug["r=2"] + aug["r=3"])
        lines.append(f"refined rows in train_augment: {refined:,} of {int(aug['rows']):,} "
                     f"({refined / aug['rows']:.1%}); -> 4.5: {int(aug['r=4.5']):,}, "
                     f"-> 0.5: {int(aug['r=0.5']):,}; still 2/3: {neutral:,}")
    return "\n".join(lines)
