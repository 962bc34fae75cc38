"""Asking a backend and keeping its answers: the append-only answer cache (resume after
``kill -9`` loses at most the request in flight), the retry layout, and decision files.
refine_llm.py drives them; an LLM step of another method can use the same cache."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from data.schema import DataError
from llm.procedure import Request, decisions_from_augment, decisions_from_records
from llm.prompts import cut_answer, is_complete
from runs.files import atomic_write_text


def check_file_to_write(path: Path | None, flag: str) -> None:
    """One line, before any request, for a path that cannot become a file: a folder, or a
    path under a file (the cache used to fail only at its first answer, the output after
    the last)."""
    if path is None:
        return
    if path.is_dir():
        raise DataError(f"{flag} {path} is a folder; give a file path")
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise DataError(f"{flag} {path}: {above} is a file, not a folder")


def check_file_to_read(path: Path | None, flag: str) -> None:
    """One line, before any request, for an input file that is missing or a folder."""
    if path is not None and not path.is_file():
        what = "a folder" if path.is_dir() else "not found"
        raise DataError(f"{flag} {path}: {what}")


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


def answer_requests(backend, requests: list[Request], cfg, cache: AnswerCache,
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
            asked, prompts = [], []
            for r in pending:
                prompt = r.prompt(layout) if backend.reads_prompts else None
                n_tokens = backend.count_tokens(prompt) if prompt is not None else None
                records[r.key]["prompt_tokens"] = n_tokens
                if n_tokens is not None and n_tokens > cfg.max_prompt_tokens:
                    records[r.key]["status"] = "too_long"
                else:
                    asked.append(r)
                    prompts.append(prompt)
            outputs = backend.generate(prompts, [r.context for r in asked]) if asked else []
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
        records = AnswerCache(path).records.values()
        if any(r.get("procedure") == "reference" for r in records):
            raise DataError(f"{path} holds answers of --procedure reference, which are read "
                            f"by the authors' rules: run that command again (it reads its "
                            f"cache and asks nothing answered) instead of --decisions")
        return decisions_from_records(records, train, texts_fn())
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
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
