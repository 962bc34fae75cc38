"""refine_llm.py's ``--procedure reference`` driver: find and read the authors' notebook,
build its requests from the data, ask the backend for every one not in the answer cache
(one request at a time, as the notebook does) and read the decisions off the answers the
notebook's way (llm/reference.py holds the steps)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from data.items import find_item_file
from data.registry import NETFLIX_GENRES, NETFLIX_TITLES
from data.schema import USER_COL, DataError, canonical_int_ids
from data.splits import resolve_data_dir, split_path
from llm import reference as ref
from llm.answers import AnswerCache
from llm.notebook import locate_notebook, notebook_entry, read_notebook


def reference_table(cfg, train: pd.DataFrame, entry) -> pd.DataFrame:
    """train_original with the raw titles and genres the notebook's input file held."""
    item_file = find_item_file(cfg.dataset, cfg.data_dir, cfg.item_file)
    if entry.dataset == "Netflix-1M" and not cfg.item_file:
        folder = item_file.parent
        items = ref.read_netflix_items(folder, NETFLIX_TITLES, NETFLIX_GENRES)
        return ref.notebook_table(train, items, folder)
    if not item_file.is_file():
        raise DataError(f"missing item file {item_file} (titles and genres); pass --item_file")
    items = ref.read_items(item_file, entry.title_col, entry.genre_col)
    return ref.notebook_table(train, items, item_file)


def ask_all(backend, todo, rules, token_limit: int, cache: AnswerCache) -> None:
    """Ask every request of ``todo`` in order, one at a time; each record is in the cache
    as soon as it is answered (a killed run resumes from there)."""
    from tqdm import tqdm
    try:
        with tqdm(total=len(todo), unit="request", desc="refine", file=sys.stderr) as bar:
            for r in todo:
                began = time.perf_counter()
                record = ref.ask_request(backend, r, rules, token_limit)
                cache.append(dict(record, key=r.key, user=r.user, chunk=r.chunk,
                                  procedure="reference",
                                  seconds=round(time.perf_counter() - began, 4)))
                bar.update(1)
    finally:
        cache.close()


def reference_counts(records: list[dict], asked: int, seconds: float) -> dict:
    status = pd.Series([rec["status"] for rec in records], dtype=object)
    return dict(
        chunks=len(records), chunks_asked_now=asked,
        chunks_answered=int((status == "answered").sum()),
        chunks_skipped_too_long=int((status == "too_long").sum()),
        chunks_skipped_malformed=int((status == "malformed").sum()),
        chunks_retried=sum(rec.get("layout") == "retry" for rec in records),
        chunks_retry_impossible=int((status == "no_marker").sum()),
        generation_seconds=round(seconds, 2),
        seconds_per_chunk=round(seconds / asked, 4) if asked else None)


def ask_reference(cfg, train: pd.DataFrame, output: Path, log=print):
    """(decisions, users asked, counts, notebook record), or None after ``--dry_run`` /
    ``--dump_prompts``."""
    from llm.backends import make_backend
    entry = notebook_entry(cfg.dataset)
    folder = split_path(resolve_data_dir(cfg.data_dir), cfg.dataset, "train_original").parent
    path = locate_notebook(entry, cfg.notebook, folder, download=not cfg.no_download, log=log)
    rules = read_notebook(path, entry, warn=log)
    table = reference_table(cfg, train, entry)
    requests = ref.plan_requests(table, rules, entry.chunk_size, entry.seed,
                                 entry.reseed_per_user, cfg.limit_users)
    if cfg.dump_prompts or cfg.dry_run:
        ref.show_prompts(cfg, [(r.user, r.chunk, r.prompt(rules.main)) for r in requests], log)
        return None
    requests = ref.keyed(requests, rules, cfg.model_id())
    cache = AnswerCache(cfg.cache_path(output))
    todo = [r for r in requests if r.key not in cache.records]
    users = list(dict.fromkeys(r.user for r in requests))
    listed = ref.listed_users(table, rules)
    if rules.skip and not canonical_int_ids(table[USER_COL]):
        log("warning: the user ids are not integers; the notebook's skip list does not apply")
    log(f"{cfg.dataset} (the authors' procedure, {path.name}): {len(users)} users "
        f"({listed} left out by the notebook's skip list), {len(requests)} requests, "
        f"{len(requests) - len(todo)} cached, {len(todo)} to ask ({cfg.backend})")
    started = time.perf_counter()
    if todo:
        ask_all(make_backend(cfg, {}, "full_completion"), todo, rules, entry.token_limit, cache)
    records = [cache.records[r.key] for r in requests]
    counts = dict(users=len(users), users_skipped_by_list=listed,
                  **reference_counts(records, len(todo), time.perf_counter() - started))
    if counts["chunks_retry_impossible"]:
        log(f"warning: {counts['chunks_retry_impossible']} answers did not end with \"]\" and "
            f"the notebook's retry prompt has no second \"{ref.MARKER}\": the notebook stops "
            f"with an error there (so the published run met none); these chunks are skipped")
    decisions = ref.decisions_by_title(table, ref.parse_answers(records))
    notebook = dict(path=str(path), git_blob=rules.blob, published=rules.published,
                    source=entry.url)
    return decisions, users, counts, notebook
