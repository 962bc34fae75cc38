"""HNLMRec's LLM pipeline without fine-tuning: item profiles -> user profiles -> one
hard-negative title per training pair -> their text embeddings (docs/llm.md).

    python -m llm.hnlm items     --dataset ML-100K --backend openai --model NAME --base_url URL
    python -m llm.hnlm users     --dataset ML-100K --backend openai --model NAME --base_url URL
    python -m llm.hnlm negatives --dataset ML-100K --backend openai ... [--max_pairs_per_user 20]
    python -m llm.hnlm embed     --dataset ML-100K [--embed_model DIR]

Each LLM step asks one request per item / user / (user, positive item) pair of the train file,
appends every answer to ``<out_dir>/<step>.cache.jsonl`` (a killed run resumes losing at most
the request in flight) and writes ``<step>.jsonl`` (one record per subject) and
``<step>.manifest.json`` (backend, model, prompt version, the train file's SHA-1, counts,
seconds per request). Profiles are JSON {"summarization", "reasoning"}; an answer that is not
such JSON is kept whole as the summarization. A hard negative is JSON {"hard_negative_item",
"reasoning"}; an unparsable answer or "None" is missing. ``embed`` writes
``negatives.npz`` (data/vectors.py): the unit-norm sentence embedding of each usable title,
keyed by (user, item), which ``--model hnlmrec --negative_file`` reads.
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

from data import provenance
from data.items import find_item_file, item_texts, read_train
from data.registry import DATASETS
from data.schema import DataError
from data.splits import resolve_data_dir, split_path
from data.vectors import write_pair_vectors
from llm.answers import AnswerCache
from llm.augment import NOUNS, user_histories
from llm.backends import (BackendSettings, add_backend_flags, backend_model_id, check_backend,
                          check_settings, config_record, from_args, make_backend,
                          require_model)
from runs.cli import add_dataclass_flags, command_line, run_cli
from runs.faults import fault_point
from runs.files import atomic_write_text

PROMPT_VERSION = "hnlm v1"  # part of every cache key: change it with the prompts
STEPS = ("items", "users", "negatives", "embed")


@dataclass(kw_only=True)
class HNLMConfig(BackendSettings):
    jobs = ("text",)
    step: str
    dataset: str
    data_dir: str | None = None
    dataset_augment: str = "augment"
    item_file: str | None = None
    out_dir: str | None = None
    backend: str = "openai"
    max_new_tokens: int = 200
    history: int = 20
    max_pairs_per_user: int | None = None
    seed: int = 2024
    limit: int | None = None
    dry_run: int = 0

    def __post_init__(self):
        if self.step not in STEPS:
            raise DataError(f"step must be one of {', '.join(STEPS)}")
        if self.step != "embed":
            check_backend(self.backend, "text", self.chat)
            if not self.dry_run:
                require_model(self)
        check_settings(self)
        for name in ("history", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name} must be >= 1")
        if self.max_pairs_per_user is None and self.dataset in DATASETS:
            self.max_pairs_per_user = DATASETS[self.dataset].hnlm_pairs_per_user
        if self.max_pairs_per_user is not None and self.max_pairs_per_user < 0:
            raise DataError("--max_pairs_per_user must be >= 0 (0: every pair)")

    def model_id(self) -> str:
        return backend_model_id(self, "text", f"{self.backend}:{self.model or ''}|"
                                              f"{self.gguf_file or ''}:chat={self.chat}")


@dataclass
class Inputs:
    train: pd.DataFrame
    train_path: Path
    texts: dict  # item id -> (title, genres)
    out_dir: Path
    noun: str


def load_inputs(cfg: HNLMConfig) -> Inputs:
    data_dir = resolve_data_dir(cfg.data_dir)
    train_path = split_path(data_dir, cfg.dataset, f"train_{cfg.dataset_augment}")
    if not train_path.is_file():
        raise DataError(f"{train_path}: no such train file")
    train = read_train(train_path)
    texts = item_texts(train, find_item_file(cfg.dataset, str(data_dir), cfg.item_file,
                                             beside_data_dir=True))
    family = DATASETS[cfg.dataset].prompt_family if cfg.dataset in DATASETS else None
    out = Path(cfg.out_dir) if cfg.out_dir else data_dir / cfg.dataset / "hnlm"
    return Inputs(train, train_path, texts, out, NOUNS.get(family, "items"))


# --------------------------------------------------------------------------- prompts

def _item_json(item: str, texts: dict) -> dict:
    title, genres = texts.get(item, (f"item {item}", ""))
    return {"title": title, "genres": genres}


def item_prompt(item: str, texts: dict, noun: str) -> str:
    return (f"You summarise which types of users would enjoy one of these {noun}.\n"
            f"BASIC INFORMATION: {json.dumps(_item_json(item, texts))}\n"
            'Answer only a JSON object {"summarization": "<which users would enjoy it, at '
            'most 100 words, or None>", "reasoning": "<why, at most 100 words>"}.\nJSON:')


def user_prompt(history: list, texts: dict, profiles: dict, noun: str) -> str:
    rows = [{**_item_json(i, texts), "description": profiles.get(i, "None"),
             "rating": r} for i, r in history]
    return (f"You summarise what a user likes, from the {noun} the user rated (1 = worst, "
            f"5 = best).\nRATED {noun.upper()}: {json.dumps(rows)}\n"
            'Answer only a JSON object {"summarization": "<what the user likes, at most 100 '
            'words, or None>", "reasoning": "<why>"}.\nJSON:')


def negative_prompt(user: str, item: str, texts: dict, user_profiles: dict,
                    item_profiles: dict, noun: str) -> str:
    info = {"user_id": user, "user_profile": user_profiles.get(user, "None")}
    product = {"item_id": item, "title": texts.get(item, (f"item {item}", ""))[0],
               "item_profile": item_profiles.get(item, "None")}
    return (f"A hard negative is one of the {noun} very similar to what a user has liked, "
            f"that the user is nevertheless not interested in or that does not meet the "
            f"user's needs.\nUSER INFORMATION: {json.dumps(info)}\nINTERACTED "
            f"{noun.upper()[:-1] if noun.endswith('s') else noun.upper()}: "
            f"{json.dumps(product)}\n"
            'Answer only a JSON object {"hard_negative_item": "<the title of one hard '
            'negative, at most 20 words, or None>", "reasoning": "<why>"}.\nJSON:')


def parse_json_answer(text: str, key: str) -> dict | None:
    """The first JSON object in ``text`` that has ``key`` with a string value, else None
    (each "{" is tried as the start of one; nested objects and braces in strings work)."""
    decoder = json.JSONDecoder()
    text = text or ""
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get(key), str):
            return obj
    return None


def profile_of(text: str) -> tuple[str, str, bool]:
    """(summarization, reasoning, parsed): the raw text is the summary when not JSON."""
    obj = parse_json_answer(text, "summarization")
    if obj is None:
        return (text or "").strip(), "", False
    return obj["summarization"].strip(), str(obj.get("reasoning", "")).strip(), True


def unclosed(text: str) -> bool:
    """An answer that opens more JSON objects than it closes: most likely cut off at
    --max_new_tokens (such an answer cannot be parsed)."""
    text = text or ""
    return text.count("{") > text.count("}")


def negative_of(text: str) -> str | None:
    """The hard-negative title, or None when the answer is unusable or says None."""
    obj = parse_json_answer(text, "hard_negative_item")
    title = obj["hard_negative_item"].strip() if obj else ""
    return None if title.lower() in ("", "none", "null", "n/a") else title


# --------------------------------------------------------------------------- the tasks

def subjects(cfg: HNLMConfig, inp: Inputs) -> list:
    """The step's subjects in a fixed order: item ids, user ids, or (user, item) pairs of
    positive rows (rating >= 4), at most --max_pairs_per_user per user (seeded sample)."""
    train = inp.train
    if cfg.step == "items":
        out = sorted(set(train["item_id:token"].astype(str)), key=_id_order)
    elif cfg.step == "users":
        out = list(dict.fromkeys(train["user_id:token"].astype(str)))
    else:
        pos = train[train["rating:float"].astype(float) >= 4]
        out = []
        for n, (user, rows) in enumerate(pos.groupby("user_id:token", sort=False)):
            items = list(rows["item_id:token"].astype(str))
            cap = cfg.max_pairs_per_user
            if cap and len(items) > cap:
                pick = np.sort(np.random.default_rng([cfg.seed, n]).choice(len(items), cap,
                                                                            replace=False))
                items = [items[i] for i in pick]
            out += [(str(user), i) for i in items]
    return out[:cfg.limit] if cfg.limit else out


def _id_order(x: str):
    return (0, int(x), "") if x.isdigit() else (1, 0, x)


def read_step(out_dir: Path, step: str) -> dict:
    """A finished step's records by subject (str ids; "user\\titem" for pairs)."""
    path = out_dir / f"{step}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: run the {step} step first (python -m llm.hnlm {step} ...)")
    return {r["subject"]: r for r in map(json.loads, path.read_text().splitlines())}


def prompts_for(cfg: HNLMConfig, inp: Inputs, todo: list) -> list[str]:
    if cfg.step == "items":
        return [item_prompt(i, inp.texts, inp.noun) for i in todo]
    items = {k: r["summarization"] or "None" for k, r in read_step(inp.out_dir, "items").items()}
    if cfg.step == "users":
        histories = user_histories(inp.train, cfg.history, cfg.seed)
        return [user_prompt(histories[u], inp.texts, items, inp.noun) for u in todo]
    users = {k: r["summarization"] or "None" for k, r in read_step(inp.out_dir, "users").items()}
    return [negative_prompt(u, i, inp.texts, users, items, inp.noun) for u, i in todo]


def subject_key(subject) -> str:
    return "\t".join(subject) if isinstance(subject, tuple) else subject


def record_of(step: str, subject, text: str, seconds: float) -> dict:
    if step == "negatives":
        title = negative_of(text)
        return {"subject": subject_key(subject), "user": subject[0], "item": subject[1],
                "hard_negative": title, "usable": title is not None, "answer": text,
                "seconds": round(seconds, 4)}
    summary, reasoning, parsed = profile_of(text)
    return {"subject": subject, "summarization": summary, "reasoning": reasoning,
            "usable": parsed, "answer": text, "seconds": round(seconds, 4)}


# --------------------------------------------------------------------------- running

def cache_key(cfg: HNLMConfig, prompt: str) -> str:
    text = json.dumps([PROMPT_VERSION, cfg.step, cfg.model_id(), cfg.max_new_tokens, prompt])
    return hashlib.sha1(text.encode()).hexdigest()


def ask_step(cfg: HNLMConfig, inp: Inputs, todo: list, prompts: list[str], log) -> int:
    """Ask every prompt not cached; returns how many were asked now."""
    from tqdm import tqdm
    cache = AnswerCache(inp.out_dir / f"{cfg.step}.cache.jsonl")
    keys = [cache_key(cfg, p) for p in prompts]
    missing = [n for n, k in enumerate(keys) if k not in cache.records]
    log(f"{cfg.dataset} {cfg.step}: {len(todo)} requests, {len(todo) - len(missing)} cached, "
        f"{len(missing)} to ask ({cfg.model_id()})")
    if missing:
        backend = make_backend(cfg, inp.texts, "text")
        with tqdm(total=len(missing), unit="request", desc=cfg.step, file=sys.stderr) as bar:
            try:
                for start in range(0, len(missing), cfg.batch_size):
                    chunk = missing[start:start + cfg.batch_size]
                    began = time.perf_counter()
                    answers = backend.generate([prompts[n] for n in chunk])
                    seconds = (time.perf_counter() - began) / len(chunk)
                    for n, text in zip(chunk, answers):
                        cache.append({"key": keys[n], **record_of(cfg.step, todo[n], text,
                                                                   seconds)})
                        fault_point("hnlm_request", len(cache.records))  # tests: kill -9
                    bar.update(len(chunk))
            finally:
                cache.close()
    records = [cache.records[k] for k in keys]
    lines = "".join(json.dumps({k: v for k, v in r.items() if k != "key"}, ensure_ascii=False)
                    + "\n" for r in records)
    atomic_write_text(inp.out_dir / f"{cfg.step}.jsonl", lines)
    return len(missing)


def manifest_of(cfg: HNLMConfig, inp: Inputs, records: list[dict], asked: int,
                ask_seconds: float, extra: dict) -> dict:
    usable = sum(bool(r.get("usable")) for r in records)
    return dict(command=command_line("python -m llm.hnlm"), step=cfg.step,
                dataset=cfg.dataset, backend=cfg.backend, model=cfg.model_id(),
                prompt_version=PROMPT_VERSION,
                train_file=dict(path=inp.train_path.name, sha1=provenance.file_sha1(inp.train_path)),
                counts=dict(requests=len(records), usable=usable, unusable=len(records) - usable,
                            unclosed_json=sum(not r.get("usable") and unclosed(r.get("answer"))
                                              for r in records),
                            asked_now=asked),
                seconds_per_request=round(ask_seconds / asked, 4) if asked else None,
                config=config_record(cfg), **extra)


def embed_step(cfg: HNLMConfig, inp: Inputs, log) -> dict:
    """Sentence embeddings (unit norm) of every usable hard-negative title -> negatives.npz."""
    from llm import text_encoder
    records = [r for r in read_step(inp.out_dir, "negatives").values() if r["usable"]]
    if not records:
        raise DataError(f"{inp.out_dir / 'negatives.jsonl'}: no usable hard negative to embed")
    encoder = text_encoder.load_encoder(cfg.embed_model, cfg.device)
    vectors = text_encoder.encode(encoder, [r["hard_negative"] for r in records])
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    out = inp.out_dir / "negatives.npz"
    source = inp.out_dir / "negatives.jsonl"
    about = dict(step="embed", embed_model=cfg.embed_model or text_encoder.default_model_path(),
                 negatives_sha1=provenance.file_sha1(source), prompt_version=PROMPT_VERSION)
    write_pair_vectors(out, [r["user"] for r in records], [r["item"] for r in records],
                       vectors, about)
    log(f"wrote {out}: {len(records)} vectors of dimension {vectors.shape[1]}")
    return dict(output=str(out), vectors=len(records), dimension=int(vectors.shape[1]), **about)


def run(cfg: HNLMConfig, log=print) -> dict:
    """One step; returns its manifest (also written to <out_dir>/<step>.manifest.json)."""
    inp = load_inputs(cfg)
    inp.out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.step == "embed":
        manifest = embed_step(cfg, inp, log)
    else:
        todo = subjects(cfg, inp)
        prompts = prompts_for(cfg, inp, todo)
        if cfg.dry_run:
            for p in prompts[:cfg.dry_run]:
                log(f"---\n{p}")
            return {}
        began = time.perf_counter()
        asked = ask_step(cfg, inp, todo, prompts, log)
        records = list(read_step(inp.out_dir, cfg.step).values())
        manifest = manifest_of(cfg, inp, records, asked, time.perf_counter() - began, {})
        c = manifest["counts"]
        log(f"wrote {inp.out_dir / (cfg.step + '.jsonl')}: {c['usable']} of {c['requests']} "
            f"answers usable")
        if c["unclosed_json"]:
            log(f"warning: {c['unclosed_json']} unusable answers end inside an unclosed JSON "
                f"object, most likely cut at --max_new_tokens {cfg.max_new_tokens}: raise it")
    atomic_write_text(inp.out_dir / f"{cfg.step}.manifest.json",
                      json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


HELP = {
    "dataset": "dataset name (a folder under --data_dir)",
    "data_dir": "folder holding <DATASET>/ (default: $REFINE_DATA_DIR or dataset/)",
    "dataset_augment": "the train file: augment (train_augment) or original",
    "item_file": "RecBole .item file with the titles (default: found as refine_llm.py finds it)",
    "out_dir": "where the step files go (default: <data_dir>/<DATASET>/hnlm)",
    "history": "users step: rated items shown per user at most (seeded sample)",
    "max_pairs_per_user": "negatives step: positive pairs per user at most (seeded sample; "
                          "0: all; default: all, 20 on ML-1M)",
    "seed": "seed of the samples",
    "limit": "only the first N subjects (items, users or pairs)",
    "dry_run": "print the first N prompts and exit",
}


def parse_args(argv=None) -> HNLMConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("step", choices=STEPS)
    handled = add_backend_flags(p, HNLMConfig)
    add_dataclass_flags(p, HNLMConfig, HELP, skip={*handled, "step"})
    return from_args(HNLMConfig, p.parse_args(argv))


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)),
                   interrupted="interrupted: run the same command again; the answer cache "
                               "keeps every request answered so far")


if __name__ == "__main__":
    sys.exit(main())
