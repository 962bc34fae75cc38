"""LLM relabeling of low ratings: train_original -> train_augment (docs/llm.md).

For every user (ascending id order) the 2/3-star rows are split into chunks of 5
candidates; an LLM (or the CPU ``embedding`` refiner) says which of them the user rated
positively; for every user with a usable answer each 2/3 row becomes 4.5 (selected, matched
by title text) or 0.5. Answers go to an append-only JSONL cache, so a re-run resumes; the
output CSV is written atomically with a manifest JSON next to it.

    python refine_llm.py --dataset ML-100K --backend hf --model meta-llama/Llama-2-7b-hf
    python refine_llm.py --dataset ML-100K --backend embedding --compare_to PUBLISHED.csv
    python refine_llm.py --dataset ML-100K --decisions CACHE_OR_DECISIONS_OR_AUGMENT
    python refine_llm.py --dataset ML-100K --procedure reference --backend hf --model ...

``--procedure reference`` asks exactly what the authors' notebook asked (llm/reference.py).

This script writes files only; main.py (training) never imports it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.checks import manifest_path
from data.items import find_item_file, item_texts, read_train
from data.provenance import file_sha1
from data.schema import RATING_COL, USER_COL, DataError
from data.splits import resolve_data_dir, split_path
from llm.answers import (AnswerCache, answer_requests, check_file_to_read, check_file_to_write,
                         load_decisions, write_decisions)
from llm.backends import (BackendSettings, add_backend_flags, backend_model_id, backend_names,
                          can_do, check_backend, check_settings, config_record, either,
                          from_args, make_backend, require_model)
from llm.procedure import (agreement, build_requests, decisions_from_records, plan_users,
                           relabel, sorted_users)
from llm.notebook import notebook_entry
from llm.prompts import FAMILY_OF_DATASET, TEMPLATES, PromptTemplate
from llm.reference import show_prompts
from llm.run_reference import ask_reference
from runs.cli import command_line, run_cli
from runs.files import atomic_write_text

PROCEDURES = ("own", "reference")
# settings of the own procedure that the authors' notebook fixes (refused with reference)
REFERENCE_FIXED = ("seed", "chunk_size", "max_prompt_tokens", "template", "max_new_tokens",
                   "batch_size", "concurrency")


@dataclass(kw_only=True)
class RefineConfig(BackendSettings):
    """Every setting of one relabeling run (filled by ``parse_args``); the backend's are in
    ``BackendSettings``."""

    jobs = ("relabel", "full_completion")  # the own procedure's and the reference one's
    dataset: str
    data_dir: str | None = None
    procedure: str = "own"
    notebook: str | None = None
    no_download: bool = False
    dump_prompts: str | None = None
    max_prompt_tokens: int = 5000
    chunk_size: int = 5
    seed: int = 2024
    embed_top_k: int = 3
    embed_margin: float = 0.0
    item_file: str | None = None
    template: str | None = None
    limit_users: int | None = None
    dry_run: int = 0
    decisions: str | None = None
    write_decisions: str | None = None
    compare_to: str | None = None
    cache: str | None = None
    output: str | None = None
    overwrite: bool = False

    def __post_init__(self):
        if self.procedure not in PROCEDURES:
            raise DataError(f"unknown procedure {self.procedure!r}; choose one of "
                            f"{', '.join(PROCEDURES)}")
        asks_reference = (self.procedure == "reference" and not self.dump_prompts
                          and not self.dry_run)
        if self.procedure == "reference":
            notebook_entry(self.dataset)  # one line for a dataset without the authors' step
            if self.decisions:
                raise DataError("--decisions replays decisions as they are; --procedure "
                                "reference does not apply (drop one of them)")
            if asks_reference and (not can_do(self.backend, "full_completion") or self.chat):
                raise DataError(f"--procedure reference asks an LLM with the authors' plain "
                                f"prompts: --backend {either(backend_names('full_completion'))}"
                                f", without --chat")
            if self.dtype == "auto":  # the notebook loaded the model with transformers 4's
                self.dtype = "float32"  # default, float32 (transformers 5's "auto": float16)
            fixed = [f"--{n}" for n in REFERENCE_FIXED
                     if getattr(self, n) != RefineConfig.__dataclass_fields__[n].default]
            if fixed:
                raise DataError(f"{', '.join(fixed)}: the authors' notebook fixes these for "
                                f"--procedure reference (one request at a time, its seed, "
                                f"chunks, template, token rule and generation length)")
        check_backend(self.backend, "full_completion" if asks_reference else "relabel", self.chat)
        check_settings(self)
        if self.template is not None and self.template not in TEMPLATES:
            raise DataError(f"unknown template {self.template!r}; choose one of {', '.join(TEMPLATES)}")
        if self.template is None and self.dataset not in FAMILY_OF_DATASET:
            raise DataError(f"no prompt template known for dataset {self.dataset!r}; "
                            f"pass --template {'/'.join(TEMPLATES)}")
        for name in ("chunk_size", "batch_size", "max_new_tokens", "max_prompt_tokens", "embed_top_k"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.limit_users is not None and self.limit_users < 1:
            raise DataError(f"--limit_users must be >= 1, got {self.limit_users}")
        if self.decisions is None and not self.dry_run and not self.dump_prompts:
            require_model(self)

    @property
    def prompt_template(self) -> PromptTemplate:
        return TEMPLATES[self.template or FAMILY_OF_DATASET[self.dataset]]

    def input_path(self) -> Path:
        return split_path(resolve_data_dir(self.data_dir), self.dataset, "train_original")

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        return split_path(resolve_data_dir(self.data_dir), self.dataset, "train_augment")

    def cache_path(self, output: Path) -> Path:
        return Path(self.cache) if self.cache else output.with_name(output.name + ".cache.jsonl")

    def check_paths(self, source: Path, output: Path) -> None:
        """Every file flag, in one line each, before the first request."""
        if output.resolve() == source.resolve():
            raise DataError(f"refusing to write the output over train_original ({source})")
        for path, flag in ((output, "--output"), (self.cache_path(output), "--cache"),
                           (self.write_decisions, "--write_decisions"),
                           (self.dump_prompts, "--dump_prompts")):
            check_file_to_write(path and Path(path), flag)
        check_file_to_read(self.compare_to and Path(self.compare_to), "--compare_to")
        if output.exists() and not self.overwrite and not self.dry_run and not self.dump_prompts:
            raise DataError(f"{output} exists; pass --overwrite to replace it or --output "
                            f"elsewhere")

    def model_id(self) -> str:
        """What identifies the answering model in the cache key."""
        name = f"{self.model or ''}|{self.gguf_file or ''}"
        return backend_model_id(self, "relabel", f"{self.backend}:{name}:chat={self.chat}"
                                                 f":max_new={self.max_new_tokens}")


# ----------------------------------------------------------------------------- output

def write_augment(train: pd.DataFrame, ratings: np.ndarray, path: Path) -> None:
    """train_original with the new ratings (floats: "4.0", "4.5"), written atomically."""
    out = train.assign(**{RATING_COL: ratings.astype(np.float64)})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, out.to_csv(index=False, lineterminator="\n"))


# ----------------------------------------------------------------------------- run

def parse_args(argv=None) -> RefineConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = RefineConfig
    p.add_argument("--dataset", required=True)
    p.add_argument("--data_dir", default=None, help="folder holding <DATASET>/ (default: $REFINE_DATA_DIR or dataset/)")
    p.add_argument("--procedure", default=d.procedure, choices=PROCEDURES,
                   help="own: this project's prompts (docs/llm.md); reference: the authors' "
                        "notebook request for request, its prompts read from the notebook")
    p.add_argument("--notebook", default=None,
                   help="reference: the authors' 2_augmenting_LLM_llama.ipynb (default: "
                        "<data_dir>/<DATASET>/, downloaded at the pinned commit if missing)")
    p.add_argument("--no_download", action="store_true",
                   help="reference: never download the notebook")
    p.add_argument("--dump_prompts", default=None,
                   help="write every prompt (JSON lines: user, chunk, prompt) and exit")
    add_backend_flags(p, d)
    p.add_argument("--max_prompt_tokens", type=int, default=d.max_prompt_tokens,
                   help="skip a chunk whose prompt is longer")
    p.add_argument("--chunk_size", type=int, default=d.chunk_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--item_file", default=None,
                   help="RecBole .item file (default: <data_dir>/raw/<stem>/<stem>.item, "
                        "else <data_dir>/<DATASET>/<stem>.item)")
    p.add_argument("--template", default=None, help="prompt family: " + "/".join(TEMPLATES))
    p.add_argument("--limit_users", type=int, default=None, help="only the first N users (ascending id)")
    p.add_argument("--dry_run", type=int, nargs="?", const=3, default=0,
                   help="print the first N prompts and exit")
    p.add_argument("--decisions", default=None,
                   help="replay: decisions JSONL, cache JSONL or train_augment CSV; no model runs")
    p.add_argument("--write_decisions", default=None, help="also write the decisions as JSONL")
    p.add_argument("--compare_to", default=None,
                   help="a reference train_augment: report agreement on the rows refined in both")
    p.add_argument("--cache", default=None, help="answer cache (default: <output>.cache.jsonl)")
    p.add_argument("--output", default=None, help="default: <data_dir>/<DATASET>/<DATASET>_train_augment.csv")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return from_args(RefineConfig, p.parse_args(argv))


def agreement_line(reference, a: dict) -> str:
    return (f"agreement with {reference} on {a['rows_compared']} rows refined in both: "
            f"accuracy {a['accuracy']:.4f}, precision {a['precision']:.4f}, recall "
            f"{a['recall']:.4f}, F1 {a['f1']:.4f} (reference -> 4.5 rate "
            f"{a['reference_positive_rate']:.4f}, ours {a['ours_positive_rate']:.4f})")


def ask_backend(cfg: RefineConfig, train: pd.DataFrame, texts, output: Path, log):
    """Plan the users, ask the backend for every chunk not cached, and read the decisions
    off the answers: (decisions, users, counts), or None after printing ``--dry_run``'s
    prompts."""
    from tqdm import tqdm

    plans = plan_users(train, texts(), cfg.seed)
    if cfg.limit_users:
        plans = plans[:cfg.limit_users]
    requests = build_requests(plans, texts(), cfg)
    if cfg.dump_prompts or cfg.dry_run:
        seen: dict[str, int] = {}  # a user's chunks numbered from 0
        rows = []
        for r in requests:
            seen[r.user] = seen.get(r.user, -1) + 1
            rows.append((r.user, seen[r.user], r.prompt("main")))
        show_prompts(cfg, rows, log)
        return None
    cache = AnswerCache(cfg.cache_path(output))
    todo = sum(r.key not in cache.records for r in requests)
    log(f"{cfg.dataset}: {len(plans)} users, {len(requests)} chunks, {len(requests) - todo} "
        f"cached, {todo} to ask ({cfg.backend})")
    started = time.perf_counter()
    if todo:
        backend = make_backend(cfg, texts(), "relabel")
        with tqdm(total=todo, unit="chunk", desc="refine", file=sys.stderr) as progress:
            try:
                answer_requests(backend, requests, cfg, cache, progress)
            finally:
                cache.close()
    seconds = time.perf_counter() - started
    records = [cache.records[r.key] for r in requests]
    status = pd.Series([rec["status"] for rec in records], dtype=object)
    counts = dict(
        users=len(plans), chunks=len(requests), chunks_asked_now=todo,
        chunks_answered=int((status == "answered").sum()),
        chunks_skipped_too_long=int((status == "too_long").sum()),
        chunks_skipped_malformed=int((status == "malformed").sum()),
        chunks_retried=sum(rec.get("layout") == "retry" for rec in records),
        candidates_without_text=sum(p.missing_text for p in plans),
        generation_seconds=round(seconds, 2),
        seconds_per_chunk=round(seconds / todo, 4) if todo else None)
    decisions = decisions_from_records(records, train, texts())  # users of ``plans`` only
    return decisions, [p.user for p in plans], counts


def procedure_record(cfg: RefineConfig, notebook: dict | None) -> dict:
    """The manifest's record of what shaped the prompts."""
    if cfg.procedure == "reference":
        entry = notebook_entry(cfg.dataset)
        return dict(notebook=notebook, seed=entry.seed, reseed_per_user=entry.reseed_per_user,
                    chunk_size=entry.chunk_size, max_prompt_tokens=entry.token_limit)
    template = cfg.prompt_template
    return dict(template=template.name, template_digest=template.digest, seed=cfg.seed,
                chunk_size=cfg.chunk_size, max_prompt_tokens=cfg.max_prompt_tokens)


def run(cfg: RefineConfig, log=print) -> dict:
    """One relabeling run; returns the manifest (also written next to the output)."""
    started = time.perf_counter()
    source, output = cfg.input_path(), cfg.output_path()
    cfg.check_paths(source, output)
    train = read_train(source)
    texts_cache = {}

    def texts():
        if not texts_cache:
            item_file = find_item_file(cfg.dataset, cfg.data_dir, cfg.item_file)
            texts_cache.update(item_texts(train, item_file))
        return texts_cache

    notebook = None
    if cfg.decisions:
        decisions = load_decisions(Path(cfg.decisions), train, texts)
        keep_missing, users, counts = None, sorted_users(train[USER_COL]), {}
    elif cfg.procedure == "reference":
        asked = ask_reference(cfg, train, output, log)
        if asked is None:  # --dry_run / --dump_prompts
            return {}
        decisions, users, counts, notebook = asked
        keep_missing = None  # the authors' rule: every 2/3 row of a refined user
    else:
        asked = ask_backend(cfg, train, texts, output, log)
        if asked is None:  # --dry_run / --dump_prompts
            return {}
        decisions, users, counts = asked
        keep_missing = texts()
    if cfg.limit_users and cfg.decisions:
        users = users[:cfg.limit_users]
        keep = set(users)
        decisions = {u: s for u, s in decisions.items() if u in keep}
    ratings, relabel_counts = relabel(train, decisions, keep_missing,
                                      set(users) if cfg.limit_users else None)
    counts.update(relabel_counts)
    write_augment(train, ratings, output)
    if cfg.write_decisions:
        write_decisions(Path(cfg.write_decisions), decisions, users)
    manifest = dict(
        command=command_line("python refine_llm.py"), dataset=cfg.dataset,
        procedure=cfg.procedure, backend=None if cfg.decisions else cfg.backend,
        model=None if cfg.decisions else cfg.model_id(), replayed_from=cfg.decisions,
        **procedure_record(cfg, notebook), input=str(source), input_sha1=file_sha1(source),
        output=str(output),
        output_sha1=file_sha1(output), counts=counts, config=config_record(cfg),
        seconds=round(time.perf_counter() - started, 2))
    if cfg.compare_to:
        manifest["agreement"] = agreement(train, ratings, Path(cfg.compare_to))
    atomic_write_text(manifest_path(output),
                      json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {output}: {counts['users_refined']} users refined, {counts['users_unrefined']} "
        f"unrefined; {counts['rows_to_4_5']} rows -> 4.5, {counts['rows_to_0_5']} -> 0.5")
    if "agreement" in manifest:
        log(agreement_line(cfg.compare_to, manifest["agreement"]))
    return manifest


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)),
                   interrupted="interrupted: run the same command again; the answer cache "
                               "keeps every chunk answered so far")


if __name__ == "__main__":
    sys.exit(main())
