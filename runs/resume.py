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

BEST_NEXT = "best.next.pt"  # a new best model, until the epoch's last.pt is written
# the settings --resume may change (main.py refuses the others on the command line)
RESUME_OVERRIDES = ("epochs", "device", "gpu_id", "threads", "data_dir", "quiet", "download",
                    "base_url", "download_timeout", "download_max_mb", "compare_to")
# where the run is, not how it trains: a moved run folder keeps its settings
LOCATIONS = ("resume", "result_dir", "path_name")
LOGS = (("train.log", "log_bytes"), ("epochs.jsonl", "jsonl_bytes"))


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
    if not isinstance(state, dict) or not {"epoch", "model", "early_stopping"} <= set(state):
        raise ConfigError(f"--resume {run_dir}: last.pt is not a checkpoint of a run")
    if not all_finite(state["model"], state.get("optimizer", {}).get("state", {})):
        raise ConfigError(f"--resume {run_dir}: last.pt (epoch {state['epoch']}) holds non-finite "
                          f"parameters (inf/NaN, saved by a version before this check); "
                          f"continuing it cannot give numbers — start the run again")
    check_log_sizes(run_dir, state)
    best_epoch = state["early_stopping"]["best_epoch"]
    if best_epoch > 0 and saved_epoch(run_dir / "best.pt") != best_epoch \
            and saved_epoch(run_dir / BEST_NEXT) != best_epoch:
        what = "damaged or of another epoch" if (run_dir / "best.pt").is_file() else "missing"
        raise ConfigError(f"--resume {run_dir}: best.pt is {what} (epoch {best_epoch} was the "
                          f"best so far); the final test needs it — restore it or start the "
                          f"run again")
    return state


def all_finite(model_state: dict, optimizer_state: dict) -> bool:
    """No inf/NaN in a model's state_dict nor in an optimizer's per-parameter state (Adam's
    moments). One min and max per tensor (NaN propagates through both; unlike a sum they
    never overflow), gathered on one device, one host sync: 17 ms for an ML-1M ReFINe++
    and its Adam state on one CPU thread (a max-|x| norm: 190 ms)."""
    tensors = [t for t in [*model_state.values(),
                           *(v for per_param in optimizer_state.values()
                             for v in per_param.values())]
               if torch.is_tensor(t) and t.is_floating_point() and t.numel() > 0]
    if not tensors:
        return True
    ends = [torch.stack(torch.aminmax(t)).to(tensors[0].device) for t in tensors]
    return bool(torch.isfinite(torch.cat(ends)).all())


def saved_epoch(path: Path) -> int | None:
    """The epoch a best.pt holds, or None when the file is missing or unreadable."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)["epoch"]
    except Exception:  # noqa: BLE001 - any damage means: not usable
        return None


def no_finished_epoch(run_dir: Path) -> str:
    return (f"--resume {run_dir}: no finished epoch there (no last.pt); re-run the same "
            f"command: a run folder without a finished epoch is started over")


def check_same_settings(run_dir: Path, settings: dict, state: dict) -> None:
    """The settings a resume was given (the run's config.json, or a multi-seed run's
    seeds.json, with the flags a resume may change) must be those last.pt was trained with:
    an edited file would silently continue with another learning rate, or fail on another
    model's shapes after the folder was touched. Settings only one side knows (a setting
    added by a later version) are not compared."""
    trained = state.get("config")
    if not isinstance(trained, dict):  # a last.pt of before its config was saved
        return
    for key, value in trained.items():
        if key in RESUME_OVERRIDES or key in LOCATIONS or key not in settings:
            continue
        if as_json(settings[key]) != as_json(value):
            own = as_json(read_config(run_dir).get(key)) == as_json(settings[key])
            source = "config.json" if own else "seeds.json"  # else: the multi-seed run's
            raise ConfigError(f"--resume {run_dir}: {source} has {key} {settings[key]}, but "
                              f"last.pt was trained with {key} {value}; a resumed run keeps "
                              f"its settings (only {resume_flags()} may change) — "
                              f"restore {source} or start a new run")


def resume_flags() -> str:
    """The flags a resume may change, as the user types them."""
    return ", ".join("--no_download" if k == "download" else f"--{k}" for k in RESUME_OVERRIDES)


def as_json(value):
    return json.loads(json.dumps(value, default=str))  # tuples as lists, as in config.json


def read_config(run_dir: Path) -> dict:
    """The run's config.json ({} when unreadable): it names the file a differing setting
    came from (a seed resumed with its multi-seed run takes its settings from seeds.json)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def trained_config(run_dir: Path) -> dict | None:
    """The settings ``run_dir``'s last.pt was trained with (None: none readable); mapped,
    not read whole."""
    try:
        state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False,
                           mmap=True)
    except Exception:  # noqa: BLE001 - a missing or damaged last.pt is judged on resume
        return None
    return state.get("config") if isinstance(state, dict) else None


def check_log_sizes(run_dir: Path, state: dict) -> None:
    """A resume cuts train.log and epochs.jsonl back to the sizes last.pt recorded; a file
    shorter than that (cut or replaced since) cannot be rewound — truncating would pad it
    with NUL bytes."""
    for name, key in LOGS:
        path = run_dir / name
        if key not in state or not path.is_file():
            continue
        size = path.stat().st_size
        if size < state[key]:
            raise ConfigError(f"--resume {run_dir}: {name} is {size} bytes, shorter than the "
                              f"{state[key]} bytes last.pt recorded after epoch "
                              f"{state['epoch']} (cut or replaced since); restore it or start "
                              f"the run again")


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
    epoch a kill interrupted after its lines were written is logged once, when it re-runs;
    settle a best.next.pt (the new best model is renamed to best.pt after last.pt is
    written): kept when last.pt counts it as the best, else dropped (its epoch re-runs)."""
    check_log_sizes(run_dir, state)  # again: nothing may be cut unless all can be
    pending = run_dir / BEST_NEXT
    if pending.is_file():
        if saved_epoch(pending) == state["early_stopping"]["best_epoch"]:
            os.replace(pending, run_dir / "best.pt")
        else:
            pending.unlink()
    for name, key in LOGS:
        path = run_dir / name
        if key in state and path.is_file():
            os.truncate(path, state[key])
        elif name == "epochs.jsonl" and path.is_file():  # a last.pt of before the sizes
            rows = [r for r in path.read_text().splitlines(keepends=True)
                    if r.strip().startswith("{") and r.endswith("\n")
                    and json.loads(r)["epoch"] <= state["epoch"]]
            atomic_write_text(path, "".join(rows))
