"""Small helpers of a run: seeding and RNG states, early stopping, the run logger, the
device. (Evaluation: runs/metrics.py; the log format and parser: runs/log_format.py; the
crash-test hooks: runs/faults.py.)"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from runs.files import write_error


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); the one place for determinism switches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """Every RNG state a run draws from, for an exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved. torch wants CPU ByteTensors, so states that a
    ``torch.load(map_location="cuda")`` moved to the GPU are brought back first."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------------------- early stop

@dataclass
class EarlyStopping:
    """Patience on a score that should rise; a score >= the best (ties included) resets."""

    patience: int
    best_score: float = float("-inf")
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)  # results by name (runs/metrics.py)
    counter: int = 0

    @property
    def should_stop(self) -> bool:
        return self.counter >= self.patience

    def step(self, epoch: int, score: float, metrics: dict) -> bool:
        """Record one evaluation; True when it is the new best (save the model then)."""
        if score >= self.best_score:
            self.best_score, self.best_epoch, self.best_metrics = score, epoch, metrics
            self.counter = 0
            return True
        self.counter += 1
        return False

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


# ---------------------------------------------------------------------------- logging

class RunLogger:
    """Writes every line to stdout and to the run's train.log (flushed, so a kill loses
    nothing); a write the file system refuses is a WriteError naming train.log."""

    def __init__(self, path: Path | None, quiet: bool = False):
        self.path = path
        try:
            self.file = open(path, "a", encoding="utf-8") if path else None
        except OSError as err:
            raise write_error(path, err) from None
        self.quiet = quiet

    def __call__(self, line: str = "") -> None:
        if not self.quiet:
            print(line, flush=True)
        self._write(line)

    def _write(self, line: str) -> None:
        if self.file:
            try:
                self.file.write(line + "\n")
                self.file.flush()
            except OSError as err:
                raise write_error(self.path, err) from None

    def to_file(self, line: str) -> None:
        """A line for train.log only (an error main() also prints to stderr); as the error
        may be that train.log cannot be written, a failure here is left unsaid."""
        try:
            self._write(line)
        except OSError:
            pass

    def sync(self) -> int:
        """Flush train.log to disk; its size in bytes (what a resume truncates it back to)."""
        if not self.file:
            return 0
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as err:
            raise write_error(self.path, err) from None
        return os.fstat(self.file.fileno()).st_size

    def close(self) -> None:
        """Every line was flushed when written (a refused one raised then); what a full disk
        still holds in the buffer is dropped rather than raised a second time."""
        if self.file:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None


def resolve_device(device: str, gpu_id: int | None = None) -> torch.device:
    """auto -> cuda:gpu_id (or cuda) when available, else cpu; cuda/cuda:N must exist."""
    if device == "auto":
        if torch.cuda.is_available():
            if gpu_id is not None and gpu_id >= torch.cuda.device_count():
                raise ValueError(f"--gpu_id {gpu_id}: only {torch.cuda.device_count()} GPU(s) "
                                 f"present")
            return torch.device(f"cuda:{gpu_id}" if gpu_id is not None else "cuda")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) present")
    return dev

