"""Where split files live and how one is read and validated.

Layout: ``<data_dir>/<DATASET>/<DATASET>_{train_augment,train_original,validation,test}.csv``
(columns: data.schema). The data folder is ``--data_dir``, else ``$REFINE_DATA_DIR``, else
``dataset/``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from data.registry import published_key
from data.schema import DataError
from data.table import SPLIT_COLUMNS, CodedSplit, Vocab, out_of_memory, read_coded, read_table

DATA_DIR_ENV = "REFINE_DATA_DIR"
__all__ = ["DATA_DIR_ENV", "SPLIT_COLUMNS", "read_split", "read_split_coded", "read_table",
           "resolve_data_dir", "split_path"]


def resolve_data_dir(data_dir: str | None = None) -> Path:
    """``--data_dir`` if given, else ``$REFINE_DATA_DIR``, else ``dataset/``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or "dataset")


def split_path(data_dir: str | Path, dataset: str, split: str) -> Path:
    """Path of one split file; ``split`` is train_augment, train_original, validation or test."""
    return Path(data_dir) / published_key(dataset, split)


def read_split(path: Path, *, is_train: bool, warn=print) -> pd.DataFrame:
    """Read and validate one split file; returns the three columns, first row of duplicates kept.

    Raises DataError (one line) for a missing file, missing columns, non-numeric or
    unexpected ratings and empty splits; read in chunks (data/table.py).
    """
    return read_split_coded(path, is_train=is_train, warn=warn).frame()


def read_split_coded(path: Path, *, is_train: bool, warn=print, users: Vocab | None = None,
                     items: Vocab | None = None) -> CodedSplit:
    """``read_split`` as codes into ``users``/``items`` (new vocabularies when None); a
    MemoryError becomes one line saying roughly how much memory the file needs."""
    if not path.is_file():
        raise DataError(
            f"missing data file {path}: download the published splits "
            f"(python dataloader.py download --dataset {path.parent.name}) or place them there "
            f"(set --data_dir or ${DATA_DIR_ENV} to another folder)")
    try:
        return read_coded(path, is_train=is_train, warn=warn,
                          users=Vocab() if users is None else users,
                          items=Vocab() if items is None else items)
    except MemoryError:
        raise out_of_memory([path]) from None
