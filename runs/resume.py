"""Continuing a run (``--resume``): what is checked before anything is appended to its
folder — last.pt readable, best.pt there, the data files the ones the run started on —
and the rewind of train.log and epochs.jsonl to last.pt's epoch, so that after ``kill -9``
at any point every epoch appears exactly once in both."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import torch

from data import provenance
from runs.config import ConfigError
from runs.files import atomic_write_text


def load_resume_state(run_dir: Path, device) -> dict:
    """last.pt of the run to continue, after checking it and best.pt can be used; raises
    ConfigError (one line) and writes nothing."""
    try:
        state = torch.load(run_dir / "last.pt", map_location=device, weights_only=False)
    except FileNotFoundError:
        raise ConfigError(no_finished_epoch(run_dir)) from None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, pickle errors
        raise ConfigError(f"--resume {run_dir}: last.pt cannot be read "
                          f"({str(err).splitlines()[0][:120]}); it is damaged, so the run "
                          f"cannot continue exactly — start it again") from None
    best = run_dir / "best.pt"
    if state["early_stopping"]["best_epoch"] > 0 and not zipfile.is_zipfile(best):
        what = "damaged" if best.is_file() else "missing"
        raise ConfigError(f"--resume {run_dir}: best.pt is {what} (epoch "
                          f"{state['early_stopping']['best_epoch']} was the best so far); "
                          f"the final test needs it — restore it or start the run again")
    return state


def no_finished_epoch(run_dir: Path) -> str:
    return (f"--resume {run_dir}: no finished epoch there (no last.pt); re-run the same "
            f"command: a run folder without a finished epoch is started over")


def check_resumed_inputs(run_dir: Path, inputs: list[provenance.FileRecord]) -> None:
    """The data files must be the ones the run started on (config.json's ``inputs``)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text()).get("inputs")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ConfigError(f"--resume {run_dir}: config.json is damaged") from None
    if saved is None:  # a run folder made before inputs were recorded
        return
    change = provenance.first_change(saved, inputs)
    if change:
        raise ConfigError(f"--resume {run_dir}: {change}; continuing would mix two datasets "
                          f"in one run — restore the file or start a new run")


def rewind_to_checkpoint(run_dir: Path, state: dict) -> None:
    """Cut train.log and epochs.jsonl back to what they held when last.pt was written, so an
    epoch a kill interrupted after its lines were written is logged once, when it re-runs."""
    for name, key in (("train.log", "log_bytes"), ("epochs.jsonl", "jsonl_bytes")):
        path = run_dir / name
        if key in state and path.is_file():
            os.truncate(path, state[key])
        elif name == "epochs.jsonl" and path.is_file():  # a last.pt of before the sizes
            rows = [r for r in path.read_text().splitlines(keepends=True)
                    if json.loads(r)["epoch"] <= state["epoch"]]
            atomic_write_text(path, "".join(rows))
