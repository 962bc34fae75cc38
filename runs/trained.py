"""A finished run folder's best model, rebuilt on the data it trained on — for the steps
that start from a trained model (llm/augment.py's candidates, llm/scft.py's MixGCF labels,
recommend.py's top-k lists and embeddings) — and each user's top items under it."""
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
    data: object  # dataloader.RecData, after the model's transform (an LLM augmentation)
    graphs: Graphs
    model: torch.nn.Module  # best.pt's weights, in eval mode
    inputs: list  # the provenance records of the files the run read (checked unchanged)
    best_epoch: int | None = None  # the epoch best.pt holds
    run_dir: Path | None = None
    unfinished: str | None = None  # why the run did not finish (None: it did)

    def record(self) -> dict:
        """What a manifest says of the run: where, which model, which epochs, finished."""
        record = dict(path=str(self.run_dir), model=self.config.model,
                      best_epoch=self.best_epoch, epochs=self.config.epochs,
                      finished=self.unfinished is None)
        return {**record, "unfinished": self.unfinished} if self.unfinished else record


def read_run(run_dir: Path, flag: str) -> tuple[dict, dict]:
    """(config.json, best.pt) of a finished run folder; DataError (one line) otherwise."""
    for name, what in (("config.json", "not a run folder"),
                       ("best.pt", "no validated epoch yet, removed, or a run without a "
                                   "validation split, which selects no model")):
        if not (run_dir / name).is_file():
            raise DataError(f"{flag} {run_dir}: no {name} there ({what})")
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{flag} {run_dir}: config.json is unreadable "
                        f"({str(err).splitlines()[0][:120]})") from None
    try:
        best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch.load of a damaged file raises anything
        what = "an empty file" if (run_dir / "best.pt").stat().st_size == 0 else \
            f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:100]}"
        raise DataError(f"{flag} {run_dir}: best.pt is unreadable ({what}); a damaged or "
                        f"truncated checkpoint: train the run again") from None
    if not isinstance(saved, dict) or not isinstance(best, dict) or "model" not in best:
        raise DataError(f"{flag} {run_dir}: config.json or best.pt is not a run's")
    return saved, best


def unfinished(run_dir: Path, best_epoch, epochs) -> str | None:
    """Why the run did not finish, or None when it did: its metrics.json (written at the
    end, removed when a run is resumed) is there and names best.pt's epoch."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except FileNotFoundError:
        return (f"it did not finish (no metrics.json): killed or still running; best.pt "
                f"holds epoch {best_epoch} of --epochs {epochs}")
    except (OSError, ValueError):
        return "it did not finish (metrics.json is unreadable)"
    said = metrics.get("best_epoch") if isinstance(metrics, dict) else None
    if said != best_epoch:
        return (f"it did not finish as it is now: metrics.json names epoch {said}, best.pt "
                f"holds epoch {best_epoch}")
    return None


def inputs_now(saved: list, data_files: list, data_dir: Path, where: str) -> list:
    """The provenance records of the files now: the data files read again, and every other
    recorded input (a model's sampling file: a text cache, HNLMRec's vectors) where it was
    recorded, so that a change of any file the run read is seen; DataError when one of
    those is gone."""
    now = [provenance.record_file(role, path, data_dir) for role, path in data_files]
    read = {r.role for r in now}
    for record in saved if isinstance(saved, list) else []:
        if isinstance(record, dict) and record.get("role") not in read and "path" in record:
            path = provenance.located(record, data_dir)
            if not path.is_file():
                raise DataError(f"{where}: {path} (its {record['role']}) is missing")
            now.append(provenance.record_file(record["role"], path, data_dir))
    return now


def load_trained(run_dir: Path, dataset: str | None, data_dir: str | None,
                 flag: str = "--base_run", model: str | None = None,
                 unfinished_flag: str | None = None) -> Trained:
    """The run's config and best model on its data, with the model's transform (an LLM
    augmentation's edges) as training applied it; DataError when the folder is not a
    run, is of another dataset (``dataset`` None: any) or ``model``, or a file it read
    changed since. ``unfinished_flag``: a run that did not finish is refused, naming this
    flag that accepts it (None: accepted; ``Trained.unfinished`` says why it is one)."""
    run_dir = Path(run_dir)
    saved, best = read_run(run_dir, flag)
    config = make_config(strict=False, **{**{k: v for k, v in saved.items() if k != "inputs"},
                                          "data_dir": data_dir or saved.get("data_dir")})
    why = unfinished(run_dir, best.get("epoch"), config.epochs)
    if why and unfinished_flag:
        raise DataError(f"{flag} {run_dir}: {why}; finish it (python main.py --resume "
                        f"{run_dir}) or pass {unfinished_flag} to use that best.pt")
    if dataset is not None and config.dataset != dataset:
        raise DataError(f"{flag} {run_dir} trained on {config.dataset}, not {dataset}")
    if model is not None and config.model != model:
        raise DataError(f"{flag} {run_dir} is a --model {config.model} run, not {model}")
    resolved = dataloader.resolve_data_dir(config.data_dir)
    data = dataloader.load_dataset(resolved, config.dataset, config.dataset_augment,
                                   warn=lambda line: None,
                                   allow_overlap=config.allow_split_overlap)
    recommender = MODELS[config.model]
    data = recommender.transform(data, config, lambda line: None)  # training's graph
    inputs = inputs_now(saved.get("inputs") or [], data.files, resolved, f"{flag} {run_dir}")
    change = provenance.first_change(saved.get("inputs") or [], inputs)
    if change:
        raise DataError(f"{flag} {run_dir}: {change}; its embeddings would be of other data")
    graphs = build_graphs(data, "cpu", recommender.positives_graph)
    net = recommender.build(graphs, config)
    try:
        net.load_state_dict(best["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise DataError(f"{flag} {run_dir}: best.pt does not fit its config.json's model "
                        f"({(str(err).splitlines() or [''])[0][:100]})") from None
    net.eval()
    return Trained(config, resolved, data, graphs, net, inputs, best.get("epoch"), run_dir, why)


def top_items(e_users: torch.Tensor, e_items: torch.Tensor, seen, k: int,
              rows: torch.Tensor | None = None, block: int = 4096):
    """Per block of users (all, or ``rows``): (the block's user indices, (B, k) item
    indices, (B, k) scores), each user's k best-scored items with its rows in ``seen`` (a
    RowIndex: the training rows) masked to -inf; a block holds at most 2^24 scores."""
    rows = torch.arange(e_users.size(0)) if rows is None else rows
    block = max(1, min(block, (1 << 24) // max(e_items.size(0), 1)))
    for start in range(0, rows.numel(), block):
        part = rows[start:start + block]
        scores = e_users[part] @ e_items.t()
        owner, cols = seen.gather(part)
        scores[owner, cols] = float("-inf")
        top = scores.topk(k, dim=1)
        yield part, top.indices, top.values
