"""Reading a split file in bounded memory: chunks of rows with explicit dtypes, ids turned
into integer codes chunk by chunk, so memory grows with the rows kept (two int32 codes and a
float32 rating each, plus every distinct id once), not with the file's text (~70 bytes a row
at the peak, against ~137 for whole-file string frames: tests/test_loading_memory.py).

A ``CodedSplit`` is one split file as arrays: ``users``/``items`` are codes into the
``Vocab`` of the user/item id strings (shared by the files of one dataset, so the same id is
the same code in every file), ``ratings`` the float ratings. The checks are those of
``data.splits.read_split`` (which returns ``CodedSplit.frame()``), in the same order, with
the same messages; duplicates are found on int64 keys ``user * n_items + item``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.schema import EVAL_RATINGS, ITEM_COL, RATING_COL, TRAIN_RATINGS, USER_COL, DataError

SPLIT_COLUMNS = (USER_COL, ITEM_COL, RATING_COL)
CHUNK_ROWS = 1 << 18
NEED_PER_ROW = 100  # bytes per row loading takes at its peak (~70 measured, ids add more)


class Vocab:
    """Distinct id strings, coded 0, 1, … in the order they first occur."""

    def __init__(self):
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._codes)

    def encode(self, values) -> np.ndarray:
        """The codes of ``values`` (strings), new ones added; int32 while they fit."""
        local, uniques = pd.factorize(np.asarray(values, dtype=object))
        table = np.fromiter((self._codes.setdefault(u, len(self._codes)) for u in uniques),
                            dtype=np.int64, count=len(uniques))
        codes = table[local] if len(local) else np.zeros(0, dtype=np.int64)
        return codes.astype(np.int32) if len(self._codes) < 2 ** 31 else codes

    def strings(self) -> np.ndarray:
        """The id strings in code order (an object array)."""
        out = np.empty(len(self._codes), dtype=object)
        out[:] = list(self._codes)
        return out


@dataclass
class CodedSplit:
    """One split file's rows (after the checks and without duplicates) as codes."""

    path: Path | None
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    user_vocab: Vocab
    item_vocab: Vocab

    def __len__(self) -> int:
        return len(self.ratings)

    def keys(self) -> np.ndarray:
        """One int64 per row naming its (user, item) pair (the same pair, the same key, in
        every split sharing these vocabularies)."""
        return self.users.astype(np.int64) * max(len(self.item_vocab), 1) + self.items

    def frame(self, rows=None) -> pd.DataFrame:
        """The rows (all, or the positions ``rows``) as ``read_split`` gives them: id
        strings and float64 ratings."""
        take = slice(None) if rows is None else rows
        return pd.DataFrame({USER_COL: pd.array(self.user_vocab.strings()[self.users[take]],
                                                dtype=str),
                             ITEM_COL: pd.array(self.item_vocab.strings()[self.items[take]],
                                                dtype=str),
                             RATING_COL: self.ratings[take].astype(np.float64)})

    @staticmethod
    def of_frame(path: Path | None, df: pd.DataFrame, users: Vocab, items: Vocab):
        """A frame of ``read_split`` (e.g. a protocol folder's) coded with ``users``/``items``."""
        return CodedSplit(path, users.encode(df[USER_COL].to_numpy(dtype=object)),
                          items.encode(df[ITEM_COL].to_numpy(dtype=object)),
                          df[RATING_COL].to_numpy(dtype=np.float32), users, items)


def read_table(path: Path, columns=SPLIT_COLUMNS, **read_csv_args) -> pd.DataFrame:
    """A comma-separated file with (at least) ``columns``, ids as strings; one-line
    DataError when it cannot be parsed, lacks a column, or uses another delimiter (the
    split loader reads the header this way, ``nrows=0``, then the rows in chunks)."""
    dtype = read_csv_args.pop("dtype", {USER_COL: str, ITEM_COL: str})
    try:
        df = pd.read_csv(path, dtype=dtype, **read_csv_args)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as CSV ({str(err).splitlines()[0]})") from None
    check_columns(path, list(df.columns), columns)
    return df


def check_columns(path: Path, found: list, columns=SPLIT_COLUMNS) -> None:
    missing = [c for c in columns if c not in found]
    if missing:
        other = next((name for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe"))
                      if len(found) == 1 and sep in str(found[0])), None)
        if other:
            raise DataError(f"{path}: the file looks {other}-separated; split files are "
                            f"comma-separated ({', '.join(SPLIT_COLUMNS)})")
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found "
                        f"{', '.join(map(str, found))}")


def _chunks(path: Path):
    """The file's rows in chunks of ``CHUNK_ROWS`` (ids as strings, the rest as pandas
    infers them per chunk), after checking the header; parse errors as one line."""
    read_table(path, nrows=0)  # the header: missing columns, another delimiter
    try:
        reader = pd.read_csv(path, dtype={USER_COL: str, ITEM_COL: str}, chunksize=CHUNK_ROWS)
        with reader:
            yield from reader
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        if "out of memory" in str(err):  # the C tokenizer's own MemoryError
            raise MemoryError(str(err)) from None
        raise DataError(f"{path}: cannot be read as CSV ({str(err).splitlines()[0]})") from None


class _Problems:
    """What is wrong with a file, gathered over its chunks and reported as read_split did:
    non-numeric ratings first, then empty ids, then unexpected ratings."""

    def __init__(self):
        self.bad, self.first_bad, self.empty, self.unexpected, self.values = 0, None, 0, 0, []

    def raise_first(self, path: Path, expected) -> None:
        if self.bad:
            row, value = self.first_bad
            shown = "empty" if pd.isna(value) else repr(str(value))
            raise DataError(f"{path}: {self.bad} non-numeric or empty rating(s), first at data "
                            f"row {row + 1}: {shown}")
        if self.empty:
            raise DataError(f"{path}: empty user or item id in {self.empty} row(s)")
        if self.unexpected:
            raise DataError(f"{path}: {self.unexpected} rating(s) outside {list(expected)}, "
                            f"e.g. {self.values}")


def read_coded(path: Path, *, is_train: bool, users: Vocab, items: Vocab,
               warn=print) -> CodedSplit:
    """``read_split``'s checks and result as codes, reading ``path`` chunk by chunk."""
    expected = TRAIN_RATINGS if is_train else EVAL_RATINGS  # eval rows < 4 are dropped later
    problems, parts, offset = _Problems(), ([], [], []), 0
    for chunk in _chunks(path):
        ratings = pd.to_numeric(chunk[RATING_COL], errors="coerce").to_numpy(np.float64)
        bad = np.isnan(ratings)  # non-numeric (coerced to NaN) or empty
        if bad.any() and problems.first_bad is None:
            row = int(np.flatnonzero(bad)[0])
            problems.first_bad = (offset + row, chunk[RATING_COL].iloc[row])
        problems.bad += int(bad.sum())
        problems.empty += int((chunk[USER_COL].isna() | chunk[ITEM_COL].isna()).sum())
        unexpected = ~np.isin(ratings, expected) & ~bad
        if unexpected.any():
            problems.unexpected += int(unexpected.sum())
            problems.values = sorted(set(problems.values)
                                     | set(np.unique(ratings[unexpected]).tolist()))[:5]
        offset += len(chunk)
        if problems.bad or problems.empty or problems.unexpected:
            continue  # only counting from here on
        parts[0].append(users.encode(chunk[USER_COL].to_numpy(dtype=object)))
        parts[1].append(items.encode(chunk[ITEM_COL].to_numpy(dtype=object)))
        parts[2].append(ratings.astype(np.float32))
    problems.raise_first(path, expected)
    joined = []
    for column in parts:  # one column at a time: its chunks go as it is joined
        joined.append(np.concatenate(column) if column else np.zeros(0, np.int32))
        column.clear()
    split = CodedSplit(path, joined[0], joined[1], joined[2].astype(np.float32), users, items)
    del joined
    dup = repeated(split.keys())
    if dup.any():
        warn(f"warning: {path.name}: {int(dup.sum())} duplicate (user, item) row(s); "
             f"kept the first of each")
        split = CodedSplit(path, split.users[~dup], split.items[~dup], split.ratings[~dup],
                           users, items)
    if len(split) == 0:
        raise DataError(f"{path}: the split is empty")
    return split


def repeated(keys: np.ndarray) -> np.ndarray:
    """True for every key equal to an earlier one (``duplicated(keep="first")``), by a
    stable sort: about 24 bytes a row, less than a hash table of int64 keys."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    del keys
    out = np.zeros(len(ordered), dtype=bool)
    out[order[1:][ordered[1:] == ordered[:-1]]] = True
    return out


def out_of_memory(paths) -> DataError:
    """The one line for a MemoryError while loading ``paths``: how much memory they need,
    roughly (their rows, estimated from the first MiB, times ``NEED_PER_ROW``)."""
    paths = [Path(p) for p in paths if p is not None and Path(p).is_file()]
    size = sum(p.stat().st_size for p in paths)
    rows = 0
    for p in paths:
        with open(p, "rb") as f:
            head = f.read(1 << 20)
        rows += p.stat().st_size * max(head.count(b"\n"), 1) // max(len(head), 1)
    need = rows * NEED_PER_ROW + size // 4
    names = ", ".join(p.name for p in paths)
    return DataError(f"out of memory while loading {names} ({size / 2 ** 30:.2f} GiB on disk, "
                     f"about {rows:,} rows): loading needs roughly {need / 2 ** 30:.1f} GiB of "
                     f"free memory; free some or use a machine with more")
