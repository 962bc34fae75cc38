"""The epochs of one run in its taken folder: the model and optimizer, one epoch after another
with validation and early stopping (or fixed epochs on a folder without validation), the
checkpoints, then the test of the selected model, per_user.npz and metrics.json.

What a run needs was checked before its folder was touched (runs/trainer.py builds
``Checked``); the run folder's files: runs/run_folder.py, docs/training.md.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import compare
from data import provenance
from dataloader import RecData
from recommenders.base import EvalIndex, Graphs, Recommender, TrainingError
from runs import distributed, environment, run_folder
from runs.evaluation import (breakdowns, disliked_at_k, evaluate_model, final_lines,
                             write_per_user)
from runs.cli import command_line
from runs.faults import fault_point
from runs.log_format import RULE, format_metrics
from runs.log_header import data_lines, header_lines
from runs.metrics import Results, as_named, early_stopping_score
from runs.resume import BEST_NEXT, all_finite
from runs.config import Config
from runs.files import append_synced, atomic_save, atomic_write_text, dump_json
from utils import EarlyStopping, RunLogger, rng_state, set_rng_state

# called as hook(training, score) after each validation (tune.py's pruning); empty otherwise
VALIDATION_HOOKS: list = []


@dataclass
class Checked:
    """Everything a run needs that was checked before its folder was touched."""

    run_dir: Path
    state: dict | None  # last.pt of a resumed run
    data: RecData
    inputs: list[provenance.FileRecord]
    recommender: Recommender
    graphs: Graphs
    splits: EvalIndex
    sampling: Any
    warnings: list[str] = field(default_factory=list)  # for train.log, once it exists
    last_stamp: tuple | None = None  # (mtime, size) of the last.pt that ``state`` came from


class Training:
    """The epochs of one run in its (taken) folder: model, optimizer, early stopping."""

    def __init__(self, config: Config, device, shard, checked: Checked, log: RunLogger):
        self.config, self.device, self.shard, self.checked, self.log = \
            config, device, shard, checked, log
        self.is_main = shard is None or shard.rank == 0
        self.run_dir, self.graphs, self.splits = checked.run_dir, checked.graphs, checked.splits
        self.model = checked.recommender.build(self.graphs, config).to(device)
        self.optimizer = checked.recommender.make_optimizer(self.model, config)
        self.stopper = EarlyStopping(config.early_stopping_step)
        self.epoch, self.train_seconds = 0, 0.0
        # a protocol folder without validation (data/protocols.py): fixed epochs, the test
        # metrics logged every --evaluation_step epochs and at the last, no model selection
        self.fixed_epochs = not checked.data.has_validation

    def run(self) -> dict | None:
        self.start()
        stop = self.stopper.should_stop
        while self.epoch < self.config.epochs and not stop:
            self.one_epoch()
            stop = self.stopper.should_stop
            if self.shard is not None:  # rank 0's decision for every rank
                stop = distributed.broadcast_flag(stop, self.device)
        return self.finish() if self.is_main else None

    def start(self) -> None:
        config, checked = self.config, self.checked
        if self.is_main:
            if checked.state is None:
                atomic_write_text(self.run_dir / "argv.txt", command_line("python main.py") + "\n")
                dump_json({**config.to_dict(), "inputs": provenance.as_dicts(checked.inputs)},
                          self.run_dir / "config.json")
            environment.record(self.run_dir, self.device, (checked.state or {}).get("epoch", 0))
        for line in header_lines(config, self.device, checked.inputs) + checked.warnings:
            self.log(line)
        if self.shard is not None:
            self.log(f"distributed: {self.shard.world} processes "
                     f"({torch.distributed.get_backend()}), global batch {config.batch_size}")
        for line in data_lines(config, checked.data):
            self.log(line)
        if checked.state is not None:
            self.restore(checked.state)

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.stopper.best_metrics = as_named(self.stopper.best_metrics, self.config.top_k)
        set_rng_state(state["rng"])
        if self.shard is not None and self.device.type == "cuda" and "cuda" in state["rng"]:
            # every rank continues rank 0's stream (its GPU 0), as they all drew it before
            torch.cuda.set_rng_state(state["rng"]["cuda"][0].cpu(), self.device)
        self.epoch, self.train_seconds = state["epoch"], state["train_seconds"]
        self.log(f"Resumed from {self.run_dir / 'last.pt'} after epoch {state['epoch']}.")

    def one_epoch(self) -> None:
        config = self.config
        self.epoch += 1
        tic = time.perf_counter()
        self.model.train()
        loss = self.train_epoch()
        # every rank: the parameters are the same on all of them, so all stop together
        if not all_finite(self.model.state_dict(), self.optimizer.state):
            raise TrainingError(f"non-finite parameters after epoch {self.epoch} (inf/NaN in "
                                f"the model or its optimizer state); nothing of epoch "
                                f"{self.epoch} was saved: {self.last_finite()}")
        train_time = time.perf_counter() - tic
        if not self.is_main:  # rank 0 evaluates, logs and saves; the others follow it
            return
        due = self.epoch % config.evaluation_step == 0 or \
            (self.fixed_epochs and self.epoch == config.epochs)
        results = (self.test_epoch(loss) if self.fixed_epochs else self.validate(loss)) \
            if due else None
        epoch_time = time.perf_counter() - tic
        self.train_seconds += epoch_time
        jsonl_bytes = append_synced(self.run_dir / "epochs.jsonl", json.dumps(
            {"epoch": self.epoch, "loss": loss, "train_s": train_time, "epoch_s": epoch_time,
             "test" if self.fixed_epochs else "valid": results}) + "\n")
        fault_point("epochs_jsonl", self.epoch)  # the window a resume must rewind (tests)
        # the log sizes let a resume drop what an interrupted later epoch wrote
        atomic_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "early_stopping": self.stopper.state_dict(), "rng": rng_state(),
                     "epoch": self.epoch, "train_seconds": self.train_seconds,
                     "log_bytes": self.log.sync(), "jsonl_bytes": jsonl_bytes,
                     "config": config.to_dict()}, self.run_dir / "last.pt")
        # only now the new best model becomes best.pt: a crash before this point re-runs
        # the epoch from last.pt, and best.pt still matches last.pt's early stopping
        if (self.run_dir / BEST_NEXT).is_file():
            fault_point("best_rename", self.epoch)  # tests: last.pt written, best.pt not yet
            os.replace(self.run_dir / BEST_NEXT, self.run_dir / "best.pt")

    def train_epoch(self) -> float:
        """The model's epoch; a float overflow in its optimizer step (Adam's lr / (1 -
        beta1^t) beyond float32 at a huge --learning_rate) is one line, not a traceback."""
        quiet = self.config.quiet or not self.is_main or not sys.stderr.isatty()
        try:
            with tqdm(desc=f"epoch {self.epoch}", unit="batch", file=sys.stderr, leave=False,
                      disable=quiet, mininterval=1) as progress:
                return self.checked.recommender.train_epoch(
                    self.model, self.optimizer, self.graphs, self.config, self.epoch,
                    self.checked.sampling, shard=self.shard, progress=progress)
        except RuntimeError as err:
            if isinstance(err, TrainingError) or "overflow" not in str(err):
                raise
            raise TrainingError(f"the optimizer step overflowed at epoch {self.epoch} "
                                f"({str(err).splitlines()[0][:80]}): --learning_rate "
                                f"{self.config.learning_rate:g} is too large; "
                                f"{self.last_finite()}") from None

    def last_finite(self) -> str:
        """Which checkpoints hold the last finite state. True by construction: last.pt is
        written after every epoch, and only after this check (a resumed one was checked
        when it was loaded); best.pt likewise."""
        done = self.epoch - 1
        if done == 0:
            return "no finite checkpoint exists (no epoch finished); start again with a " \
                   "lower --learning_rate"
        best = "" if self.fixed_epochs or not self.stopper.best_epoch else \
            f", best.pt holds epoch {self.stopper.best_epoch}"
        return f"last.pt of epoch {done} is the last finite checkpoint{best}; resuming " \
               f"repeats the same steps — start again with a lower --learning_rate"

    def evaluate_logged(self, loss: float, truth, note: str | None = None):
        """The epoch's block of the log: loss, then the metrics against ``truth``."""
        results = evaluate_model(self.model, self.graphs, self.splits.seen_by_user, truth,
                                 self.config, self.splits.popularity)
        self.log(f"\nEpoch: {self.epoch:03d}, Loss: {loss:.4f}")
        if note:
            self.log(note)
        for line in format_metrics(self.config.top_k, results):
            self.log(line)
        return results

    def validate(self, loss: float):
        results = self.evaluate_logged(loss, self.splits.valid_by_user)
        score = early_stopping_score(results, self.config.top_k)
        if self.stopper.step(self.epoch, score, results):
            atomic_save({"model": self.model.state_dict(), "config": self.config.to_dict(),
                         "epoch": self.epoch}, self.run_dir / BEST_NEXT)
            self.log(f"Save: {self.run_dir / 'best.pt'}")
        else:
            self.log(f"EarlyStopping counter: {self.stopper.counter} out of "
                     f"{self.stopper.patience}")
        for hook in VALIDATION_HOOKS:
            hook(self, score)
        return results

    def test_epoch(self, loss: float):
        """Fixed-epoch mode: the epoch's test metrics (the protocol's codes print them the
        same way); nothing is selected by them."""
        return self.evaluate_logged(loss, self.splits.test_by_user,
                                    "Test (no validation split; nothing is selected on it):")

    def log_final(self, test: Results) -> Results:  # + disliked@k on a dislikes variant
        test = {**test, **disliked_at_k(self.model, self.graphs, self.splits, self.config)}
        self.log(f"\nTraining completed in {self.train_seconds} seconds.")
        self.log("\n" + RULE)
        self.log("Final Test Results")
        for line in final_lines(self.config.top_k, test):
            self.log(line)
        self.log(provenance.final_line(self.checked.inputs))
        self.log(RULE)
        return test

    def finish_fixed(self) -> dict:
        """Fixed-epoch mode: the model after the last epoch, tested; metrics.json also holds
        the test metrics of every evaluated epoch (from epochs.jsonl)."""
        self.log(f"\nReached --epochs {self.config.epochs} (no validation split: the final "
                 f"test is the model after the last epoch).")
        test = evaluate_model(self.model, self.graphs, self.splits.seen_by_user,
                              self.splits.test_by_user, self.config, self.splits.popularity)
        test = self.log_final(test)
        write_per_user(self.run_dir, self.model, self.graphs, self.splits, self.config,
                       self.epoch, with_validation=False)
        by_epoch = {str(epoch): as_named(results, self.config.top_k) for epoch, results
                    in run_folder.logged_epochs(self.run_dir, "test")}
        metrics = {**self.metrics(test), "best_epoch": self.epoch, "best_validation": {},
                   "selection": "none: fixed epochs, no validation split",
                   "test_by_epoch": by_epoch}
        dump_json(metrics, self.run_dir / "metrics.json")
        return metrics

    def finish(self) -> dict:
        """The best validation block, the test of best.pt, metrics.json."""
        if self.fixed_epochs:
            return self.finish_fixed()
        config, stopper, log = self.config, self.stopper, self.log
        if stopper.best_epoch == 0:
            raise TrainingError("no evaluation happened")
        if stopper.should_stop:
            log(f"\nEarly stopping at epoch {stopper.best_epoch}. Best Validation Results:")
        else:
            log(f"\nReached --epochs {config.epochs} without early stopping; best epoch "
                f"{stopper.best_epoch}. Best Validation Results:")
        for line in format_metrics(config.top_k, stopper.best_metrics):
            log(line)
        test = self.test_best()
        test = self.log_final(test)
        write_per_user(self.run_dir, self.model, self.graphs, self.splits, config,
                       stopper.best_epoch, with_validation=True)
        metrics = self.metrics(test)
        dump_json(metrics, self.run_dir / "metrics.json")
        if config.compare_to:
            for line in compare.lines_after_run([*config.compare_to, str(self.run_dir)]):
                log(line)
        return metrics

    def test_best(self):
        best = torch.load(self.run_dir / "best.pt", map_location=self.device, weights_only=False)
        if best["epoch"] != self.stopper.best_epoch:  # best.pt edited or replaced by hand
            raise TrainingError(f"best.pt holds epoch {best['epoch']}, the best validation "
                                f"epoch is {self.stopper.best_epoch}; start the run again")
        if not all_finite(best["model"], {}):  # a best.pt of a version before the check
            raise TrainingError("best.pt holds non-finite parameters; no test is reported")
        self.model.load_state_dict(best["model"])
        return evaluate_model(self.model, self.graphs,
                              self.splits.test_mask(self.config.mask_valid_in_test),
                              self.splits.test_by_user, self.config, self.splits.popularity)

    def metrics(self, test: Results) -> dict:
        return {"dataset": self.config.dataset, "best_epoch": self.stopper.best_epoch,
                "last_epoch": self.epoch, "early_stopped": self.stopper.should_stop,
                "best_validation": self.stopper.best_metrics, "test": test,
                "breakdowns": breakdowns(self.model, self.graphs, self.splits, self.config),
                "train_seconds": self.train_seconds,
                "seconds_per_epoch": self.train_seconds / max(self.epoch, 1),
                "inputs": provenance.as_dicts(self.checked.inputs)}
