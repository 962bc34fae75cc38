"""Where split files live and how one is read and validated.

Layout: ``<data_dir>/<DATASET>/<DATASET>_{train_augment,train_original,validation,test}.csv``
(columns: data.schema). The data folder is ``--data_dir``, else ``$REFINE_DATA_DIR``, else
``dataset/``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from data.registry import published_key
from data.schema import EVAL_RATINGS, ITEM_COL, RATING_COL, TRAIN_RATINGS, USER_COL, DataError

DATA_DIR_ENV = "REFINE_DATA_DIR"
SPLIT_COLUMNS = (USER_COL, ITEM_COL, RATING_COL)


def resolve_data_dir(data_dir: str | None = None) -> Path:
    """``--data_dir`` if given, else ``$REFINE_DATA_DIR``, else ``dataset/``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or "dataset")


def split_path(data_dir: str | Path, dataset: str, split: str) -> Path:
    """Path of one split file; ``split`` is train_augment, train_original, validation or test."""
    return Path(data_dir) / published_key(dataset, split)


def read_split(path: Path, *, is_train: bool, warn=print) -> pd.DataFrame:
    """Read and validate one split file; returns the three columns, first row of duplicates kept.

    Raises DataError (one line) for a missing file, missing columns, non-numeric or
    unexpected ratings and empty splits.
    """
    if not path.is_file():
        raise DataError(
            f"missing data file {path}: download the published splits "
            f"(python dataloader.py download --dataset {path.parent.name}) or place them there "
            f"(set --data_dir or ${DATA_DIR_ENV} to another folder)")
    df = read_table(path)
    df = df[[USER_COL, ITEM_COL, RATING_COL]]
    ratings = pd.to_numeric(df[RATING_COL], errors="coerce")
    bad = ratings.isna()  # non-numeric (coerced to NaN) or empty
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = df[RATING_COL].iloc[row]
        shown = "empty" if pd.isna(value) else repr(str(value))
        raise DataError(f"{path}: {int(bad.sum())} non-numeric or empty rating(s), first at data "
                        f"row {row + 1}: {shown}")
    if df[USER_COL].isna().any() or df[ITEM_COL].isna().any():
        raise DataError(f"{path}: empty user or item id in "
                        f"{int((df[USER_COL].isna() | df[ITEM_COL].isna()).sum())} row(s)")
    df = df.assign(**{RATING_COL: ratings.astype(np.float64)})
    expected = TRAIN_RATINGS if is_train else EVAL_RATINGS  # eval rows < 4 are dropped later
    unexpected = ~df[RATING_COL].isin(expected)
    if unexpected.any():
        values = sorted(df.loc[unexpected, RATING_COL].unique().tolist())[:5]
        raise DataError(f"{path}: {int(unexpected.sum())} rating(s) outside "
                        f"{list(expected)}, e.g. {values}")
    dup = df.duplicated([USER_COL, ITEM_COL], keep="first")
    if dup.any():
        warn(f"warning: {path.name}: {int(dup.sum())} duplicate (user, item) row(s); "
             f"kept the first of each")
        df = df[~dup]
    if len(df) == 0:
        raise DataError(f"{path}: the split is empty")
    return df.reset_index(drop=True)


def read_table(path: Path, columns=SPLIT_COLUMNS, **read_csv_args) -> pd.DataFrame:
    """A comma-separated file with (at least) ``columns``, ids as strings; one-line
    DataError when it cannot be parsed, lacks a column, or uses another delimiter."""
    dtype = {USER_COL: str, ITEM_COL: str}
    try:
        df = pd.read_csv(path, dtype=read_csv_args.pop("dtype", dtype), **read_csv_args)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        other = next((name for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe"))
                      if len(df.columns) == 1 and sep in str(df.columns[0])), None)
        if other:
            raise DataError(f"{path}: the file looks {other}-separated; split files are "
                            f"comma-separated ({', '.join(SPLIT_COLUMNS)})")
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found "
                        f"{', '.join(map(str, df.columns))}")
    return df
