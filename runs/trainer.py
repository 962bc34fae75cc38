"""One training run end to end: check everything, take the run folder, train with
validation and early stopping, test the best checkpoint, write metrics.json (the epochs
themselves: runs/training_loop.py).

Flags, device, data (and its fit with what a resumed run started on), the sampling's
feasibility and the checkpoint to resume are all checked before anything is written, so a
bad flag or a missing/broken file leaves no half-made run behind; an error after that also
goes into train.log. The run folder's files: runs/run_folder.py, docs/training.md.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

import dataloader
from data import provenance
from data.protocols import read_protocol
from data.transfer import Limits
from data.errors import UserError
from recommenders import MODELS
from recommenders.base import TrainingError, build_eval_index, build_graphs
from runs import distributed, run_folder
from runs.faults import fault_point
from runs.resume import (check_resumed_inputs, check_same_settings, load_resume_state,
                         rewind_to_checkpoint)
from runs.config import Config, ConfigError
from runs.training_loop import Checked, Training
from utils import RunLogger, resolve_device, seed_everything


def run(config: Config, on_change: Callable[[], None] | None = None) -> dict | None:
    """Train (or resume) one run and return its metrics.json content (None on ranks > 0).
    ``on_change``: called once a resume has passed every check, just before the folder's
    files change (runs/seeds.py removes a multi-seed summary that counted the seed)."""
    device, shard = setup_device(config)
    try:
        checked = check_before_writing(config, device, shard)
        return train_in_folder(config, device, shard, checked, on_change)
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
    if resuming:
        check_same_settings(run_dir, config.to_dict(), state)
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
                                          limits=download_limits(config),
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


def download_limits(config: Config) -> Limits:
    """--download_timeout / --download_max_mb as data/transfer.py's limits."""
    return Limits(config.download_timeout, config.download_max_mb,
                  flags=("--download_timeout", "--download_max_mb"))


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


def train_in_folder(config: Config, device, shard, checked: Checked,
                    on_change: Callable[[], None] | None = None) -> dict | None:
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
            rewind_to_checkpoint(run_dir, checked.state)  # refuses before it changes a file
            if on_change is not None:
                on_change()
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
