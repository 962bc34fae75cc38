"""LLM interaction augmentation (LLMRec's recipe, as LLM-PNGNN uses it): ask an LLM which of
a trained base model's top candidates each user would like most and which least.

    python -m llm.augment --dataset ML-100K --base_run result/ML-100K/<lightgcn run> \\
        --backend openai --model NAME --base_url URL     # or --backend embedding / rank: no LLM

Per user: the base model's top ``--candidates`` items (10) with the user's training rows
masked, numbered 1..10 in the prompt; a history of at most ``--history`` of the user's
training rows (20), drawn by a generator seeded with (``--seed``, user index), each with its
rating; one request for "a::b" (the favourite, then the least favourite). An answer is
valid when it names two different candidates; an invalid one is asked again with a stricter
prompt (``--tries`` requests in all), then the user is skipped. Every answer is appended to
a JSONL cache, so a run killed at any point resumes losing at most the request in flight.
Output: a CSV ``user_id:token, pos_item_id:token, neg_item_id:token`` and a manifest beside
it (backend, model, prompt digest, base run and its data fingerprint, counts, seconds per
request, agreement with the base model's own top candidate).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from data import provenance
from data.items import find_item_file, item_texts, read_train
from data.registry import DATASETS
from data.schema import DataError
from llm.answers import AnswerCache, check_file_to_write
from llm.backends import (BackendSettings, add_backend_flags, backend_model_id, backend_names,
                          check_backend, check_settings, config_record, declaration, from_args,
                          is_llm, make_backend, require_model)
from runs.cli import add_dataclass_flags, command_line, run_cli
from runs.faults import fault_point
from runs.files import atomic_write_text
from runs.trained import load_trained, top_items

PROMPT_VERSION = "augment v1"  # part of every cache key: change it with the prompts
NOUNS = {"movies": "movies", "music": "music albums", "books": "books"}
OUTPUT_COLUMNS = ("user_id:token", "pos_item_id:token", "neg_item_id:token")


@dataclass(kw_only=True)
class AugmentConfig(BackendSettings):
    """One augmentation run; the backend's settings are refine_llm.py's (BackendSettings)."""

    jobs = ("pick",)
    dataset: str
    base_run: str | None = None
    allow_unfinished_base: bool = False
    data_dir: str | None = None
    backend: str = "embedding"
    max_new_tokens: int = 16
    item_file: str | None = None
    candidates: int = 10
    history: int = 20
    seed: int = 2024
    tries: int = 3  # requests per user before it is skipped
    limit_users: int | None = None
    dry_run: int = 0
    output: str | None = None
    cache: str | None = None
    overwrite: bool = False

    def __post_init__(self):
        check_backend(self.backend, "pick", self.chat)
        check_settings(self)
        for name in ("candidates", "history", "tries"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name} must be >= 1")
        if self.limit_users is not None and self.limit_users < 1:
            raise DataError(f"--limit_users must be >= 1, got {self.limit_users}")
        if self.candidates < 2:
            raise DataError("--candidates must be >= 2 (a favourite and a least favourite)")
        if self.base_run is None:
            raise DataError(f"--base_run: give a trained run on the same split, e.g. python "
                            f"main.py --model lightgcn --dataset {self.dataset} --path_name "
                            f"base_lightgcn (minutes on ML-100K on a 2-core CPU)")
        if not self.dry_run:
            require_model(self)

    def model_id(self) -> str:
        return backend_model_id(self, "pick", f"{self.backend}:{self.model or ''}|"
                                              f"{self.gguf_file or ''}:chat={self.chat}")


# --------------------------------------------------------------------------- the users

@dataclass(frozen=True)
class UserTask:
    """What one request is about: the user, its candidates (item ids, local numbers 1..k in
    this order) and its history ((item id, rating) rows)."""

    user: str
    candidates: tuple[str, ...]
    history: tuple[tuple[str, float], ...]

    @property
    def context(self) -> dict:
        return {"user": self.user, "candidates": list(self.candidates),
                "history": list(self.history)}

    def key(self, model_id: str) -> str:
        text = json.dumps([PROMPT_VERSION, model_id, self.user, self.candidates, self.history])
        return hashlib.sha1(text.encode()).hexdigest()


def top_candidates(e_users: torch.Tensor, e_items: torch.Tensor, seen, k: int) -> torch.Tensor:
    """(U, k) item indices: each user's k best-scored items, its training rows masked."""
    return torch.cat([top for _, top, _ in top_items(e_users, e_items, seen, k)])


def user_histories(train: pd.DataFrame, cap: int, seed: int) -> dict[str, list]:
    """user id -> at most ``cap`` of its train-file rows as (item, rating), in file order,
    drawn uniformly by a generator seeded with (seed, the user's position in the file)."""
    out = {}
    for n, (user, rows) in enumerate(train.groupby("user_id:token", sort=False)):
        pairs = list(zip(rows["item_id:token"], rows["rating:float"].astype(float)))
        if len(pairs) > cap:
            pick = np.sort(np.random.default_rng([seed, n]).choice(len(pairs), cap, replace=False))
            pairs = [pairs[i] for i in pick]
        out[str(user)] = pairs
    return out


# --------------------------------------------------------------------------- prompts

def prompt(task: UserTask, texts: dict, noun: str, retry: bool = False) -> str:
    def line(item):
        title, genre = texts.get(item, (f"item {item}", ""))
        return f"{title} ({genre})" if genre else title
    history = "\n".join(f"- {line(i)}: rated {r:g}" for i, r in task.history)
    cands = "\n".join(f"[{n}] {line(i)}" for n, i in enumerate(task.candidates, 1))
    strict = ("Your previous answer could not be read. " if retry else "")
    return (f"You recommend {noun}. A user rated these {noun} (1 = worst, 5 = best):\n"
            f"{history}\nCandidates:\n{cands}\n{strict}Which candidate will this user like "
            f"most, and which least? Answer with the two candidate numbers (1 to "
            f"{len(task.candidates)}) separated by '::', favourite first, digits only.\n"
            f"Answer:")


def parse_answer(text: str, k: int) -> tuple[int, int] | None:
    """(favourite, least favourite) as local numbers 1..k from the first two integers of
    the answer, or None when there are fewer than two, one is out of range, or they are
    the same."""
    numbers = [int(x) for x in re.findall(r"\d+", text or "")[:2]]
    if len(numbers) < 2 or numbers[0] == numbers[1] or not all(1 <= x <= k for x in numbers):
        return None
    return numbers[0], numbers[1]


# --------------------------------------------------------------------------- the run

@dataclass
class Base:
    """The base run: its config, the data it trained on (checked unchanged) and its tasks."""

    config: object
    record: dict  # the manifest's base_run: path, model, epochs, finished or why not
    data_dir: Path
    train_path: Path
    inputs: list
    tasks: list[UserTask]


def load_base(cfg: AugmentConfig) -> Base:
    """Rebuild the base run's best model on its data (refused when a data file changed
    since it ran) and make every user's task."""
    base = load_trained(Path(cfg.base_run), cfg.dataset, cfg.data_dir,
                        unfinished_flag=None if cfg.allow_unfinished_base
                        else "--allow_unfinished_base")
    data, graphs = base.data, base.graphs
    with torch.no_grad():
        top = top_candidates(*base.model(graphs.norm_adj), graphs.seen_by_user, cfg.candidates)
    train_path = data.files[0][1]
    histories = user_histories(read_train(train_path), cfg.history, cfg.seed)
    tasks = [UserTask(str(user), tuple(str(data.item_ids[j]) for j in top[u].tolist()),
                      tuple(histories.get(str(user), ())))
             for u, user in enumerate(data.user_ids)]
    return Base(base.config, base.record(), base.data_dir, train_path, base.inputs,
                tasks[:cfg.limit_users] if cfg.limit_users else tasks)


def ask(backend, tasks: list[UserTask], cfg: AugmentConfig, cache: AnswerCache, texts: dict,
        noun: str, progress) -> None:
    """Ask about every task not cached, ``cfg.tries`` requests at most per user."""
    model_id = cfg.model_id()
    todo = [t for t in tasks if t.key(model_id) not in cache.records]
    for start in range(0, len(todo), cfg.batch_size):
        batch, began = todo[start:start + cfg.batch_size], time.perf_counter()
        answers = {t.user: None for t in batch}
        tries = {t.user: 0 for t in batch}
        pending = batch
        for attempt in range(cfg.tries):
            prompts = [prompt(t, texts, noun, retry=attempt > 0) if backend.reads_prompts
                       else None for t in pending]
            outputs = backend.generate(prompts, [t.context for t in pending])
            for t, text in zip(pending, outputs):
                tries[t.user] += 1
                answers[t.user] = (text, parse_answer(text, len(t.candidates)))
            pending = [t for t in pending if answers[t.user][1] is None]
            if not pending:
                break
        seconds = (time.perf_counter() - began) / len(batch)
        for t in batch:
            text, picked = answers[t.user]
            pos, neg = (t.candidates[picked[0] - 1], t.candidates[picked[1] - 1]) if picked \
                else (None, None)
            cache.append({"key": t.key(model_id), "user": t.user, "answer": text,
                          "status": "answered" if picked else "invalid", "tries": tries[t.user],
                          "local": picked, "pos": pos, "neg": neg, "seconds": round(seconds, 4)})
            fault_point("augment_user", len(cache.records))  # tests: kill -9 after N cached
        progress.update(len(batch))


def output_paths(cfg: AugmentConfig, data_dir: Path) -> tuple[Path, Path]:
    """(the augmentation CSV, its answer cache)."""
    out = Path(cfg.output) if cfg.output else \
        data_dir / cfg.dataset / f"{cfg.dataset}_llm_augment_{cfg.backend}.csv"
    return out, Path(cfg.cache) if cfg.cache else out.with_name(out.name + ".cache.jsonl")


def run(cfg: AugmentConfig, log=print) -> dict:
    """One augmentation run; returns the manifest (also written beside the output)."""
    from tqdm import tqdm
    started = time.perf_counter()
    base = load_base(cfg)
    output, cache_path = output_paths(cfg, base.data_dir)
    check_file_to_write(output, "--output")
    check_file_to_write(cache_path, "--cache")
    if output.exists() and not cfg.overwrite and not cfg.dry_run:
        raise DataError(f"{output} exists; pass --overwrite to replace it or --output elsewhere")
    train = read_train(base.train_path)
    texts = {}
    if declaration(cfg.backend).item_texts:
        try:
            texts = item_texts(train, find_item_file(cfg.dataset, str(base.data_dir),
                                                     cfg.item_file, beside_data_dir=True))
        except DataError as err:
            free = [n for n in backend_names("pick") if not declaration(n).item_texts]
            hint = f"; --backend {' / '.join(free)} needs no item text" if free else ""
            raise DataError(f"{err}{hint}") from None
    family = DATASETS[cfg.dataset].prompt_family if cfg.dataset in DATASETS else None
    noun = NOUNS.get(family, "items")
    if cfg.dry_run:
        for t in base.tasks[:cfg.dry_run]:
            log(f"--- user {t.user}, candidates {list(t.candidates)}\n{prompt(t, texts, noun)}")
        return {}
    cache = AnswerCache(cache_path)
    todo = sum(t.key(cfg.model_id()) not in cache.records for t in base.tasks)
    log(f"{cfg.dataset}: {len(base.tasks)} users, {len(base.tasks) - todo} cached, {todo} to "
        f"ask ({cfg.model_id()})")
    asked_at = time.perf_counter()
    if todo:
        backend = make_backend(cfg, texts, "pick")
        with tqdm(total=todo, unit="user", desc="augment", file=sys.stderr) as progress:
            try:
                ask(backend, base.tasks, cfg, cache, texts, noun, progress)
            finally:
                cache.close()
    records = [cache.records[t.key(cfg.model_id())] for t in base.tasks]
    write_output(records, output)
    manifest = make_manifest(cfg, base, records, output, todo,
                             time.perf_counter() - asked_at, time.perf_counter() - started)
    atomic_write_text(output.with_name(output.stem + ".manifest.json"),
                      json.dumps(manifest, indent=2) + "\n")
    c = manifest["counts"]
    log(f"wrote {output}: {c['answered']} of {c['users']} users answered, {c['invalid']} "
        f"invalid after {cfg.tries} tries; favourite = the base model's top candidate for "
        f"{manifest['agreement_with_base_top']:.1%}")
    return manifest


def write_output(records: list[dict], output: Path) -> None:
    rows = [(r["user"], r["pos"], r["neg"]) for r in records if r["status"] == "answered"]
    frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, frame.to_csv(index=False, lineterminator="\n"))


def make_manifest(cfg, base: Base, records, output: Path, asked: int, ask_seconds: float,
                  seconds: float) -> dict:
    answered = [r for r in records if r["status"] == "answered"]
    top_share = sum(r["local"][0] == 1 for r in answered) / max(len(answered), 1)
    return dict(
        command=command_line("python -m llm.augment"), dataset=cfg.dataset,
        backend=cfg.backend, model=cfg.model_id(), is_llm=is_llm(cfg.backend),
        prompt_version=PROMPT_VERSION,
        base_run=dict(base.record, path=str(cfg.base_run), inputs_fingerprint=provenance.
                      fingerprint(provenance.as_dicts(base.inputs))),
        counts=dict(users=len(records), answered=len(answered),
                    invalid=len(records) - len(answered), asked_now=asked,
                    retried=sum(r["tries"] > 1 for r in records)),
        agreement_with_base_top=top_share,
        seconds_per_request=round(ask_seconds / asked, 4) if asked else None,
        output=str(output), output_sha1=provenance.file_sha1(output),
        config=config_record(cfg), seconds=round(seconds, 2))


HELP = {
    "dataset": "dataset name (a folder under --data_dir)",
    "base_run": "run folder of a trained model on the same split (e.g. --model lightgcn)",
    "allow_unfinished_base": "use a base run that did not finish (killed, or resumed and "
                             "not yet ended) as its best.pt stands; the manifest says so",
    "data_dir": "folder holding <DATASET>/ (default: $REFINE_DATA_DIR or dataset/)",
    "item_file": "RecBole .item file with the titles (default: found as refine_llm.py finds it)",
    "candidates": "the base model's top-k unseen items shown per user",
    "history": "training rows shown per user at most (seeded sample, with ratings)",
    "seed": "seed of the history samples",
    "tries": "requests per user before it is skipped (the first included)",
    "limit_users": "only the first N users (ascending id)",
    "dry_run": "print the first N prompts and exit",
    "output": "default: <data_dir>/<DATASET>/<DATASET>_llm_augment_<backend>.csv",
    "cache": "answer cache (default: <output>.cache.jsonl)",
    "overwrite": "replace an existing output file",
}


def parse_args(argv=None) -> AugmentConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    handled = add_backend_flags(p, AugmentConfig)
    add_dataclass_flags(p, AugmentConfig, HELP, skip=handled)
    return from_args(AugmentConfig, p.parse_args(argv))


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)),
                   interrupted="interrupted: run the same command again; the answer cache "
                               "keeps every user answered so far")


if __name__ == "__main__":
    sys.exit(main())
