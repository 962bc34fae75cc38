"""Seeding, metrics, evaluation, early stopping, run logging and the log parser."""
from __future__ import annotations

import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from dataloader import RowIndex

RULE = "#" * 77


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


CRASH_ENV, WAIT_ENV = "REFINE_CRASH_AT", "REFINE_WAIT_AT"


def fault_point(name: str, epoch: int | None = None) -> None:
    """A named point of a run for the crash-consistency tests, inert unless asked for:
    ``$REFINE_CRASH_AT=name[:epoch]`` kills the process here with SIGKILL (as ``kill -9``);
    ``$REFINE_WAIT_AT=name:FILE`` creates FILE.<pid> and waits here until FILE exists."""
    crash = os.environ.get(CRASH_ENV)
    if crash and crash in (name, f"{name}:{epoch}"):
        os.kill(os.getpid(), signal.SIGKILL)
    wait = os.environ.get(WAIT_ENV, "")
    if wait.startswith(f"{name}:"):
        barrier = Path(wait.split(":", 1)[1])
        Path(f"{barrier}.{os.getpid()}").touch()
        while not barrier.exists():
            time.sleep(0.0002)


# ----------------------------------------------------------------------------- metrics
# hits: (B, K) 0/1 float, hits[b, r] = 1 if the item ranked r+1 for user b is relevant;
# num_relevant: (B,) number of ground-truth items of each user (> 0).

def precision_at_k(hits: Tensor, k: int) -> Tensor:
    """hits@k / k per user."""
    return hits[:, :k].sum(1) / k


def recall_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """hits@k / |GT_u| per user."""
    return hits[:, :k].sum(1) / num_relevant


def ndcg_at_k(hits: Tensor, num_relevant: Tensor, k: int) -> Tensor:
    """DCG@k / IDCG@k per user, binary gains, discount 1 / log2(rank + 1); the ideal DCG
    places min(|GT_u|, k) hits first."""
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=hits.device, dtype=hits.dtype))
    dcg = (hits[:, :k] * discount).sum(1)
    ideal = torch.cumsum(discount, 0)[(num_relevant.clamp(max=k) - 1).long()]
    return dcg / ideal


@torch.no_grad()
def evaluate(user_emb: Tensor, item_emb: Tensor, exclude: RowIndex, truth: RowIndex,
             ks: tuple[int, ...], block_size: int = 8192) -> list[tuple[float, float, float]]:
    """(precision, recall, NDCG) at each k, averaged over users with >= 1 ground-truth item.

    Scores E_u · E_i for all items, -inf on ``exclude`` (the user's training rows); top-k
    once at max(k) per block of users, so memory stays at block_size x I.
    """
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    max_k = max(ks)
    block_size = max(1, min(block_size, (1 << 24) // num_items))
    sums = torch.zeros(len(ks), 3, dtype=torch.float64, device=user_emb.device)
    num_relevant_all = truth.degree()
    counted = 0
    for start in range(0, num_users, block_size):
        rows = torch.arange(start, min(start + block_size, num_users), device=user_emb.device)
        num_relevant = num_relevant_all[rows]
        has_truth = num_relevant > 0
        if not has_truth.any():
            continue
        scores = user_emb[rows] @ item_emb.t()  # (B, I)
        owner, cols = exclude.gather(rows)
        scores[owner, cols] = float("-inf")
        top = scores.topk(max_k, dim=1).indices  # (B, max_k)
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        owner, cols = truth.gather(rows)
        relevant[owner, cols] = True
        hits = relevant.gather(1, top)[has_truth].to(torch.float64)
        num_relevant = num_relevant[has_truth].to(torch.float64)
        for j, k in enumerate(ks):
            sums[j, 0] += precision_at_k(hits, k).sum()
            sums[j, 1] += recall_at_k(hits, num_relevant, k).sum()
            sums[j, 2] += ndcg_at_k(hits, num_relevant, k).sum()
        counted += int(has_truth.sum())
    means = (sums / max(counted, 1)).tolist()
    return [tuple(row) for row in means]


# ------------------------------------------------------------------------- early stop

@dataclass
class EarlyStopping:
    """Patience on a score that should rise; a score >= the best (ties included) resets."""

    patience: int
    best_score: float = float("-inf")
    best_epoch: int = 0
    best_metrics: list = field(default_factory=list)
    counter: int = 0

    @property
    def should_stop(self) -> bool:
        return self.counter >= self.patience

    def step(self, epoch: int, score: float, metrics: list) -> bool:
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

def format_metrics(ks, results) -> list[str]:
    """The reference's four metric lines (k < 10 padded to width 7)."""
    lines = []
    for k, (p, r, n) in zip(ks, results):
        w = 7 if k < 10 else 0
        lines.append(f"Precision@{k}: {p:{w}.4f}, Recall@{k}: {r:{w}.4f}, NDCG@{k}: {n:{w}.4f}")
    return lines


class RunLogger:
    """Writes every line to stdout and to the run's train.log (flushed, so a kill loses nothing)."""

    def __init__(self, path: Path | None, quiet: bool = False):
        self.file = open(path, "a", encoding="utf-8") if path else None
        self.quiet = quiet

    def __call__(self, line: str = "") -> None:
        if not self.quiet:
            print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def to_file(self, line: str) -> None:
        """A line for train.log only (an error main() also prints to stderr)."""
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def sync(self) -> int:
        """Flush train.log to disk; its size in bytes (what a resume truncates it back to)."""
        if not self.file:
            return 0
        self.file.flush()
        os.fsync(self.file.fileno())
        return os.fstat(self.file.fileno()).st_size

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None


# ----------------------------------------------------------------------------- parser

_METRIC = re.compile(r"Precision@(\d+):\s*([-\d.naif]+),\s*Recall@\d+:\s*([-\d.naif]+),"
                     r"\s*NDCG@\d+:\s*([-\d.naif]+)")
_EPOCH = re.compile(r"^Epoch:\s*(\d+),\s*Loss:\s*([-\d.naif]+)")
_KV = re.compile(r"^([A-Za-z_][\w ]*?):\s+(.*)$")


def parse_log(path: str | Path) -> dict:
    """Read a ReFINe/ReFINe++ training log, ours or the reference's, into a dict:

    ``hparams`` (header name: value strings), ``stats`` (user, item, train/valid/test
    counts), ``epochs`` (list of {epoch, loss, metrics: {k: (P, R, NDCG)}}),
    ``best_epoch``, ``best_valid`` ({k: (P, R, NDCG)}), ``train_seconds``, ``test``
    ({k: (P, R, NDCG)} or None when the log has no final test block).
    """
    out = {"hparams": {}, "stats": {}, "epochs": [], "best_epoch": None, "best_valid": None,
           "train_seconds": None, "test": None}
    section, header_blocks = "header", 0
    sink = None  # the {k: (P, R, NDCG)} dict the next metric lines belong to
    for raw in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if line == RULE:
            header_blocks += 1
            continue
        m = _EPOCH.match(line)
        if m:
            section = "epoch"
            epoch = {"epoch": int(m.group(1)), "loss": float(m.group(2)), "metrics": {}}
            out["epochs"].append(epoch)
            sink = epoch["metrics"]
            continue
        m = _METRIC.search(line)
        if m and sink is not None:
            sink[int(m.group(1))] = tuple(float(m.group(i)) for i in (2, 3, 4))
            continue
        if "Best Validation Results" in line:
            m = re.search(r"epoch (\d+)", line)
            out["best_epoch"] = int(m.group(1)) if m else None
            out["best_valid"] = sink = {}
            continue
        if line.startswith("Final Test Results"):
            out["test"] = sink = {}
            continue
        m = re.match(r"Training completed in ([\d.]+) seconds", line)
        if m:
            out["train_seconds"] = float(m.group(1))
            continue
        if section == "header":
            m = re.match(r"^user:\s*(\d+),\s*item:\s*(\d+)", line)
            if m:
                out["stats"]["user"], out["stats"]["item"] = int(m.group(1)), int(m.group(2))
                continue
            m = re.match(r"^(train|valid|test) interations:\s*(\d+)", line)
            if m:
                out["stats"][m.group(1)] = int(m.group(2))
                continue
            m = _KV.match(line)
            if m and header_blocks <= 1:
                out["hparams"][m.group(1)] = m.group(2)
    return out


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


def command_line() -> str:
    return " ".join([Path(sys.executable).name] + sys.argv)
