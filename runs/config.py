"""The settings of one training run, built once (recommenders.make_config) and passed down.

``Config`` holds what every model shares — data, batches, embedding size, layers, learning
rate, evaluation, early stopping, device, run folder — under the reference's flag names;
``settings`` holds the model's own, a dataclass declared in its file under recommenders/
(read as ``config.settings.<name>`` by that model's code; generic code never reads it).
``to_dict`` is the flat form config.json keeps, so the config.json of any earlier run still
loads. Imports nothing of the project but the error
base class.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import PurePosixPath
from typing import Any

from data.errors import UserError

MAX_SEED = 2 ** 32 - 1  # numpy's seed range
MAX_THREADS = 512  # far more than any CPU here; thousands of threads crash torch


class ConfigError(UserError, ValueError):
    """An invalid flag or combination of flags."""


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def require(*checks: tuple[bool, str]) -> None:
    """ConfigError with the message of the first (ok, message) whose ok is False."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def path_name_ok(name: str) -> bool:
    """A run folder name stays inside <result_dir>/<dataset>/: relative, no '..' part."""
    path = PurePosixPath(name)
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts \
        and "\\" not in name


@dataclass
class Config:
    """Every setting of a run that is not a model's own; the reference's flag names."""

    dataset: str = "ML-100K"
    model: str = "refine_plus"
    dataset_augment: str = "augment"
    data_dir: str | None = None
    random_seed: int = 2024
    batch_size: int = 1024
    test_batch_size: int = 8192
    embedding_dim: int = 64
    layers: int = 4  # the model's and dataset's default: recommenders.make_config
    learning_rate: float = 1e-3
    evaluation_step: int = 1
    early_stopping_step: int = 50
    top_k: tuple[int, ...] = (5, 10, 15, 20)
    epochs: int = 1000
    mask_valid_in_test: bool = False
    allow_split_overlap: bool = False  # a (user, item) pair in two splits: warn, not refuse
    device: str = "auto"
    gpu_id: int | None = None
    threads: int = 0
    path_name: str | None = None
    result_dir: str = "result"
    resume: str | None = None
    quiet: bool = False
    flush_denormal: bool = True
    download: bool = True
    base_url: str | None = None
    download_timeout: float = 900.0  # a split file's download in all, seconds (as
    download_max_mb: float = 4096.0  # data/transfer.py's defaults; a test holds them equal)
    seeds: tuple[int, ...] | None = None  # several runs, one per seed (runs/seeds.py)
    compare_to: tuple[str, ...] | None = None  # logs/runs to compare with at the end
    settings: Any = None  # the model's own settings (its file's Settings dataclass)

    def __post_init__(self):
        self.top_k = tuple(sorted(int(k) for k in self.top_k))
        if self.seeds is not None:
            self.seeds = tuple(int(s) for s in self.seeds)
        if self.compare_to is not None:
            self.compare_to = tuple(str(x) for x in self.compare_to)
        require(
            (self.dataset_augment in ("augment", "original"),
             "--dataset_augment must be augment or original"),
            (self.batch_size > 0 and self.test_batch_size > 0, "batch sizes must be positive"),
            (self.embedding_dim > 0 and self.layers >= 0, "--embedding_dim > 0 and --layers >= 0"),
            (self.epochs > 0 and self.evaluation_step > 0,
             "--epochs and --evaluation_step must be > 0"),
            (self.early_stopping_step > 0, "--early_stopping_step must be > 0"),
            (self.learning_rate > 0, "--learning_rate must be > 0"),
            (len(self.top_k) > 0 and self.top_k[0] > 0, "--top_k needs positive values"),
            (self.threads >= 0, "--threads must be >= 0 (0: every core available)"),
            (0 <= self.random_seed <= MAX_SEED, f"--random_seed must be in 0..{MAX_SEED}"),
            (all(0 <= s <= MAX_SEED for s in self.seeds or ()),
             f"--seeds must be in 0..{MAX_SEED}"),
            (self.evaluation_step <= self.epochs,
             f"--evaluation_step {self.evaluation_step} > --epochs {self.epochs}: no "
             f"validation would ever run"),
            (re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             f"--device {self.device}: not supported; use auto, cpu, cuda or cuda:N"),
            (len(set(self.top_k)) == len(self.top_k), "--top_k values must be distinct"),
            (self.threads <= MAX_THREADS, f"--threads must be <= {MAX_THREADS}"),
            (self.gpu_id is None or self.gpu_id >= 0, "--gpu_id must be >= 0"),
            (self.result_dir != "", "--result_dir must not be empty"),
            (positive(self.download_timeout),
             f"--download_timeout must be a positive number of seconds, got "
             f"{self.download_timeout}"),
            (positive(self.download_max_mb),
             f"--download_max_mb must be a positive number of MiB, got {self.download_max_mb}"),
            (self.path_name is None or path_name_ok(self.path_name),
             f"--path_name {self.path_name!r}: a name (or relative path) inside "
             f"<result_dir>/<dataset>/, without '..'"))

    def to_dict(self) -> dict:
        """The flat form of config.json: the general settings, then the model's own."""
        general = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}
        return {**general, **(asdict(self.settings) if self.settings is not None else {})}


GENERAL_FIELDS = tuple(f.name for f in fields(Config) if f.name != "settings")
