"""The model registry behind ``--model``: one file per recommender, each declaring a
``RECOMMENDER`` (recommenders/base.py's spec: its settings, graph, model, optimizer,
sampling, epoch and log header).

- ``refine_plus`` (default): ReFINe++ — refine_plus.py
- ``refine``: ReFINe — refine.py
- ``lightgcn``: LightGCN — lightgcn.py
- ``pngnn``, ``siren``: a positive and a negative signal fused by attention — pngnn.py,
  siren.py (shared parts in signed.py)
- ``semantic_neg``: LightGCN with hard negatives by item-text similarity — semantic_neg.py
- ``mixgcf``: LightGCN with negatives synthesized by positive and hop mixing — mixgcf.py
- ``hnlmrec``: LightGCN with LLM hard-negative vectors mixed into its negatives — hnlmrec.py

Adding a model: a new file with its ``RECOMMENDER`` and one line in ``MODELS`` below.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any

from recommenders import (hnlmrec, lightgcn, mixgcf, pngnn, refine, refine_plus, semantic_neg,
                          siren)
from data.dislikes import base_dataset
from data.protocols import read_protocol
from data.splits import resolve_data_dir
from recommenders.base import Recommender
from runs.config import GENERAL_FIELDS, Config, ConfigError
from runs.seeds import resolve_seeds

MODELS: dict[str, Recommender] = {m.RECOMMENDER.name: m.RECOMMENDER for m in (
    refine_plus, refine, lightgcn, pngnn, siren, semantic_neg, mixgcf, hnlmrec)}
DEFAULT_MODEL = "refine_plus"


def setting_names(model: str) -> set[str]:
    return {f.name for f in fields(MODELS[model].settings)}


def owner_of(name: str) -> list[str]:
    """The models that have a setting ``name``."""
    return [m for m in MODELS if name in setting_names(m)]


def defaults_of(model: str, dataset: str | None = None) -> dict[str, Any]:
    """Every default of --model ``model`` on ``dataset`` (None: a dataset with no defaults of
    its own): Config's, the model's own settings', then what the model declares — its
    general defaults, then those of the dataset. The one place defaults are merged."""
    recommender = MODELS[model]
    own = {f.name: f.default for f in fields(recommender.settings) if f.default is not MISSING}
    general = {f.name: f.default for f in fields(Config)
               if f.name in GENERAL_FIELDS and f.default is not MISSING}
    return {**general, **own, **recommender.defaults,
            **recommender.dataset_defaults.get(dataset, {})}


def show_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(show_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_text(model: str, name: str) -> str:
    """How ``--model X -h`` states the default of ``name``: ``4``, or ``4; Amazon_Books: 2``
    when a dataset has its own."""
    recommender, base = MODELS[model], defaults_of(model)[name]
    special = [f"{dataset}: {show_value(values[name])}"
               for dataset, values in recommender.dataset_defaults.items()
               if name in values and values[name] != base]
    return "; ".join([show_value(base), *special])


def make_config(strict: bool = True, **flat) -> Config:
    """The Config of flat settings (flags, or a run's config.json): general settings, the
    model's own (its Settings), defaults by model and dataset, seeds resolved.

    ``strict``: a setting of another model is an error (on the command line); else (an old
    flat config.json, which held every model's settings) it is ignored."""
    model = flat.get("model") or DEFAULT_MODEL
    if model not in MODELS:
        raise ConfigError(f"--model must be one of {', '.join(MODELS)}")
    recommender, dataset = MODELS[model], flat.get("dataset") or Config.dataset
    own = setting_names(model)
    unknown = sorted(set(flat) - set(GENERAL_FIELDS) - own - {"num_seeds"})
    if strict and unknown:
        raise ConfigError(not_a_setting(unknown[0], model))
    given = {k: v for k, v in flat.items() if v is not None or k in own}
    data_dir = resolve_data_dir(given.get("data_dir"))
    # a variant folder (data/dislikes.py) runs with the defaults of its source dataset
    values = {**defaults_of(model, base_dataset(data_dir, dataset)), **given, "model": model}
    spec = read_protocol(data_dir, dataset)
    if spec is not None:  # a protocol folder (no validation): its epochs and test step
        if "epochs" not in given:
            values["epochs"] = spec["epochs"]
        if "evaluation_step" not in given:  # it tests at the last epoch anyway
            values["evaluation_step"] = min(spec["evaluation_step"], values["epochs"])
    try:
        seeds = resolve_seeds(values.get("seeds"), values.get("num_seeds"),
                              values["random_seed"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    settings = recommender.settings(**{k: v for k, v in values.items() if k in own})
    general = {k: v for k, v in values.items() if k in GENERAL_FIELDS}
    config = Config(**{**general, "seeds": seeds}, settings=settings)
    recommender.check(config)
    return config


def not_a_setting(name: str, model: str) -> str:
    others = owner_of(name)
    if others:
        return f"--{name} is a setting of {', '.join(others)}, not of --model {model}"
    return f"--{name} is not a flag of --model {model} (python main.py --model {model} -h)"


def add_setting_flags(parser: argparse.ArgumentParser, model: str) -> None:
    """One ``--<name>`` flag per setting of ``model``, its help ending in its defaults."""
    group = parser.add_argument_group(f"settings of --model {model}")
    for f in fields(MODELS[model].settings):
        meta = f.metadata
        kind = meta.get("type") or type(f.default)
        stated = "" if f.default is None else f" (default {default_text(model, f.name)})"
        group.add_argument(f"--{f.name}", type=kind, choices=meta.get("choices"),
                           help=meta.get("help", "") + stated)
