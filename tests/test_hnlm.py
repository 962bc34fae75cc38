"""llm/hnlm.py, HNLMRec's LLM pipeline: prompts and parsing by hand, the capped pairs, the
four steps through a scripted backend into a --model hnlmrec run, resume after kill -9
against a local fake server, and a real llama.cpp server (tests/test_refine_models.py)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main, write_synthetic_with_items
from data.schema import DataError
from data.vectors import read_pair_vectors
from llm import hnlm
from llm.hnlm import HNLMConfig, negative_of, parse_json_answer, profile_of

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text,expected", [
    ('{"hard_negative_item": "Item 99", "reasoning": "x"}', "Item 99"),
    ('Sure! {"hard_negative_item": " Alien 3 ", "reasoning": "sequel"} done', "Alien 3"),
    ('{"hard_negative_item": "None", "reasoning": "none fits"}', None),
    ('{"reasoning": "no title"}', None), ("Alien 3", None), ("", None), ("{broken", None),
    ('{"hard_negative_item": "Alien 3", "reasoning": {"why": "a sequel"}}', "Alien 3"),
    ('{"hard_negative_item": "Heat {1995}", "reasoning": "x"}', "Heat {1995}"),
])
def test_negative_answers_by_hand(text, expected):
    assert negative_of(text) == expected


def test_profiles_keep_unparsable_answers_whole():
    assert profile_of('{"summarization": "fans of Pixar", "reasoning": "kids"}') == \
        ("fans of Pixar", "kids", True)
    assert profile_of("  People who like cartoons.  ") == ("People who like cartoons.", "", False)
    assert parse_json_answer('{"a": 1} {"summarization": "s"}', "summarization") == \
        {"summarization": "s"}
    assert profile_of('{"summarization": "fans of {sci-fi}", "reasoning": "r"}') == \
        ("fans of {sci-fi}", "r", True)


def test_prompts_carry_the_inputs():
    texts = {"1": ("Toy Story", "Animation"), "2": ("Heat", "Crime")}
    item = hnlm.item_prompt("1", texts, "movies")
    assert '"title": "Toy Story"' in item and '"summarization"' in item
    user = hnlm.user_prompt([("1", 5.0), ("2", 1.0)], texts, {"1": "kids"}, "movies")
    assert '"description": "kids"' in user and '"description": "None"' in user
    assert '"rating": 1.0' in user
    neg = hnlm.negative_prompt("7", "2", texts, {"7": "likes crime"}, {}, "movies")
    assert '"user_profile": "likes crime"' in neg and '"title": "Heat"' in neg
    assert '"item_profile": "None"' in neg and "INTERACTED MOVIE:" in neg


def cfg(data, out, step, **kw):
    return HNLMConfig(step=step, dataset="Synth", data_dir=str(data), out_dir=str(out),
                      backend="openai", model="scripted", **kw)


def test_the_pair_cap_defaults_per_dataset():
    def cap(dataset, **kw):
        return HNLMConfig(step="negatives", dataset=dataset, backend="openai", model="m",
                          **kw).max_pairs_per_user
    assert (cap("ML-1M"), cap("ML-100K"), cap("Synth")) == (20, None, None)
    assert (cap("ML-1M", max_pairs_per_user=0), cap("ML-100K", max_pairs_per_user=5)) == (0, 5)
    with pytest.raises(DataError, match="max_pairs_per_user"):
        cap("ML-1M", max_pairs_per_user=-1)


def test_pairs_are_positive_rows_capped_per_user(tmp_path):
    data = write_synthetic_with_items(tmp_path / "data")
    c = cfg(data, tmp_path / "out", "negatives", max_pairs_per_user=3)
    pairs = hnlm.subjects(c, hnlm.load_inputs(c))
    assert len(pairs) == 30 * 3 and len(set(pairs)) == 90
    train = hnlm.load_inputs(c).train
    positive = {(str(u), str(i)) for u, i, r in train.values.tolist() if float(r) >= 4}
    assert set(pairs) <= positive
    assert hnlm.subjects(c, hnlm.load_inputs(c)) == pairs  # seeded
    every = hnlm.subjects(cfg(data, tmp_path / "out", "negatives"), hnlm.load_inputs(c))
    assert len(every) == len(positive) == 240
    no_cap = cfg(data, tmp_path / "out", "negatives", max_pairs_per_user=0)
    assert hnlm.subjects(no_cap, hnlm.load_inputs(no_cap)) == every


def scripted_answer(prompt: str) -> str:
    """A deterministic fake LLM: JSON for profiles, a title for 2 of 3 pairs, junk for one."""
    digest = int(hashlib.sha1(prompt.encode()).hexdigest(), 16)
    if "hard_negative_item" in prompt:
        if digest % 3 == 0:
            return "I cannot answer that."
        if digest % 5 == 0:  # cut off at the token limit: unusable, counted as unclosed
            return '{"hard_negative_item": "Film cut", "reason'
        return json.dumps({"hard_negative_item": f"Film {digest % 17}", "reasoning": "close"})
    return json.dumps({"summarization": f"viewers {digest % 5}", "reasoning": "r"})


class Scripted:
    reads_prompts = True

    def __init__(self, *args):
        self.asked = 0

    def generate(self, prompts, contexts=None):
        self.asked += len(prompts)
        return [scripted_answer(p) for p in prompts]


class FakeEncoder:
    def encode(self, sentences, **kw):
        return np.array([[len(s), s.count("1") + 1.0, 2.0] for s in sentences], np.float32)


def test_four_steps_then_hnlmrec_trains(tmp_path, monkeypatch):
    from llm import text_encoder
    data = write_synthetic_with_items(tmp_path / "data")
    out = tmp_path / "out"
    monkeypatch.setattr(hnlm, "make_backend", lambda *a: Scripted())
    monkeypatch.setattr(text_encoder, "load_encoder", lambda *a: FakeEncoder())
    monkeypatch.setattr(text_encoder, "encode", lambda enc, s: enc.encode(s))
    with pytest.raises(Exception, match="run the items step first"):
        hnlm.run(cfg(data, out, "users"), log=lambda _: None)
    manifests = {step: hnlm.run(cfg(data, out, step, max_pairs_per_user=4), log=lambda _: None)
                 for step in ("items", "users", "negatives")}
    assert manifests["items"]["counts"]["requests"] == 40
    assert manifests["users"]["counts"] == {"requests": 30, "usable": 30, "unusable": 0,
                                            "unclosed_json": 0, "asked_now": 30}
    neg = manifests["negatives"]["counts"]
    answers = [json.loads(line)["answer"] for line in open(out / "negatives.jsonl")]
    cut = sum(a.startswith('{"hard_negative_item": "Film cut", "reason') for a in answers)
    assert neg["requests"] == 120 and 0 < cut == neg["unclosed_json"] < neg["unusable"] < 120
    lines = []
    again = hnlm.run(cfg(data, out, "negatives", max_pairs_per_user=4), log=lines.append)
    assert again["counts"]["asked_now"] == 0  # all cached
    assert any(f"warning: {cut} unusable answers end inside an unclosed JSON" in line
               and "--max_new_tokens" in line for line in lines)
    hnlm.run(cfg(data, out, "embed"), log=lambda _: None)
    users, items, vectors, about = read_pair_vectors(out / "negatives.npz")
    assert len(users) == neg["usable"] and vectors.shape[1] == 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    assert about["negatives_sha1"]
    rc, result = run_main(["--model", "hnlmrec", "--dataset", "Synth", "--data_dir", str(data),
                           "--epochs", "1", "--batch_size", "64", "--negative_file",
                           str(out / "negatives.npz")], tmp_path)
    assert rc == 0
    log = (result / "Synth" / "run" / "train.log").read_text()
    assert f"negatives.npz: vectors for {neg['usable']} of 240 positive rows" in log


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1 answering with ``scripted_answer``."""

    def __enter__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send({"data": [{"id": "fake"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/completions"):
                    self.send_response(404)
                    self.end_headers()
                    return
                self._send({"choices": [{"text": scripted_answer(payload["prompt"])}]})

            def _send(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_every_step_resumes_after_kill_with_the_same_files(tmp_path):
    data = write_synthetic_with_items(tmp_path / "data")
    expected = {"items": 40, "users": 30, "negatives": 60}

    def strip(path):
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                for x in path.read_text().splitlines()]
    with FakeServer() as server:
        def step(name, out, crash=None):
            env = dict(os.environ)
            env.pop("REFINE_CRASH_AT", None)
            if crash:
                env["REFINE_CRASH_AT"] = crash
            return subprocess.run(
                [sys.executable, "-m", "llm.hnlm", name, "--dataset", "Synth", "--data_dir",
                 str(data), "--out_dir", str(out), "--backend", "openai", "--model", "fake",
                 "--base_url", server.url, "--max_pairs_per_user", "2"],
                cwd=REPO, env=env, capture_output=True, text=True)
        for name, total in expected.items():
            assert step(name, tmp_path / "straight").returncode == 0
            killed = step(name, tmp_path / "killed", "hnlm_request:7")
            assert killed.returncode == -signal.SIGKILL
            assert not (tmp_path / "killed" / f"{name}.jsonl").exists()
            cache = tmp_path / "killed" / f"{name}.cache.jsonl"
            assert cache.read_text().count("\n") == 7
            resumed = step(name, tmp_path / "killed")
            assert resumed.returncode == 0, resumed.stderr
            assert f"7 cached, {total - 7} to ask" in resumed.stdout
            straight = strip(tmp_path / "straight" / f"{name}.jsonl")
            assert strip(tmp_path / "killed" / f"{name}.jsonl") == straight
            assert len(straight) == total
