"""llm/notebook.py and llm/reference.py by hand, on a fresh clone: a notebook written here
(our own wording, the authors' variable and field names), tiny data, a stub backend.
The comparison with the authors' notebooks themselves is tests/test_refine_reference.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import llm.backends
import refine_llm as rl
from data.items import read_train
from data.provenance import git_blob_sha1
from data.registry import REFINE_NOTEBOOKS
from data.schema import RATING_COL, DataError
from llm import reference as ref
from llm.notebook import StopRule, locate_notebook, read_notebook

MAIN = ("\nLIKED {positive_movies_5}\n=====\nCandidate List: {candidate_example}\n"
        "Answer: {only_title_4}\n=====\nCandidate List: {negative_movies_32}\nAnswer:\n")
RETRY = "\nAGAIN {positive_movies_5}\n{candidate_example}\n{only_title_4}\n{negative_movies_32}\n"
QUIET = dict(log=lambda *a: None)


def write_notebook(path: Path, main=MAIN, retry=RETRY, skip=(3,)) -> Path:
    cells = [
        f"prompt1 = {main!r}\n\ndef ask_llama1(question, tokenizer, model, device, "
        f"stop_token='=====', max_occurrences=2):\n    pass\n",
        f"prompt2 = {retry!r}\ndef ask_llama2(q, t, m, d, stop_token='=====', "
        f"max_occurrences=1):\n    pass\n",
        f"skip = np.array({list(skip)})\n",
        "%time something  # a magic: the cell is not Python\n"]
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": c} for c in cells]
                                + [{"cell_type": "markdown", "source": "notes"}]}))
    return path


# item: (title, genre); items 4 and 5 share their text, item 6 only its title with 1
ITEMS = {1: ("Alpha", "Drama"), 2: ("Bravo", "Comedy"), 3: ("Charlie", "Action Drama"),
         4: ("Delta's", "Horror"), 5: ("Delta's", "Horror"), 6: ("Alpha", "War"),
         7: ("Echo", "Drama"), 8: ("Fox", "Drama")}
# user 1: mean 3.25 (examples 4+2+1, candidates the 3s); user 2: mean < 3 (candidates 3s+2s);
# user 3 is on the skip list; user 10 has no 2/3 rows (one request, empty candidates)
ROWS = [(1, 1, 5), (1, 2, 5), (1, 4, 4), (1, 5, 2), (1, 6, 1), (1, 3, 3), (1, 7, 3),
        (1, 8, 3), (2, 1, 1), (2, 3, 2), (2, 7, 3), (2, 2, 4), (2, 6, 1), (3, 1, 3),
        (3, 2, 3), (10, 2, 5), (10, 8, 4), (10, 4, 5), (4, 1, 5)]


def write_data(root: Path, dataset: str = "ML-100K") -> Path:
    folder = root / dataset
    folder.mkdir(parents=True)
    pd.DataFrame(ROWS, columns=["user_id:token", "item_id:token", "rating:float"]).to_csv(
        folder / f"{dataset}_train_original.csv", index=False)
    raw = root / "raw" / "ml-100k"
    raw.mkdir(parents=True)
    pd.DataFrame([(i, t, 1990, g) for i, (t, g) in ITEMS.items()],
                 columns=["item_id:token", "movie_title:token_seq", "release_year:token",
                          "class:token_seq"]).to_csv(raw / "ml-100k.item", sep="\t", index=False)
    return root


def requests_of(root: Path, chunk_size=5, reseed=False, limit=None):
    warnings = []
    rules = read_notebook(write_notebook(root / "nb.ipynb"), REFINE_NOTEBOOKS["ML-100K"],
                          warn=warnings.append)
    train = read_train(root / "ML-100K" / "ML-100K_train_original.csv")
    items = ref.read_items(root / "raw" / "ml-100k" / "ml-100k.item", "movie_title:token_seq",
                           "class:token_seq")
    table = ref.notebook_table(train, items, "items")
    return rules, warnings, ref.plan_requests(table, rules, chunk_size, 2024, reseed, limit)


def shuffled(seq):
    """Each list of ``seq`` in the order numpy's shuffles put them, one after the other,
    after seeding with 2024."""
    arrays = [np.arange(len(s)) for s in seq]
    np.random.seed(2024)
    for a in arrays:
        np.random.shuffle(a)
    return [[s[i] for i in a] for s, a in zip(seq, arrays)]


def test_prompts_by_hand(tmp_path):
    rules, warnings, requests = requests_of(write_data(tmp_path))
    assert "not the authors' published notebook" in warnings[0]
    assert [(r.user, r.chunk) for r in requests] == [("1", 0), ("2", 0), ("4", 0), ("10", 0)]
    # user 1 rows by popularity (train rows per item: 1, 2 -> 4; 3, 6, 7, 8 -> 2 or 3 ...),
    # ties in file order; examples = 4-rated + 2-rated + 1-rated, candidates = 3-rated
    pop = pd.Series([i for _, i, _ in ROWS]).value_counts()
    user1 = sorted([r for r in ROWS if r[0] == 1], key=lambda r: -pop[r[1]])
    text = {i: f"<{t} (genre: {g})>" for i, (t, g) in ITEMS.items()}
    five = [text[i] for _, i, r in user1 if r == 5]
    examples = [text[i] for _, i, r in user1 if r == 4] + [text[i] for _, i, r in user1 if r == 2] \
        + [text[i] for _, i, r in user1 if r == 1]
    candidates = [text[i] for _, i, r in user1 if r == 3]
    examples, candidates = shuffled([examples, candidates])
    # the 4-rated item's text is also the 2-rated item's: both are in the example answer
    answer = [t.replace(" (genre: Horror)>", ">") for t in examples if "Delta" in t]
    assert len(answer) == 2

    def printed(items):  # numpy's printing: repr of each item, space-separated
        return "[" + " ".join(repr(t) for t in items) + "]"
    expected = MAIN.format(positive_movies_5=printed(five), candidate_example=printed(examples),
                           only_title_4=printed(answer), negative_movies_32=printed(candidates))
    assert requests[0].prompt(rules.main) == expected
    assert "\"<Delta's (genre: Horror)>\"" in expected  # a quote inside: numpy's repr
    # user 10: no 2/3 rows, asked with an empty candidate list
    assert requests[3].prompt(rules.main).endswith("Candidate List: []\nAnswer:\n")


def test_skip_list_limit_chunks_and_reseeding(tmp_path):
    write_data(tmp_path)
    rules, _, requests = requests_of(tmp_path, chunk_size=2)
    assert [(r.user, r.chunk) for r in requests] == [("1", 0), ("1", 1), ("2", 0), ("4", 0),
                                                     ("10", 0)]
    assert [len(r.arrays["negative_movies_32"]) for r in requests] == [2, 1, 2, 0, 0]
    _, _, limited = requests_of(tmp_path, chunk_size=2, limit=2)
    assert [r.prompt(rules.main) for r in limited] == [r.prompt(rules.main) for r in requests[:3]]
    # reseeding before every user: user 2's orders are what a fresh seed gives; user 2's
    # rows by popularity: items 1, 2, 3, 7, 6; examples 4s + 1s, candidates 3s + 2s
    _, _, reseeded = requests_of(tmp_path, reseed=True)
    text = {i: f"<{t} (genre: {g})>" for i, (t, g) in ITEMS.items()}
    examples, candidates = shuffled([[text[2], text[1], text[6]], [text[7], text[3]]])
    assert list(reseeded[1].arrays["candidate_example"]) == examples
    assert list(reseeded[1].arrays["negative_movies_32"]) == candidates
    # seeded once: user 2's shuffles follow user 1's (3 examples, 3 candidates)
    once = shuffled([[0, 1, 2], [0, 1, 2], [text[2], text[1], text[6]], [text[7], text[3]]])
    assert list(requests[2].arrays["candidate_example"]) == once[2]
    assert list(requests[2].arrays["negative_movies_32"]) == once[3]


class Fixed:
    """A backend whose counts are given: prompt -> n, tail -> m; answers ``answer``."""

    reads_prompts = True

    def __init__(self, n, m, answer="[<A>]"):
        self.n, self.m, self.answer, self.lengths = n, m, answer, []

    def count_tokens(self, text):
        return self.m if text.startswith("Candidate List:") else self.n

    def full_completion(self, prompt, max_length):
        self.lengths.append(max_length)
        return prompt + self.answer


@pytest.mark.parametrize("n, m, status", [(4000, 1000, "answered"), (4000, 1001, "too_long")])
def test_token_rule_and_generation_length(n, m, status):
    prompt = "\nCandidate List: x\nCandidate List: y\n"
    backend = Fixed(n, m)
    record = ref.ask_once(backend, prompt, StopRule("=====", 2), 5000)
    assert record["status"] == status
    assert backend.lengths == ([5000] if status == "answered" else [])
    no_tail = ref.ask_once(backend, "\nCandidate List: x\n", StopRule("=====", 2), 5000)
    assert no_tail["status"] == "no_marker"


def test_cut_rule_and_answer_slice():
    stop = StopRule("=====", 2)
    full = "P1\n=====\nP2 ===== x\nOut:\n[<A>]\nmore ===== [<B>]\n[<C>]"
    assert ref.cut_response(full, stop) == "P1\n=====\nP2 ===== x\nOut:\n[<A>]"
    prompt = "\nP1\n=====\nP2 ===== x\nOut:\n"
    record = ref.ask_once(Fixed(1, 1, "[<A>]\nmore ===== [<B>]"),
                          prompt.replace("P1", "Candidate List: P1").replace("P2", "Candidate List: P2"),
                          stop, 5000)
    assert record["status"] == "answered" and record["answer"] == "[<A>]"
    bad = ref.ask_once(Fixed(1, 1, "[<A> ====="), "Candidate List:Candidate List:\n", stop, 5000)
    assert bad["status"] == "malformed"


def test_parse_answers_and_title_decisions():
    records = [dict(user="1", status="answered", answer="[<A (genre: X)>, <B(genre: Y)>]\nno [<C>]"),
               dict(user="1", status="answered", answer="  [<D>]  "),
               dict(user="2", status="answered", answer="Answer: [<A>]"),
               dict(user="3", status="answered", answer="[]"),
               dict(user="4", status="too_long", answer=None)]
    assert ref.parse_answers(records) == {"1": {"A", "B(genre: Y)", "D"}, "3": set()}
    table = pd.DataFrame({"user_id:token": ["1", "1", "1", "3", "1", "1"],
                          "item_id:token": ["a", "b", "c", "d", "e", "f"],
                          "rating:float": [3.0, 2.0, 3.0, 2.0, 4.0, 1.0],
                          "title": ["A", "B", "D", "A", "A", "A"]})
    assert ref.decisions_by_title(table, ref.parse_answers(records)) == {"1": {"a", "c"}, "3": set()}


BROKEN = [("def ask_llama1(q, stop_token='=====', max_occurrences=N):\n    pass\n", "defaults"),
          ("def ask_llama1(q, stop_token='=====', max_occurrences=None):\n    pass\n", "a count"),
          ("prompt1 = 'a {positive_movies_5'\n", "not a format template")]


@pytest.mark.parametrize("cell, message", BROKEN)
def test_broken_notebooks_are_one_line_errors(tmp_path, cell, message):
    path = write_notebook(tmp_path / "nb.ipynb")
    notebook = json.loads(path.read_text())
    notebook["cells"].insert(0, {"cell_type": "code", "source": cell})  # the first one is read
    path.write_text(json.dumps(notebook))
    with pytest.raises(DataError, match=message):
        read_notebook(path, REFINE_NOTEBOOKS["ML-100K"], warn=lambda *a: None)
    path.write_text(json.dumps({"cells": "x"}))
    with pytest.raises(DataError, match="not a Jupyter notebook"):
        read_notebook(path, REFINE_NOTEBOOKS["ML-100K"])


def test_unusable_inputs_are_one_line_errors(tmp_path, capsys):
    write_data(tmp_path)
    notebook = str(write_notebook(tmp_path / "nb.ipynb"))
    base = ["--dataset", "ML-100K", "--data_dir", str(tmp_path), "--procedure", "reference"]
    assert rl.main(base + ["--notebook", notebook, "--dump_prompts", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert rl.main(base + ["--notebook", str(tmp_path), "--dump_prompts", "x"]) == 2
    assert "is a folder; give the notebook file" in capsys.readouterr().err
    item = tmp_path / "raw" / "ml-100k" / "ml-100k.item"
    item.write_text(item.read_text() + item.read_text().splitlines()[1] + "\n")
    assert rl.main(base + ["--notebook", notebook, "--dump_prompts", str(tmp_path / "p")]) == 2
    assert "item 1 has 2 rows" in capsys.readouterr().err


def test_notebook_read_errors(tmp_path):
    entry = REFINE_NOTEBOOKS["ML-100K"]
    with pytest.raises(DataError, match="expected"):
        read_notebook(write_notebook(tmp_path / "a.ipynb", main="{positive_movies_5} {x}"), entry)
    (tmp_path / "b.ipynb").write_text("not json")
    with pytest.raises(DataError, match="not a Jupyter notebook"):
        read_notebook(tmp_path / "b.ipynb", entry)
    (tmp_path / "c.ipynb").write_text(json.dumps({"cells": []}))
    with pytest.raises(DataError, match="no string assigned to prompt1"):
        read_notebook(tmp_path / "c.ipynb", entry)


def test_download_is_checked_by_git_blob(tmp_path, serve):
    entry = REFINE_NOTEBOOKS["ML-100K"]
    site = tmp_path / "site"
    fake = write_notebook(tmp_path / "x.ipynb")
    (site / Path(entry.path).parent).mkdir(parents=True)
    (site / entry.path).write_bytes(fake.read_bytes())
    with pytest.raises(DataError, match="rejected: git blob"):
        locate_notebook(entry, None, tmp_path / "dest", True, serve(site), log=lambda *a: None)
    assert not (tmp_path / "dest" / Path(entry.path).name).exists()
    with pytest.raises(DataError, match="allow downloading"):
        locate_notebook(entry, None, tmp_path / "dest", False)
    assert git_blob_sha1(fake) != entry.blob


def test_cli_refusals(tmp_path, capsys):
    write_data(tmp_path)
    base = ["--data_dir", str(tmp_path), "--procedure", "reference"]
    for extra, message in [(["--dataset", "Amazon_Books"], "published no LLM step"),
                           (["--dataset", "ML-100K", "--backend", "embedding"], "--backend hf or openai"),
                           (["--dataset", "ML-100K", "--model", "m", "--chat"], "without --chat"),
                           (["--dataset", "ML-100K", "--decisions", "x.csv"], "replays decisions"),
                           (["--dataset", "ML-100K", "--model", "m", "--no_download"], "missing"),
                           (["--dataset", "ML-100K", "--model", "m", "--seed", "1",
                             "--chunk_size", "10"], "--seed, --chunk_size: the authors'")]:
        assert rl.main(base + extra) == 2
        assert message in capsys.readouterr().err


def test_end_to_end_with_a_stub_resumes_from_the_cache(tmp_path, monkeypatch):
    write_data(tmp_path)
    notebook = write_notebook(tmp_path / "nb.ipynb")

    class Picky(Fixed):
        def full_completion(self, prompt, max_length):
            self.lengths.append(max_length)
            return prompt + ("[<Charlie>, <Echo (genre: Drama)>]" if "LIKED" in prompt else "[]")

    backend = Picky(10, 5)
    monkeypatch.setattr(llm.backends, "make_backend", lambda cfg, texts, *a: backend)
    cfg = dict(dataset="ML-100K", data_dir=str(tmp_path), procedure="reference",
               notebook=str(notebook), backend="openai", model="stub",
               output=str(tmp_path / "out.csv"), overwrite=True)
    manifest = rl.run(rl.RefineConfig(**cfg), **QUIET)
    assert len(backend.lengths) == 4 and manifest["notebook"]["published"] is False
    ratings = read_train(tmp_path / "out.csv")[RATING_COL].tolist()
    # users 1, 2, 4, 10 refined: their 2/3 rows -> 4.5 when the title is Charlie or Echo
    expected = [5, 5, 4, 0.5, 1, 4.5, 4.5, 0.5, 1, 4.5, 4.5, 4, 1, 3, 3, 5, 4, 5, 5]
    assert ratings == expected
    assert manifest["counts"]["rows_to_4_5"] == 4 and manifest["counts"]["users_refined"] == 2
    rl.run(rl.RefineConfig(**cfg), **QUIET)
    assert len(backend.lengths) == 4  # everything came from the cache
    # its cache is not replayed with the own procedure's parser
    assert rl.main(["--dataset", "ML-100K", "--data_dir", str(tmp_path), "--decisions",
                    str(tmp_path / "out.csv.cache.jsonl"), "--output", str(tmp_path / "o2.csv")]) == 2
