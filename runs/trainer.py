"""One training run end to end: check everything, take the run folder, train with
validation and early stopping, test the best checkpoint, write metrics.json.

Flags, device, data (and its fit with what a resumed run started on), the sampling's
feasibility and the checkpoint to resume are all checked before anything is written, so a
bad flag or a missing/broken file leaves no half-made run behind; an error after that also
goes into train.log. The run folder's files: runs/run_folder.py, docs/training.md.
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
import dataloader
from data import provenance
from data.protocols import read_protocol
from data.errors import UserError
from dataloader import RecData
from recommenders import MODELS
from recommenders.base import (EvalIndex, Graphs, Recommender, TrainingError, build_eval_index,
                               build_graphs)
from runs import distributed, environment, run_folder
from runs.evaluation import (breakdowns, disliked_at_k, evaluate_model, final_lines,
                             write_per_user)
from runs.cli import command_line
from runs.faults import fault_point
from runs.log_format import RULE, format_metrics
from runs.log_header import data_lines, header_lines
from runs.metrics import Results, as_named, early_stopping_score
from runs.resume import BEST_NEXT, check_resumed_inputs, load_resume_state, rewind_to_checkpoint
from runs.config import Config, ConfigError
from runs.files import atomic_save, atomic_write_text, dump_json
from utils import (EarlyStopping, RunLogger, resolve_device, rng_state, seed_everything,
                   set_rng_state)


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


def run(config: Config) -> dict | None:
    """Train (or resume) one run and return its metrics.json content (None on ranks > 0)."""
    device, shard = setup_device(config)
    try:
        checked = check_before_writing(config, device, shard)
        return train_in_folder(config, device, shard, checked)
    finally:
        if shard is not None:
            distributed.finish()


def setup_device(config: Config):
    """The device (one GPU per process under torchrun), CPU threads, the process group."""
    world = distributed.world_size_from_env()
    recommender = MODELS[config.model]
    if world > 1 and recommender.distributed is None:
        able = ", ".join(name for name, r in MODELS.items() if r.distributed is not None)
        raise ConfigError(f"--model {config.model} does not train under torchrun "
                          f"(distributed); models that do: {able}")
    refusal = recommender.distributed(config.settings) if world > 1 else None
    if refusal:
        raise ConfigError(refusal)
    try:
        device = resolve_device(config.device, config.gpu_id)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank())
        torch.cuda.set_device(device)
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(config.threads
                              or max(1, len(os.sched_getaffinity(0)) // local_world))
        # Subnormal floats (|x| < 1.2e-38, e.g. from saturated AE sigmoids) made CPU steps
        # 3.5x slower late in training; flushing them to zero changes no printed digit.
        torch.set_flush_denormal(config.flush_denormal)
    return device, distributed.init(device) if world > 1 else None


def check_before_writing(config: Config, device, shard) -> Checked:
    is_main = shard is None or shard.rank == 0
    resuming = config.resume is not None
    run_dir = Path(config.resume) if resuming else (
        Path(config.result_dir) / config.dataset / (config.path_name or run_folder.default_name()))
    state = load_resume_state(run_dir, device) if resuming else None
    stamp = file_stamp(run_dir / "last.pt") if resuming else None
    if not resuming:
        run_folder.check_result_dir(config.result_dir)
    data_dir = dataloader.resolve_data_dir(config.data_dir)
    warnings: list[str] = []

    def prepare_data():  # rank 0 first: only it downloads
        splits = [f"train_{config.dataset_augment}", "validation", "test"]
        if read_protocol(data_dir, config.dataset) is None:  # a protocol folder: checked
            dataloader.ensure_split_files(data_dir, config.dataset, splits,
                                          download=config.download and is_main,
                                          base_url=config.base_url,
                                          log=(lambda line: None) if config.quiet else print)
        return dataloader.load_dataset(data_dir, config.dataset, config.dataset_augment,
                                       warn=warnings.append,
                                       allow_overlap=config.allow_split_overlap)
    data = main_rank_first(prepare_data, shard, device)
    if not data.has_validation and config.compare_to:
        raise ConfigError("--compare_to compares best-validation runs; this folder has no "
                          "validation split")
    if config.top_k[-1] > data.num_items:
        raise ConfigError(f"--top_k {config.top_k[-1]}: the dataset has only "
                          f"{data.num_items} items")
    recommender = MODELS[config.model]
    data = recommender.transform(data, config, warnings.append)
    graphs = build_graphs(data, device, recommender.positives_graph)
    sampling = recommender.prepare(graphs, config)  # raises when sampling is infeasible
    warnings += getattr(sampling, "warnings", [])
    inputs = [provenance.record_file(role, path, data_dir)
              for role, path in [*data.files, *getattr(sampling, "inputs", [])]]
    if resuming:
        check_resumed_inputs(run_dir, inputs)
    return Checked(run_dir, state, data, inputs, recommender, graphs,
                   build_eval_index(data, device, graphs.seen_by_user), sampling, warnings, stamp)


def file_stamp(path: Path) -> tuple:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


def main_rank_first(fn, shard, device):
    """fn() on rank 0, then on the other ranks; an error on rank 0 stops every rank."""
    if shard is None:
        return fn()
    result, error = None, None
    if shard.rank == 0:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below, after telling the others
            error = err
    if not distributed.all_ok(error is None, device):
        if error is not None:
            raise error
        raise TrainingError("rank 0 failed; see its error")
    return result if shard.rank == 0 else fn()


def train_in_folder(config: Config, device, shard, checked: Checked) -> dict | None:
    """Take the run folder (rank 0), log, train; an error also ends up in train.log."""
    is_main, run_dir = shard is None or shard.rank == 0, checked.run_dir
    fault_point("claim")

    def take_folder():  # rank 0 only; an error there stops every rank (no deadlock)
        if not is_main:
            return None
        return run_folder.open_existing(run_dir) if checked.state is not None else \
            run_folder.claim_new(run_dir)
    folder = main_rank_first(take_folder, shard, device)
    try:
        if checked.state is not None and is_main:
            if file_stamp(run_dir / "last.pt") != checked.last_stamp:
                raise run_folder.RunFolderError(
                    f"{run_dir / 'last.pt'} changed while this resume was starting (another "
                    f"process continued the run); run the command again")
            rewind_to_checkpoint(run_dir, checked.state)
            (run_dir / "metrics.json").unlink(missing_ok=True)  # unfinished until it ends
        if folder is not None and folder.started_over:
            checked.warnings.insert(0, f"note: {run_dir} held no finished epoch (a run that "
                                       f"failed early); started over in it")
        seed_everything(config.random_seed)
        log = RunLogger(run_dir / "train.log" if is_main else None,
                        quiet=config.quiet or not is_main)
        try:
            return Training(config, device, shard, checked, log).run()
        except UserError as err:
            log.to_file(f"error: {err}")
            raise
        finally:
            log.close()
    finally:
        if folder is not None:
            folder.release()


# ---------------------------------------------------------------------- the run itself

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
        quiet = config.quiet or not self.is_main or not sys.stderr.isatty()
        with tqdm(desc=f"epoch {self.epoch}", unit="batch", file=sys.stderr, leave=False,
                  disable=quiet, mininterval=1) as progress:
            loss = self.checked.recommender.train_epoch(
                self.model, self.optimizer, self.graphs, config, self.epoch,
                self.checked.sampling, shard=self.shard, progress=progress)
        train_time = time.perf_counter() - tic
        if not self.is_main:  # rank 0 evaluates, logs and saves; the others follow it
            return
        due = self.epoch % config.evaluation_step == 0 or \
            (self.fixed_epochs and self.epoch == config.epochs)
        results = (self.test_epoch(loss) if self.fixed_epochs else self.validate(loss)) \
            if due else None
        epoch_time = time.perf_counter() - tic
        self.train_seconds += epoch_time
        with open(self.run_dir / "epochs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": self.epoch, "loss": loss, "train_s": train_time,
                                "epoch_s": epoch_time,
                                "test" if self.fixed_epochs else "valid": results}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            jsonl_bytes = f.tell()
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
            for line in compare.compare_lines([*config.compare_to, str(self.run_dir)]):
                log(line)
        return metrics

    def test_best(self):
        best = torch.load(self.run_dir / "best.pt", map_location=self.device, weights_only=False)
        if best["epoch"] != self.stopper.best_epoch:  # best.pt edited or replaced by hand
            raise TrainingError(f"best.pt holds epoch {best['epoch']}, the best validation "
                                f"epoch is {self.stopper.best_epoch}; start the run again")
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
