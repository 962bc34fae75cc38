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
from dataclasses import fields

from recommenders import (hnlmrec, lightgcn, mixgcf, pngnn, refine, refine_plus, semantic_neg,
                          siren)
from data.protocols import read_protocol
from data.splits import resolve_data_dir
from recommenders.base import Recommender, general_defaults
from runs.config import GENERAL_FIELDS, Config, ConfigError
from runs.seeds import resolve_seeds

MODELS: dict[str, Recommender] = {m.RECOMMENDER.name: m.RECOMMENDER for m in (
    refine_plus, refine, lightgcn, pngnn, siren, semantic_neg, mixgcf, hnlmrec)}


def setting_names(model: str) -> set[str]:
    return {f.name for f in fields(MODELS[model].settings)}


def owner_of(name: str) -> list[str]:
    """The models that have a setting ``name``."""
    return [m for m in MODELS if name in setting_names(m)]


def make_config(strict: bool = True, **flat) -> Config:
    """The Config of flat settings (flags, or a run's config.json): general settings, the
    model's own (its Settings), defaults by model and dataset, seeds resolved.

    ``strict``: a setting of another model is an error (on the command line); else (an old
    flat config.json, which held every model's settings) it is ignored."""
    model = flat.get("model", "refine_plus")
    if model not in MODELS:
        raise ConfigError(f"--model must be one of {', '.join(MODELS)}")
    recommender, dataset = MODELS[model], flat.get("dataset", Config.dataset)
    own = setting_names(model)
    unknown = sorted(set(flat) - set(GENERAL_FIELDS) - own - {"num_seeds"})
    if strict and unknown:
        others = owner_of(unknown[0])
        raise ConfigError(f"--{unknown[0]} is a setting of {', '.join(others) or 'no model'}, "
                          f"not of --model {model}")
    given = {k: v for k, v in flat.items() if v is not None or k in own}
    values = {**general_defaults(dataset), **recommender.defaults(dataset), **given}
    spec = read_protocol(resolve_data_dir(values.get("data_dir")), dataset)
    if spec is not None:  # a protocol folder (no validation): its epochs and test step
        values.setdefault("epochs", spec["epochs"])
        # it tests at the last epoch anyway: a short run needs no step flag
        values.setdefault("evaluation_step", min(spec["evaluation_step"], values["epochs"]))
    try:
        seeds = resolve_seeds(values.get("seeds"), values.get("num_seeds"),
                              values.get("random_seed", Config.random_seed))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    settings = recommender.settings(**{k: v for k, v in values.items() if k in own})
    general = {k: v for k, v in values.items() if k in GENERAL_FIELDS}
    config = Config(**{**general, "seeds": seeds}, settings=settings)
    recommender.check(config)
    return config


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--<name>`` flag per model setting (a name several models share: one flag)."""
    seen = set()
    for name, recommender in MODELS.items():
        for f in fields(recommender.settings):
            if f.name in seen:
                continue
            seen.add(f.name)
            meta = f.metadata
            kind = meta.get("type") or type(f.default)
            parser.add_argument(f"--{f.name}", type=kind, choices=meta.get("choices"),
                                help=f"{', '.join(owner_of(f.name))}: {meta.get('help', '')}")
