"""refine_llm.py: docs/llm.md procedure by hand, replay byte identity, cache/resume, CLI errors,
and the openai backend against a loopback fault injector."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import refine_llm as rl
from conftest import SHARED_DATASETS
from data.items import item_texts, read_train
from data.schema import ITEM_COL, RATING_COL, USER_COL, DataError
from data.splits import split_path
from llm import procedure as rp
from llm.backends.openai import OpenAIBackend
from llm.prompts import TEMPLATES, cut_answer, is_complete, parse_answer
from refine_helpers import TOY_ITEMS, LoopbackServer, write_toy

REPO = Path(__file__).resolve().parents[1]


def toy_cfg(root: Path, **kw) -> rl.RefineConfig:
    base = dict(dataset="ML-100K", data_dir=str(root), backend="openai", model="fake",
                output=str(root / "out.csv"), overwrite=True)
    return rl.RefineConfig(**{**base, **kw})


def toy_train(root: Path):
    return read_train(split_path(root, "ML-100K", "train_original"))


def texts_of(root: Path):
    return item_texts(toy_train(root), root / "ML-100K" / "ml-100k.item")


# ----------------------------------------------------------------------------- docs/llm.md by hand

def test_plan_matches_spec_by_hand(tmp_path):
    write_toy(tmp_path)
    plans = rp.plan_users(toy_train(tmp_path), texts_of(tmp_path), seed=2024)
    assert [p.user for p in plans] == ["1", "2", "10"]  # numeric order, not "10" < "2"
    # popularity (train rows per item): 1, 2 -> 3; 3..9 -> 2; 10, 11, 12 -> 1; ties in file order
    # user 1: mean 37/12 >= 3 -> examples r4+r2+r1 = [2, 11, 5, 6], candidates r3
    # user 2: mean 13/6 < 3 -> examples r4+r1 = [5, 1, 6], candidates r3+r2 = [4, 2, 3]
    # user 10: mean 17/5 >= 3 -> examples [1, 7], candidates [2, 8]
    unshuffled = [(["2", "11", "5", "6"], ["3", "4", "7", "8", "9", "10", "12"]),
                  (["5", "1", "6"], ["4", "2", "3"]),
                  (["1", "7"], ["2", "8"])]
    np.random.seed(2024)  # one global seed; per user: examples, then candidates
    for plan, (examples, candidates) in zip(plans, unshuffled):
        np.random.shuffle(examples)
        np.random.shuffle(candidates)
        assert plan.examples == examples
        assert plan.candidates == candidates
    assert plans[0].positives == ["1"] and plans[2].positives == ["9"] and plans[1].positives == []
    assert plans[0].mean == pytest.approx(37 / 12) and plans[1].mean == pytest.approx(13 / 6)
    assert set(plans[0].example_answer) == {"2", "11"}
    assert plans[0].example_answer == [i for i in plans[0].examples if i in {"2", "11"}]
    assert plans[1].example_answer == ["5"] and plans[2].example_answer == ["1"]


def test_prompt_holds_the_spec_parts(tmp_path):
    write_toy(tmp_path)
    cfg = toy_cfg(tmp_path)
    texts = texts_of(tmp_path)
    plans = rp.plan_users(toy_train(tmp_path), texts, 2024)
    requests = rp.build_requests(plans, texts, cfg)
    assert [len(r.items) for r in requests] == [5, 2, 3, 2]  # chunks of 5 per user
    main = requests[0].prompt("main")
    assert "ML-100K" in main
    assert "positively:\n[<Alpha (genre: Action)>]" in main
    example_answer = main.split("Answer: [", 1)[1].split("]", 1)[0]
    assert set(example_answer.split(", ")) == {"<Bravo>", "<Kilo>"}  # r4, without genre
    chunk = main.rsplit("Candidate movies:\n[", 1)[1].split("]", 1)[0]
    assert chunk == ", ".join(f"<{TOY_ITEMS[i][0]} (genre: {', '.join(TOY_ITEMS[i][1].split())})>"
                              for i in requests[0].items)
    retry = requests[0].prompt("retry")
    assert retry.startswith("Task:") and retry.index("Task:") < retry.index("positively:\n")
    assert len({r.key for r in requests}) == len(requests)


def test_answer_cut_check_and_parse():
    raw = " [<Bravo (genre: Comedy)>, <Kilo>]\n###\nTask.\n[<Never>]"
    answer = cut_answer(raw)
    assert answer == "[<Bravo (genre: Comedy)>, <Kilo>]" and is_complete(answer)
    assert parse_answer(answer) == (1, ["Bravo", "Kilo"])
    assert parse_answer("I think:\n[<A>]\nand <B> too\n[]") == (2, ["A"])
    assert not is_complete("[<Bravo>, <Ki")
    assert parse_answer("no list here]") == (0, [])


def test_relabel_rule_by_hand(tmp_path):
    write_toy(tmp_path)
    train, texts = toy_train(tmp_path), texts_of(tmp_path)
    records = [  # user 1 picks "Alpha" (matches item 12 by title) and "Golf"; user 2 picks none
        {"key": "a", "user": "1", "status": "answered", "answer": "[<Alpha>, <Golf (genre: Comedy)>]"},
        {"key": "b", "user": "2", "status": "answered", "answer": "[]"},
        {"key": "c", "user": "10", "status": "malformed", "answer": "[<Bravo"},
    ]
    decisions = rp.decisions_from_records(records, train, texts)
    assert decisions == {"1": {"12", "7"}, "2": set()}
    ratings, counts = rp.relabel(train, decisions, texts)
    expected = {("1", "12"): 4.5, ("1", "7"): 4.5, ("1", "3"): 0.5, ("1", "4"): 0.5,
                ("1", "5"): 0.5, ("1", "8"): 0.5, ("1", "9"): 0.5, ("1", "10"): 0.5,
                ("2", "2"): 0.5, ("2", "3"): 0.5, ("2", "4"): 0.5,
                ("10", "7"): 2.0, ("10", "8"): 3.0, ("10", "2"): 3.0}
    for (u, i, r), new in zip(train[[USER_COL, ITEM_COL, RATING_COL]].itertuples(index=False),
                              ratings):
        assert new == expected.get((u, i), r), (u, i)
    assert counts["users_refined"] == 2 and counts["users_unrefined"] == 1
    assert (counts["rows_to_4_5"], counts["rows_to_0_5"], counts["rows_low_kept"]) == (2, 9, 3)


def test_agreement_by_hand(tmp_path):
    write_toy(tmp_path)
    train = toy_train(tmp_path)
    low = train[RATING_COL].isin((2.0, 3.0)).to_numpy()
    ours = train[RATING_COL].to_numpy().copy()
    ref = ours.copy()
    idx = np.flatnonzero(low)[:4]  # ours: P P N N, reference: P N P N -> tp 1, fp 1, fn 1
    ours[idx], ref[idx] = [4.5, 4.5, 0.5, 0.5], [4.5, 0.5, 4.5, 0.5]
    ref[np.flatnonzero(low)[4]] = 0.5  # refined only in the reference
    path = tmp_path / "ref.csv"
    rl.write_augment(train, ref, path)
    a = rp.agreement(train, ours, path)
    assert a["rows_compared"] == 4 and a["accuracy"] == 0.5
    assert a["precision"] == 0.5 and a["recall"] == 0.5 and a["f1"] == 0.5
    assert a["rows_refined_only_reference"] == 1 and a["rows_refined_only_ours"] == 0


# ----------------------------------------------------------------------------- replay

@pytest.mark.parametrize("dataset", ["ML-100K", "Amazon_Digital_Music"])
def test_replay_of_published_decisions_is_byte_identical(tmp_path, dataset):
    folder = SHARED_DATASETS / dataset
    published = folder / f"{dataset}_train_augment.csv"
    if not published.is_file():
        pytest.skip(f"{published} absent (set $REFINE_DATA_DIR to the split folders)")
    data_dir = str(SHARED_DATASETS)
    out, dec = tmp_path / "a.csv", tmp_path / "decisions.jsonl"
    assert rl.main(["--dataset", dataset, "--data_dir", data_dir, "--decisions", str(published),
                    "--output", str(out), "--write_decisions", str(dec)]) == 0
    assert out.read_bytes() == published.read_bytes()
    out2 = tmp_path / "b.csv"  # the same through the decisions JSONL
    assert rl.main(["--dataset", dataset, "--data_dir", data_dir, "--decisions", str(dec),
                    "--output", str(out2)]) == 0
    assert out2.read_bytes() == published.read_bytes()
    manifest = json.loads((tmp_path / "b.manifest.json").read_text())
    expected = {"ML-100K": (819, 116, 14103, 7957), "Amazon_Digital_Music": (1214, 275, 2468, 2002)}
    c = manifest["counts"]
    assert (c["users_refined"], c["users_unrefined"], c["rows_to_4_5"], c["rows_to_0_5"]) == \
        expected[dataset]
    # a dropped decision changes the bytes: the test can fail
    lines = dec.read_text().splitlines()
    dec.write_text("\n".join(lines[1:]) + "\n")
    assert rl.main(["--dataset", dataset, "--data_dir", data_dir, "--decisions", str(dec),
                    "--output", str(out2), "--overwrite"]) == 0
    assert out2.read_bytes() != published.read_bytes()


# ----------------------------------------------------------------------------- bad input

def test_bad_input_one_line_errors(tmp_path, capsys):
    write_toy(tmp_path)
    src = split_path(tmp_path, "ML-100K", "train_original")
    before = src.read_bytes()
    cases = [
        (["--backend", "nope"], "unknown backend"),
        (["--backend", "hf", "--model", str(tmp_path / "missing_model")], "does not exist"),
        (["--backend", "openai", "--model", "m", "--base_url", "http://127.0.0.1:9/v1",
          "--max_retries", "0", "--timeout", "2"], "not answering"),
        (["--backend", "openai", "--model", "m", "--output", str(src)], "refusing"),
        (["--backend", "openai"], "needs --model"),
    ]
    for extra, message in cases:
        code = rl.main(["--dataset", "ML-100K", "--data_dir", str(tmp_path)] + extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, (extra, err)
    assert src.read_bytes() == before
    assert not split_path(tmp_path, "ML-100K", "train_augment").exists()
    assert rl.main(["--dataset", "Nope", "--data_dir", str(tmp_path), "--model", "m"]) == 2


def test_items_without_text_are_skipped_and_counted(tmp_path):
    write_toy(tmp_path)
    item_file = tmp_path / "ML-100K" / "ml-100k.item"
    item_file.write_text("\n".join(l for l in item_file.read_text().splitlines()
                                   if not l.startswith("3\t")) + "\n")
    with LoopbackServer() as server:
        manifest = rl.run(toy_cfg(tmp_path, base_url=server.url), log=lambda *a: None)
    assert manifest["counts"]["candidates_without_text"] == 2  # item 3: user 1 (r3), user 2 (r2)
    out = pd.read_csv(tmp_path / "out.csv", dtype={USER_COL: str, ITEM_COL: str})
    kept = out[out[ITEM_COL] == "3"][RATING_COL].tolist()
    assert kept == [3.0, 2.0]  # never asked -> unchanged


# ----------------------------------------------------------------------------- openai + faults

class _Cfg:
    def __init__(self, url, **kw):
        self.base_url, self.model, self.chat, self.timeout = url, "fake", False, 1.0
        self.max_retries, self.max_new_tokens, self.api_key_env = 2, 32, "NO_SUCH_KEY_VAR"
        self.concurrency = 1
        self.__dict__.update(kw)


PROMPT = "Candidate movies:\n[<Alpha (genre: Action)>, <Bravo>]\nAnswer:"


@pytest.mark.parametrize("fault", ["error", "timeout", "malformed", "garbage"])
def test_openai_backend_retries_each_fault(fault):
    with LoopbackServer(plan=[fault], stall=3.0) as server:
        backend = OpenAIBackend(_Cfg(server.url), backoff=0.01)
        assert backend.generate([PROMPT]) == [" [<Alpha>]\n###\n"]
        assert server.completions == 2  # the faulty answer, then the retry


@pytest.mark.parametrize("concurrency", [1, 4])
def test_openai_backend_sends_a_batch_concurrently_in_order(concurrency):
    prompts = [PROMPT.replace("Alpha", f"Title {k}") for k in range(8)]
    with LoopbackServer(plan=["slow"] * 8, stall=0.3) as server:
        backend = OpenAIBackend(_Cfg(server.url, concurrency=concurrency))
        assert backend.generate(prompts) == [f" [<Title {k}>]\n###\n" for k in range(8)]
        assert server.completions == 8 and server.max_in_flight == concurrency


@pytest.mark.parametrize("fault", ["error", "malformed"])
def test_openai_backend_gives_up_with_one_line(fault):
    with LoopbackServer(plan=[fault] * 20) as server:
        backend = OpenAIBackend(_Cfg(server.url, max_retries=1), backoff=0.01)
        with pytest.raises(DataError) as err:
            backend.generate([PROMPT])
        assert "\n" not in str(err.value)


def test_openai_chat_and_run_end_to_end(tmp_path):
    write_toy(tmp_path)
    with LoopbackServer(plan=["error", "malformed"]) as server:
        manifest = rl.run(toy_cfg(tmp_path, base_url=server.url, chat=True), log=lambda *a: None)
    c = manifest["counts"]
    assert c["chunks"] == 4 and c["chunks_answered"] == 4 and c["users_refined"] == 3
    assert c["rows_to_4_5"] == 4  # the first candidate of each chunk
    assert Path(tmp_path / "out.csv.cache.jsonl").is_file()
    assert json.loads((tmp_path / "out.manifest.json").read_text())["template"] == "movies"


def test_endpoint_down_writes_nothing(tmp_path):
    write_toy(tmp_path)
    with LoopbackServer(plan=["error"] * 50) as server:
        cfg = toy_cfg(tmp_path, base_url=server.url, max_retries=0)
        with pytest.raises(DataError):
            rl.run(cfg, log=lambda *a: None)
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "out.manifest.json").exists()


# ----------------------------------------------------------------------------- resume

def _cli(root: Path, url: str, out: str) -> list[str]:
    return [sys.executable, str(REPO / "refine_llm.py"), "--dataset", "ML-100K", "--data_dir",
            str(root), "--backend", "openai", "--model", "fake", "--base_url", url,
            "--output", str(root / out), "--cache", str(root / "cache.jsonl"), "--overwrite"]


def test_resume_after_kill_gives_identical_output(tmp_path):
    write_toy(tmp_path)
    with LoopbackServer() as server:  # uninterrupted run
        rl.run(toy_cfg(tmp_path, base_url=server.url, output=str(tmp_path / "full.csv"),
                       cache=str(tmp_path / "full_cache.jsonl")), log=lambda *a: None)
    cache = tmp_path / "cache.jsonl"
    with LoopbackServer(plan=[None, None, "hang"]) as server:  # hangs on the 3rd chunk
        proc = subprocess.Popen(_cli(tmp_path, server.url, "resumed.csv"), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600  # generous: CI machines may be busy
        while time.time() < deadline and server.completions < 3 and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert server.completions == 3, "the run ended or stalled before its third chunk"
    assert len(cache.read_text().splitlines()) == 2  # lost only the chunk in flight
    assert not (tmp_path / "resumed.csv").exists()
    with open(cache, "a") as f:  # a torn line, as from a kill mid-write
        f.write('{"key": "dead')
    with LoopbackServer() as server:
        subprocess.run(_cli(tmp_path, server.url, "resumed.csv"), cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert server.completions == 2  # only the two missing chunks were asked
    assert (tmp_path / "resumed.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    manifest = json.loads((tmp_path / "resumed.manifest.json").read_text())
    assert manifest["counts"]["chunks_asked_now"] == 2


def test_templates_one_per_family():
    assert set(TEMPLATES) == {"movies", "music", "books"}
    assert len({t.digest for t in TEMPLATES.values()}) == 3
