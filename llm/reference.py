"""The authors' relabeling procedure, request for request (``refine_llm.py --procedure
reference``; docs/llm.md lists where it differs from the project's own procedure).

What their notebook computes, as pure steps: the input table (train rows with the raw title
and genre strings), the users asked (ascending, minus the notebook's skip list), numpy's
seeded shuffles, the worked example matched by text, the chunks, prompts rendered through
the notebook's own templates with numpy's printing of string arrays, the token rule, the
answer cut, the parsing and the relabel rule. The prompt wording is read from the notebook
file (llm/notebook.py); nothing here holds it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data.schema import ITEM_COL, RATING_COL, USER_COL, DataError, canonical_int_ids
from llm.notebook import FIELDS, NotebookRules, StopRule

MARKER = "Candidate List:"  # the token rule measures the prompt from its second occurrence
TITLE, GENRE = "title", "genre"
_GENRE_TAIL = re.compile(r"\s*\(genre:.*$")  # the worked example's answer: genre dropped
_ANSWER_TITLE = re.compile(r"<([^>]+)>")
_ANSWER_GENRE = re.compile(r"\s\(genre:.*\)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # how their parser's text-mode file splits lines


# ----------------------------------------------------------------------------- input

def read_items(item_file: Path, title_col: str, genre_col: str) -> pd.DataFrame:
    """A RecBole .item file read the way the authors' preprocessing read it (pandas'
    defaults: quoted fields, "NA"-like titles missing): item id, title, genre."""
    try:
        table = pd.read_csv(item_file, sep="\t", dtype={ITEM_COL: str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{item_file}: cannot be read as a RecBole .item file "
                        f"({str(err).splitlines()[0]})") from None
    missing = [c for c in (ITEM_COL, title_col, genre_col) if c not in table.columns]
    if missing:
        raise DataError(f"{item_file}: no column {', '.join(missing)}")
    return table.rename(columns={title_col: TITLE, genre_col: GENRE})[[ITEM_COL, TITLE, GENRE]]


def read_netflix_items(folder: Path, titles: str, genres: str) -> pd.DataFrame:
    """Netflix titles (latin-1 lines "id,year,title", each line stripped, split at its first
    two commas) and genres ("id,genres"), as the authors' preprocessing read them."""
    rows = []
    try:
        with open(folder / titles, encoding="ISO-8859-1") as f:
            rows = [line.strip().split(",", 2) for line in f]
        genre = pd.read_csv(folder / genres, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"Netflix item text in {folder}: {err}") from None
    bad = next((n for n, r in enumerate(rows, 1) if len(r) != 3), None)
    if bad is not None:
        raise DataError(f"{folder / titles}: line {bad} is not 'id,year,title'")
    if genre.shape[1] != 2:
        raise DataError(f"{folder / genres}: {genre.shape[1]} columns, expected 2 (id, genres)")
    table = pd.DataFrame(rows, columns=[ITEM_COL, "year", TITLE])
    genre.columns = [ITEM_COL, GENRE]
    return table[[ITEM_COL, TITLE]].merge(genre, on=ITEM_COL, how="left")


def notebook_table(train: pd.DataFrame, items: pd.DataFrame, source) -> pd.DataFrame:
    """train_original's rows, in file order, with the title and genre of each item (the
    notebook's input file holds them as columns)."""
    repeated = items[ITEM_COL][items[ITEM_COL].duplicated()]
    if len(repeated):
        raise DataError(f"{source}: item {repeated.iloc[0]} has {int((items[ITEM_COL] == repeated.iloc[0]).sum())} "
                        f"rows; the authors' preprocessing joined ratings to items, so it never "
                        f"had an item twice")
    table = train[[USER_COL, ITEM_COL, RATING_COL]].merge(items, on=ITEM_COL, how="left")
    lacking = table[TITLE].isna() | table[GENRE].isna()
    if lacking.any():
        raise DataError(f"{int(lacking.sum())} train rows (item {table[ITEM_COL][lacking].iloc[0]}"
                        f", ...) have no title or genre in {source}; the authors' preprocessing "
                        f"dropped such rows, so their procedure never saw any")
    return table


def _user_key(users: pd.Series) -> pd.Series:
    """User ids as the notebook holds them (pandas read them): integers when every id is
    one written canonically, else text (where its integer skip list cannot apply)."""
    return users.astype(np.int64) if canonical_int_ids(users) else users.astype(str)


def listed_users(table: pd.DataFrame, rules: NotebookRules) -> int:
    """How many of the table's users the notebook's skip list leaves out (none when the
    ids are not integers: the list holds integers)."""
    key = _user_key(table[USER_COL])
    if key.dtype.kind != "i":
        return 0
    return int(np.isin(np.unique(key.to_numpy()), np.array(rules.skip, dtype=np.int64)).sum())


# ----------------------------------------------------------------------------- requests

@dataclass
class RefRequest:
    """One chunk of one user. ``arrays`` holds the numpy arrays the templates print (shared
    with the user's other chunks); ``key`` identifies the question in the answer cache."""

    user: str
    chunk: int
    arrays: dict = field(repr=False)
    key: str = ""

    def prompt(self, template: str) -> str:
        with np.printoptions(linewidth=np.inf):  # the notebook's one print option
            return template.format(**self.arrays)


def plan_requests(table: pd.DataFrame, rules: NotebookRules, chunk_size: int, seed: int,
                  reseed_per_user: bool, limit_users: int | None = None) -> list[RefRequest]:
    """Every request of the notebook's loop, in its order (docs/llm.md, "reference")."""
    text = "<" + table[TITLE] + " (genre: " + table[GENRE] + ")>"
    key = _user_key(table[USER_COL])
    popularity = table.groupby(ITEM_COL)[ITEM_COL].transform("size")
    frame = pd.DataFrame({"u": key, "id": table[USER_COL], "n": popularity, "text": text,
                          "r": table[RATING_COL]})
    frame = frame.sort_values(by=["u", "n"], ascending=[True, False])
    users = np.unique(frame["u"].to_numpy())
    if rules.skip and users.dtype.kind == "i":
        users = np.setdiff1d(users, np.array(rules.skip, dtype=np.int64))
    if limit_users:
        users = users[:limit_users]
    blocks = {u: g for u, g in frame.groupby("u", sort=False)}
    np.random.seed(seed)
    requests = []
    for user in users:
        if reseed_per_user:
            np.random.seed(seed)
        rows = blocks[user]
        texts, ratings = rows["text"].to_numpy(dtype=object), rows["r"].to_numpy()
        five, four, three, two, one = (texts[ratings == r] for r in (5, 4, 3, 2, 1))
        if np.mean(ratings) >= 3:
            examples, real = np.array(list(four) + list(two) + list(one)), three
        else:
            examples, real = np.array(list(four) + list(one)), np.array(list(three) + list(two))
        np.random.shuffle(examples)
        np.random.shuffle(real)
        answer = examples[np.isin(examples, four)]
        if len(answer):
            answer = np.array([_GENRE_TAIL.sub(">", t) for t in answer], dtype=object)
        chunks = ([real[i:i + chunk_size] for i in range(0, len(real), chunk_size)]
                  if len(real) > chunk_size else [real])
        user_id = str(rows["id"].iloc[0])
        for n, chunk in enumerate(chunks):
            arrays = {"positives": five, "examples": examples, "example_answer": answer,
                      "candidates": chunk}
            arrays = {name: arrays[role] for name, role in FIELDS.items()}
            requests.append(RefRequest(user_id, n, arrays))
    return requests


def keyed(requests: list[RefRequest], rules: NotebookRules, model_id: str) -> list[RefRequest]:
    """Fill each request's cache key: notebook blob, model, user, chunk, prompt hash."""
    for r in requests:
        digest = hashlib.sha256(r.prompt(rules.main).encode()).hexdigest()
        text = json.dumps(["reference", rules.blob, model_id, r.user, r.chunk, digest])
        r.key = hashlib.sha256(text.encode()).hexdigest()[:32]
    return requests


# ----------------------------------------------------------------------------- asking

def second_marker(prompt: str) -> int:
    """Where the token rule's tail starts: the second "Candidate List:" (-1: none, where
    the notebook's ask function fails)."""
    first = prompt.find(MARKER)
    return prompt.find(MARKER, first + 1) if first != -1 else -1


def cut_response(full: str, stop: StopRule) -> str:
    """The decoded text (prompt and continuation) up to the line where the separator
    occurs for the (keep + 1)-th time, that line dropped; stripped."""
    kept, seen = [], 0
    for line in full.split("\n"):
        if stop.separator in line:
            seen += 1
            if seen > stop.keep:
                break
        kept.append(line)
    return "\n".join(kept).strip()


def ask_once(backend, prompt: str, stop: StopRule, token_limit: int) -> dict:
    """One prompt through the notebook's ask function: token rule, greedy generation of
    up to the rule's length, cut; status "answered", "malformed" (no final "]"),
    "too_long" or "no_marker" (the notebook's function raises there)."""
    tail = second_marker(prompt)
    if tail == -1:
        return dict(status="no_marker", answer=None, raw=None, prompt_tokens=None)
    n_prompt = backend.count_tokens(prompt)
    length = n_prompt + backend.count_tokens(prompt[tail:])
    record = dict(prompt_tokens=n_prompt, max_length=length, answer=None, raw=None)
    if length > token_limit:
        return dict(record, status="too_long")
    full = backend.full_completion(prompt, length)
    response = cut_response(full, stop)
    status = "answered" if response.endswith("]") else "malformed"
    return dict(record, status=status, raw=full, answer=response[len(prompt) - 1:])


def ask_request(backend, request: RefRequest, rules: NotebookRules, token_limit: int) -> dict:
    """The notebook's handling of one chunk: the main prompt; when its answer does not end
    with "]", the retry prompt once (in the ML-100K notebook that prompt has no second
    "Candidate List:", so the notebook's retry always fails: "no_marker")."""
    record = dict(ask_once(backend, request.prompt(rules.main), rules.main_stop, token_limit),
                  layout="main")
    if record["status"] == "malformed":
        first = record
        record = dict(ask_once(backend, request.prompt(rules.retry), rules.retry_stop,
                               token_limit), layout="retry", first=first)
    return record


# ----------------------------------------------------------------------------- decisions

def parse_answers(records: list[dict]) -> dict[str, set[str]]:
    """User -> titles, as the notebook's parser reads its answer file (lines end at "\n",
    "\r\n" or "\r"): every answer line that starts with "[" (after stripping) makes its
    user refined; each <...> on it is a
    title, a whitespace + "(genre: ...)" part removed."""
    chosen: dict[str, set[str]] = {}
    for record in records:
        if record.get("status") != "answered":
            continue
        for line in _LINE_BREAK.split(record["answer"]):
            line = line.strip()
            if line.startswith("["):
                titles = chosen.setdefault(record["user"], set())
                titles.update(_ANSWER_GENRE.sub("", t).strip()
                              for t in _ANSWER_TITLE.findall(line))
    return chosen


def decisions_by_title(table: pd.DataFrame, chosen: dict[str, set[str]]) -> dict[str, set[str]]:
    """Refined user -> item ids of their 2/3 rows whose title (exact text) was chosen."""
    decisions = {user: set() for user in chosen}
    low = table[table[RATING_COL].isin((2.0, 3.0))]
    for user, item, title in zip(low[USER_COL], low[ITEM_COL], low[TITLE]):
        if user in chosen and title in chosen[user]:
            decisions[user].add(item)
    return decisions


def write_prompts(path: Path, rows) -> int:
    """(user, chunk, prompt) rows as JSON lines {"user", "chunk", "prompt"}, written
    atomically; returns the count."""
    from runs.files import atomic_write_text
    if path.is_dir():
        raise DataError(f"--dump_prompts {path} is a folder; give a file name")
    lines = [json.dumps({"user": u, "chunk": c, "prompt": p}, ensure_ascii=False)
             for u, c, p in rows]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(line + "\n" for line in lines))
    except OSError as err:
        raise DataError(f"--dump_prompts {path}: cannot write ({err.strerror})") from None
    return len(lines)


def show_prompts(cfg, rows, log) -> None:
    """``--dump_prompts`` (every row written) or ``--dry_run N`` (the first N printed);
    ``rows``: (user, chunk, prompt) triples, the same for both procedures."""
    if cfg.dump_prompts:
        n = write_prompts(Path(cfg.dump_prompts), rows)
        log(f"wrote {n} prompts to {cfg.dump_prompts}")
        return
    for user, chunk, prompt in list(rows)[:cfg.dry_run]:
        log(f"--- user {user}, chunk {chunk}\n{prompt}")
