"""Per-(user, item) vectors in one file: the LLM hard-negative embeddings that
``--model hnlmrec`` trains with (written by ``python -m llm.hnlm embed`` or the SCFT step).

An ``.npz`` with ``users`` and ``items`` (the dataset's ids as strings, one pair per row),
``vectors`` (rows x d float32) and ``about`` (a JSON string: what wrote it and from what).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from data.schema import DataError
from runs.files import atomic_write


def write_pair_vectors(path: Path, users, items, vectors: np.ndarray, about: dict) -> None:
    """Write the file atomically (a reader never sees half of it)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if not (len(users) == len(items) == vectors.shape[0]) or vectors.ndim != 2:
        raise ValueError("users, items and vectors must have one row per pair")
    arrays = dict(users=np.asarray(users, dtype=str), items=np.asarray(items, dtype=str),
                  vectors=vectors, about=np.asarray(json.dumps(about, sort_keys=True)))
    atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def read_pair_vectors(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(users, items, vectors, about); DataError with the reason when the file is unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such vector file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            users, items, vectors = npz["users"], npz["items"], npz["vectors"]
            about = json.loads(str(npz["about"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a vector file of (user, item) pairs "
                        f"({type(err).__name__})") from None
    if vectors.ndim != 2 or not (len(users) == len(items) == vectors.shape[0]):
        raise DataError(f"{path}: users, items and vectors differ in length")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise DataError(f"{path}: vectors of type {vectors.dtype}, not floats")
    vectors = vectors.astype(np.float32, copy=False)  # the training dtype
    if not np.isfinite(vectors).all():
        raise DataError(f"{path}: holds non-finite values")
    return users, items, vectors, about


def pair_vector_dim(path: Path) -> int:
    """The vectors' dimension, read from the array header alone (the file may be GBs)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("vectors.npy") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, _ = read(f)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a vector file of (user, item) pairs "
                        f"({type(err).__name__})") from None
    if len(shape) != 2:
        raise DataError(f"{path}: vectors of shape {shape}, not (pairs, dimension)")
    return int(shape[1])
