"""refine_llm.py --procedure reference against the authors' notebooks themselves.

The notebooks' own code cells (from $REFINE_REFERENCE_DIR) run with a stub tokenizer and
model that record every prompt; our procedure runs with a stub backend under the same rules
(tokens = words + 1, the same canned answers). Same requests, same order, byte-identical
prompts, same generation lengths, and the notebooks' own parser and relabel cells give the
same train_augment as ours. On the published ML-100K split and synthetic ML-1M / Netflix-1M
data; each test skips with its reason where the notebooks are not present.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pandas as pd
import pytest

import llm.backends
import refine_llm as rl
from conftest import SHARED_DATASETS, SHARED_RAW, SHARED_REFERENCE
from data.items import read_train
from data.schema import RATING_COL, DataError
from notebook_stub import (FORMATS, SEPARATOR, StubBackend, StubModel, canned_answer,
                           run_notebook)

NOTEBOOKS = SHARED_REFERENCE / "refine_notebooks"
QUIET = dict(log=lambda *a: None)


def needs_notebooks(dataset: str):
    return pytest.mark.skipif(
        not (NOTEBOOKS / dataset / "2_augmenting_LLM_llama.ipynb").is_file(),
        reason=f"$REFINE_REFERENCE_DIR/refine_notebooks/{dataset} (the authors' notebooks) "
               f"is not present")


def notebook(dataset: str, n: int) -> Path:
    names = {2: "2_augmenting_LLM_llama.ipynb", 3: "3_augmenting_train_dataset.ipynb"}
    return NOTEBOOKS / dataset / names[n]


def ours(root: Path, dataset: str, backend: StubBackend, monkeypatch, **kw) -> dict:
    monkeypatch.setattr(llm.backends, "make_backend", lambda cfg, texts, *a: backend)
    cfg = rl.RefineConfig(dataset=dataset, data_dir=str(root), procedure="reference",
                          notebook=str(notebook(dataset, 2)), backend="openai", model="stub",
                          output=str(root / "out.csv"), overwrite=True, **kw)
    return rl.run(cfg, **QUIET)


def compare(root: Path, work: Path, dataset: str, monkeypatch, answer=canned_answer,
            run_parser=True):
    """Both sides on the same data; asserts the calls and (with ``run_parser``) the
    relabeled ratings are the same; returns (calls, manifest)."""
    model, backend = StubModel(answer), StubBackend(answer)
    run_notebook(notebook(dataset, 2), work, model)
    manifest = ours(root, dataset, backend, monkeypatch)
    assert len(backend.calls) == len(model.calls)
    for n, (a, b) in enumerate(zip(model.calls, backend.calls)):
        assert a == b, f"request {n} differs"
    if run_parser:
        space = run_notebook(notebook(dataset, 3), work, StubModel())
        theirs = space["train"][RATING_COL].to_numpy(dtype=float)
        mine = read_train(root / "out.csv")[RATING_COL].to_numpy()
        assert len(theirs) == len(mine) and (theirs == mine).all()
    return model.calls, manifest


def notebook_input(table: pd.DataFrame, path: Path) -> None:
    """Write the notebook's input file; ratings as floats: the relabel cell writes 4.5 into
    that column, which pandas 2 did by upcasting integers and pandas 3 refuses."""
    table.assign(**{RATING_COL: table[RATING_COL].astype(float)}).to_csv(path, index=False)


# ----------------------------------------------------------------------------- ML-100K, published

@needs_notebooks("ML-100K")
@pytest.mark.skipif(not (SHARED_DATASETS / "ML-100K").is_dir() or
                    not (SHARED_RAW / "ml-100k" / "ml-100k.item").is_file(),
                    reason="$REFINE_DATA_DIR/ML-100K or the raw ml-100k.item is not present")
def test_ml100k_published_split_request_for_request(tmp_path, monkeypatch):
    root, work = tmp_path / "data", tmp_path / "work"
    (root / "ML-100K").mkdir(parents=True)
    (root / "raw" / "ml-100k").mkdir(parents=True)
    work.mkdir()
    train_file = SHARED_DATASETS / "ML-100K" / "ML-100K_train_original.csv"
    item_file = SHARED_RAW / "ml-100k" / "ml-100k.item"
    (root / "ML-100K" / train_file.name).write_bytes(train_file.read_bytes())
    (root / "raw" / "ml-100k" / item_file.name).write_bytes(item_file.read_bytes())
    # the notebook's input: the same rows with the .item columns (and a timestamp, which it
    # counts per item), as the authors' preprocessing wrote it
    table = pd.read_csv(train_file).merge(pd.read_csv(item_file, sep="\t"),
                                          on="item_id:token", how="left")
    table.insert(3, "timestamp:float", 0)
    notebook_input(table, work / train_file.name)

    calls, manifest = compare(root, work, "ML-100K", monkeypatch)
    dump = tmp_path / "prompts.jsonl"
    rl.run(rl.RefineConfig(dataset="ML-100K", data_dir=str(root), procedure="reference",
                           notebook=str(notebook("ML-100K", 2)), dump_prompts=str(dump)), **QUIET)
    prompts = pd.read_json(dump, lines=True)
    assert len(prompts) == 3789 and prompts["user"].nunique() == 822
    counts = manifest["counts"]
    assert counts["chunks"] == 3789 and counts["users"] == 822
    assert counts["users_skipped_by_list"] == 116
    assert counts["chunks_skipped_too_long"] == 3789 - len(calls)
    asked = set(p for p, _ in calls)
    assert [p for p in prompts["prompt"] if p in asked] == [p for p, _ in calls]
    assert counts["chunks_answered"] == len(calls) and counts["rows_to_4_5"] > 0


# ----------------------------------------------------------------------------- synthetic data

def synthetic(dataset: str, root: Path, work: Path, seed: int = 5) -> None:
    """A small dataset in both layouts: ours (ids + ratings, raw item files) and the
    notebook's input (the same rows with title/genre/timestamp columns)."""
    rng = random.Random(seed)
    netflix = dataset == "Netflix-1M"
    users = ([544, 1871, 2003, 7, 30, 101, 2642389] + list(range(40, 60)) if netflix
             else list(range(1, 41)))
    titles = ["Alpha", "Schindler's List", 'The "Best" Film', "Comma, The", "Alpha", "Trailing ",
              "Beta", "Gamma (1995)", "Delta & Co.", "Epsilon"] + [f"Movie {n}" for n in range(40)]
    genres = ["Drama", "Action Comedy", "Drama", "Horror", "Drama", "Sci-Fi", "Romance",
              "Drama War", "Comedy", "Thriller"] + [rng.choice(["Drama", "Comedy", "Action"])
                                                   for _ in range(40)]
    items = list(range(1, len(titles) + 1))
    rows = []
    for u in users:
        heavy = u in (7, 40, 1, 2)
        for i in rng.sample(items, rng.randint(25, 49) if heavy else rng.randint(6, 18)):
            rows.append((u, i, rng.choice([1, 2, 3, 3, 3, 4, 4, 5] if u % 3 else [1, 1, 2, 2, 3, 4])))
    rng.shuffle(rows)
    train = pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "rating:float"])
    folder = root / dataset
    folder.mkdir(parents=True)
    train.to_csv(folder / f"{dataset}_train_original.csv", index=False)
    title_col, genre_col = (("title:token", "genres:token") if netflix
                            else ("movie_title:token_seq", "genre:token_seq"))
    meta = pd.DataFrame({"item_id:token": items, title_col: titles, genre_col: genres})
    if netflix:
        raw = root / "raw" / "netflix"
        raw.mkdir(parents=True)
        (raw / "movie_titles.csv").write_text(
            "".join(f"{i},1999,{t}\n" for i, t in zip(items, titles)), encoding="latin-1")
        pd.DataFrame({"movieId": items, "genres": genres}).to_csv(raw / "netflix_genres.csv",
                                                                 index=False)
    else:
        raw = root / "raw" / "ml-1m"
        raw.mkdir(parents=True)
        meta.insert(2, "release_year:token", 1999)
        meta.to_csv(raw / "ml-1m.item", sep="\t", index=False)
    if netflix:  # their preprocessing stripped each movie_titles.csv line
        meta[title_col] = meta[title_col].str.rstrip()
    table = train.merge(meta[["item_id:token", title_col, genre_col]], on="item_id:token")
    table.insert(3, "timestamp:float", 0)
    work.mkdir()
    notebook_input(table, work / f"{dataset}_train_original.csv")


def malformed_sometimes(prompt: str) -> str:
    """canned answers, about a third of them without the closing "]"."""
    answer = canned_answer(prompt)
    bad = hashlib.sha1(prompt.encode()).digest()[-1] % 3 == 0
    return answer.rstrip().rstrip("]") + " and more" if bad else answer


@needs_notebooks("ML-1M")
def test_ml1m_notebook_on_synthetic_data_with_its_working_retry(tmp_path, monkeypatch):
    root, work = tmp_path / "data", tmp_path / "work"
    synthetic("ML-1M", root, work)
    calls, manifest = compare(root, work, "ML-1M", monkeypatch, answer=malformed_sometimes)
    counts = manifest["counts"]
    assert counts["chunks_retried"] > 0 and counts["chunks_skipped_malformed"] > 0
    assert counts["chunks_retry_impossible"] == 0
    assert counts["users_skipped_by_list"] == 8 and counts["users"] == 40 - 8


@needs_notebooks("Netflix-1M")
def test_netflix_notebook_on_synthetic_data_reseeds_and_chunks_by_ten(tmp_path, monkeypatch):
    root, work = tmp_path / "data", tmp_path / "work"
    synthetic("Netflix-1M", root, work)
    calls, manifest = compare(root, work, "Netflix-1M", monkeypatch)
    assert manifest["counts"]["users"] == 27 - 4  # 544, 1871, 2003, 2642389 are on its list
    assert max(p.rsplit("Candidate List:", 1)[1].count("<") for p, _ in calls) == 10


@needs_notebooks("ML-100K")
def test_ml100k_notebook_cannot_retry_and_we_say_so(tmp_path, monkeypatch):
    """The ML-100K notebook's retry prompt has no second "Candidate List:": its ask
    function fails on the first answer without a final "]"; ours records "no_marker"."""
    root, work = tmp_path / "data", tmp_path / "work"
    synthetic("ML-1M", root, work)
    (root / "ML-1M").rename(root / "ML-100K")
    (root / "ML-100K" / "ML-1M_train_original.csv").rename(
        root / "ML-100K" / "ML-100K_train_original.csv")
    item = pd.read_csv(root / "raw" / "ml-1m" / "ml-1m.item", sep="\t")
    (root / "raw" / "ml-100k").mkdir()
    item.rename(columns={"genre:token_seq": "class:token_seq"}).to_csv(
        root / "raw" / "ml-100k" / "ml-100k.item", sep="\t", index=False)
    table = pd.read_csv(work / "ML-1M_train_original.csv")
    notebook_input(table.rename(columns={"genre:token_seq": "class:token_seq"}),
                   work / "ML-100K_train_original.csv")

    def first_bad(prompt):
        return "\n[<never closed>" if prompt.count(SEPARATOR) else canned_answer(prompt)

    with pytest.raises((NameError, UnboundLocalError)):
        run_notebook(notebook("ML-100K", 2), work, StubModel(first_bad))
    manifest = ours(root, "ML-100K", StubBackend(first_bad), monkeypatch)
    counts = manifest["counts"]
    assert counts["chunks_retry_impossible"] == counts["chunks"] - counts["chunks_skipped_too_long"]
    assert counts["users_refined"] == 0


def test_formats_cover_the_parsing_differences():
    """The canned formats include those where the two procedures' parsers differ (no space
    before "(genre:") or where line breaks matter (a lone carriage return), and the
    production parsers behave as documented on them."""
    from llm.prompts import parse_answer
    from llm.reference import parse_answers
    assert any("nospace" in f for f in FORMATS) and any("\r" in f for f in FORMATS)

    def theirs(answer):
        return parse_answers([dict(user="u", status="answered", answer=answer)])
    assert theirs("[<A(genre: G)>]") == {"u": {"A(genre: G)"}}
    assert parse_answer("[<A(genre: G)>]")[1] == ["A"]
    assert theirs("x\r[<B>]") == {"u": {"B"}} and parse_answer("x\r[<B>]")[1] == ["B"]
    # a Unicode line separator is no line break to a text-mode file, but is to splitlines
    assert theirs("x\u2028[<B>]") == {} and parse_answer("x\u2028[<B>]")[1] == ["B"]


@pytest.mark.parametrize("dataset", ["ML-100K", "ML-1M", "Netflix-1M"])
def test_registry_and_download_agree_with_the_notebooks(dataset, tmp_path, serve):
    """The registry's blob and skip list are the notebook's; served on loopback, the file
    downloads, verifies and reads."""
    from data.registry import REFINE_NOTEBOOKS
    from llm.notebook import locate_notebook, read_notebook
    if not notebook(dataset, 2).is_file():
        pytest.skip(f"$REFINE_REFERENCE_DIR/refine_notebooks/{dataset} is not present")
    entry = REFINE_NOTEBOOKS[dataset]
    site = tmp_path / "site"
    (site / entry.path).parent.mkdir(parents=True)
    (site / entry.path).write_bytes(notebook(dataset, 2).read_bytes())
    warnings = []
    path = locate_notebook(entry, None, tmp_path / "dest", True, serve(site), log=lambda *a: None)
    rules = read_notebook(path, entry, warn=warnings.append)
    assert rules.published and not warnings and list(rules.skip) == entry.skip_users()
    assert (rules.main_stop.keep, rules.retry_stop.keep) == (2, 1)
    with pytest.MonkeyPatch.context() as patch:  # a damaged registry copy is noticed
        patch.setattr(type(entry), "skip_users", lambda self: [1, 2])
        with pytest.raises(DataError, match="registry"):
            read_notebook(path, entry)
    assert rules.main_stop.separator == SEPARATOR == rules.retry_stop.separator
    assert rules.main.count("Candidate List:") == 2
    # the ML-100K retry template spells its list heading differently: no second marker
    assert rules.retry.count("Candidate List:") == (0 if dataset == "ML-100K" else 2)
