"""A finished run folder's best model, rebuilt on the data it trained on — for the steps
that start from a trained model (llm/augment.py's candidates, llm/scft.py's MixGCF labels)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

import dataloader
from data import provenance
from data.schema import DataError
from recommenders import MODELS, make_config
from recommenders.base import Graphs, build_graphs


@dataclass
class Trained:
    config: object
    data_dir: Path
    data: object  # dataloader.RecData
    graphs: Graphs
    model: torch.nn.Module  # best.pt's weights, in eval mode
    inputs: list  # the provenance records of the data files (checked unchanged)


def load_trained(run_dir: Path, dataset: str, data_dir: str | None, flag: str = "--base_run",
                 model: str | None = None) -> Trained:
    """The run's config and best model on its data; DataError when the folder is not a
    finished run, is of another dataset (or ``model``), or its data files changed since."""
    run_dir = Path(run_dir)
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    except (OSError, ValueError, RuntimeError) as err:
        raise DataError(f"{flag} {run_dir}: not a finished run ({err})") from None
    config = make_config(strict=False, **{**{k: v for k, v in saved.items() if k != "inputs"},
                                          "data_dir": data_dir or saved.get("data_dir")})
    if config.dataset != dataset:
        raise DataError(f"{flag} {run_dir} trained on {config.dataset}, not {dataset}")
    if model is not None and config.model != model:
        raise DataError(f"{flag} {run_dir} is a --model {config.model} run, not {model}")
    resolved = dataloader.resolve_data_dir(config.data_dir)
    data = dataloader.load_dataset(resolved, config.dataset, config.dataset_augment,
                                   warn=lambda line: None)
    inputs = [provenance.record_file(role, path, resolved) for role, path in data.files]
    change = provenance.first_change(saved.get("inputs") or [], inputs)
    if change:
        raise DataError(f"{flag} {run_dir}: {change}; its embeddings would be of other data")
    graphs = build_graphs(data, "cpu", MODELS[config.model].positives_graph)
    net = MODELS[config.model].build(graphs, config)
    net.load_state_dict(best["model"])
    net.eval()
    return Trained(config, resolved, data, graphs, net, inputs)
