"""The backend registry (llm/backends/__init__.py): a backend is one file and one registry
line. This module stands for a new backend's file (``Scratch`` and its ``BACKEND``
declaration below); the ``scratch`` fixture is the registry line. Through it
refine_llm.py, ``python -m llm.augment`` and ``python -m llm.hnlm`` (their ``main(argv)``)
list the backend, take its own flags, build it, write what it answers, and refuse what it
cannot do with one line. The backends that came with the project keep their flags,
defaults and model ids."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import refine_llm as rl
from conftest import run_main, write_synthetic_with_items
from data.schema import ITEM_COL, RATING_COL, USER_COL, DataError
from llm import augment, hnlm
from llm.backends import (BACKENDS, Backend, BackendSettings, Option, config_record,
                          declaration, make_backend)
from refine_helpers import TOY_ITEMS, TOY_ROWS, LoopbackServer, candidates_of, write_toy


# ----------------------------------------------------------------------------- the new backend

class Scratch:
    """A deterministic fake LLM: the ``--scratch_pick``-th candidate in refine_llm.py's and
    llm.augment's prompts, ``--scratch_tag`` in llm.hnlm's JSON answers."""

    reads_prompts = True
    prompts: list[str] = []  # every prompt asked, across instances

    def __init__(self, cfg):
        self.pick, self.tag = cfg.scratch_pick, cfg.scratch_tag

    def count_tokens(self, prompt: str) -> int:
        return len(prompt.split())

    def generate(self, prompts, contexts=None) -> list[str]:
        Scratch.prompts += prompts
        return [self.answer(p) for p in prompts]

    def answer(self, prompt: str) -> str:
        if '"hard_negative_item"' in prompt:
            return json.dumps({"hard_negative_item": f"{self.tag} negative", "reasoning": "r"})
        if '"summarization"' in prompt:
            return json.dumps({"summarization": f"{self.tag} profile", "reasoning": "r"})
        k = re.search(r"\(1 to (\d+)\) separated by '::'", prompt)
        if k:
            return f"{self.pick}::{k.group(1)}"
        return f" [<{candidates_of(prompt)[self.pick - 1]}>]\n###\n"


BACKEND = Backend(
    supports={"text"},
    build=lambda cfg, texts, job: Scratch(cfg),
    options=(Option("scratch_pick", 1, "which candidate it answers", int),
             Option("scratch_tag", "s", "the word its free text carries")),
    notes={"model": "ignored"})


@pytest.fixture
def scratch(monkeypatch):
    monkeypatch.setitem(BACKENDS, "scratch", __name__)  # the one registry line
    Scratch.prompts = []


def help_of(parse_args, capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        parse_args([*argv, "--help"])
    return capsys.readouterr().out


def one_line_error(capsys, rc) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ----------------------------------------------------------------------------- refine_llm.py

def refine(root, *extra) -> int:
    return rl.main(["--dataset", "ML-100K", "--data_dir", str(root), "--overwrite", *extra])


def test_refine_llm_asks_a_registered_backend(tmp_path, scratch, capsys):
    write_toy(tmp_path)
    assert "hf/openai/embedding/scratch" in help_of(rl.parse_args, capsys, "--dataset", "x")
    with LoopbackServer() as server:  # answers the first candidate, as scratch does
        assert refine(tmp_path, "--backend", "openai", "--model", "m", "--base_url", server.url,
                      "--output", str(tmp_path / "openai.csv")) == 0
    assert refine(tmp_path, "--backend", "scratch", "--output", str(tmp_path / "first.csv")) == 0
    assert (tmp_path / "first.csv").read_bytes() == (tmp_path / "openai.csv").read_bytes()

    Scratch.prompts = []
    assert refine(tmp_path, "--backend", "scratch", "--scratch_pick", "2",
                  "--output", str(tmp_path / "second.csv")) == 0
    manifest = json.loads((tmp_path / "second.manifest.json").read_text())
    assert manifest["backend"] == "scratch"
    assert manifest["model"] == "scratch:|:chat=False:max_new=128:scratch_pick=2:scratch_tag=s"
    assert manifest["config"]["backend_options"] == {"scratch_pick": 2, "scratch_tag": "s"}
    picked = {}  # user -> the titles scratch answered: each chunk's second candidate
    for line in (tmp_path / "second.csv.cache.jsonl").read_text().splitlines():
        record = json.loads(line)
        picked.setdefault(record["user"], set()).update(re.findall(r"<([^<>]*)>", record["raw"]))
    assert sum(map(len, picked.values())) == 4  # one per chunk
    second = {candidates_of(p)[1] for p in Scratch.prompts}
    assert set().union(*picked.values()) == second
    out = pd.read_csv(tmp_path / "second.csv", dtype={USER_COL: str, ITEM_COL: str})
    expected = [4.5 if r in (2, 3) and TOY_ITEMS[i][0] in picked[u] else 0.5 if r in (2, 3)
                else float(r) for u, i, r in TOY_ROWS]
    assert out[RATING_COL].tolist() == expected
    assert (tmp_path / "second.csv").read_bytes() != (tmp_path / "first.csv").read_bytes()


def test_what_a_registered_backend_cannot_do_is_one_line(tmp_path, scratch, capsys):
    write_toy(tmp_path)
    rc = refine(tmp_path, "--backend", "scratch", "--chat")
    assert "--backend scratch has no chat template" in one_line_error(capsys, rc)
    rc = refine(tmp_path, "--backend", "scratch", "--procedure", "reference")
    assert "--backend hf or openai, without --chat" in one_line_error(capsys, rc)
    cfg = rl.RefineConfig(dataset="ML-100K", data_dir=str(tmp_path), backend="scratch")
    with pytest.raises(DataError, match="scratch has no full_completion"):
        make_backend(cfg, {}, "full_completion")
    assert cfg.scratch_pick == 1 and cfg.model_id().endswith(":scratch_pick=1:scratch_tag=s")
    line = one_line_error(capsys, hnlm.main(["items", "--dataset", "Synth", "--backend",
                                             "embedding"]))
    assert "--backend embedding is not an LLM" in line
    assert line.endswith("choose one of hf, openai, scratch")


def test_an_unregistered_backend_is_unknown(tmp_path, capsys):
    write_toy(tmp_path)
    rc = refine(tmp_path, "--backend", "scratch")
    assert "unknown backend 'scratch'; choose one of hf, openai, embedding" in \
        one_line_error(capsys, rc)
    with pytest.raises(SystemExit):  # nor has anyone its flags
        rl.parse_args(["--dataset", "ML-100K", "--scratch_pick", "2"])


# ----------------------------------------------------------------------------- llm.augment

def test_augment_asks_a_registered_backend(tmp_path, scratch, capsys):
    data = write_synthetic_with_items(tmp_path / "data")
    assert run_main(["--model", "lightgcn", "--dataset", "Synth", "--data_dir", str(data),
                     "--epochs", "1", "--batch_size", "64"], tmp_path, "base")[0] == 0
    base = ["--dataset", "Synth", "--base_run", str(tmp_path / "result" / "Synth" / "base"),
            "--data_dir", str(data)]
    assert "hf/openai/embedding/rank/scratch" in help_of(augment.parse_args, capsys, *base)
    out = tmp_path / "aug.csv"
    assert augment.main([*base, "--backend", "scratch", "--scratch_pick", "3",
                         "--limit_users", "5", "--output", str(out)]) == 0
    tasks = augment.load_base(augment.parse_args([*base, "--limit_users", "5"])).tasks
    rows = pd.read_csv(out, dtype=str).values.tolist()
    assert rows == [[t.user, t.candidates[2], t.candidates[-1]] for t in tasks]
    manifest = json.loads((tmp_path / "aug.manifest.json").read_text())
    assert manifest["is_llm"] is True
    assert manifest["model"] == "scratch:|:chat=False:scratch_pick=3:scratch_tag=s"


# ----------------------------------------------------------------------------- llm.hnlm

def test_hnlm_asks_a_registered_backend(tmp_path, scratch, capsys):
    data = write_synthetic_with_items(tmp_path / "data")
    out = tmp_path / "hnlm"
    assert "hf/openai/scratch" in help_of(hnlm.parse_args, capsys, "items", "--dataset", "x")

    def step(name, tag):
        assert hnlm.main([name, "--dataset", "Synth", "--data_dir", str(data), "--out_dir",
                          str(out), "--backend", "scratch", "--scratch_tag", tag,
                          "--limit", "3"]) == 0
        manifest = json.loads((out / f"{name}.manifest.json").read_text())
        records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        return manifest, records
    for name in ("items", "users"):
        manifest, records = step(name, "zz")
        assert [r["summarization"] for r in records] == ["zz profile"] * 3
    assert manifest["backend"] == "scratch"
    assert manifest["model"] == "scratch:|:chat=False:scratch_pick=1:scratch_tag=zz"
    manifest, records = step("negatives", "zz")
    assert [r["hard_negative"] for r in records] == ["zz negative"] * 3
    manifest, records = step("items", "yy")  # its option is part of the cache key
    assert manifest["counts"]["asked_now"] == 3
    assert [r["summarization"] for r in records] == ["yy profile"] * 3


# ----------------------------------------------------------------------------- built-in backends

def test_builtin_backends_keep_their_flags_defaults_and_model_ids(capsys):
    common = {"backend", "model", "gguf_file", "device", "dtype", "batch_size", "chat",
              "base_url", "api_key_env", "timeout", "max_retries", "concurrency",
              "max_new_tokens", "threads", "embed_model"}
    drivers = {rl.parse_args: (["--dataset", "x"], common | {"embed_top_k", "embed_margin"}),
               augment.parse_args: (["--dataset", "x"], common),
               hnlm.parse_args: (["items", "--dataset", "x"], common)}
    relabel_only = {"embed_top_k", "embed_margin"}
    for parse, (argv, backend_flags) in drivers.items():
        flags = set(re.findall(r"\[--(\w+)", help_of(parse, capsys, *argv)))
        assert backend_flags <= flags, (parse.__module__, backend_flags - flags)
        assert flags & relabel_only == backend_flags & relabel_only, parse.__module__
    fields = {**BackendSettings.__dataclass_fields__, **rl.RefineConfig.__dataclass_fields__}
    for name in ("hf", "openai", "embedding", "rank"):
        for opt in declaration(name).options:
            assert opt.default == fields[opt.name].default, (name, opt.name)
    assert rl.parse_args(["--dataset", "ML-100K", "--backend", "embedding", "--embed_top_k",
                          "4"]).model_id() == "embedding:all-MiniLM-L6-v2:top4:margin0"
    assert rl.parse_args(["--dataset", "ML-100K", "--model", "m"]).model_id() == \
        "hf:m|:chat=False:max_new=128"
    pick = augment.parse_args(["--dataset", "Synth", "--base_run", "x", "--backend", "rank"])
    assert pick.model_id() == "rank-picker: the base model's first and last candidate (not an LLM)"
    assert "backend_options" not in config_record(pick)


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="unknown capability"):
        Backend(supports={"txt"}, build=lambda *a: None)
    with pytest.raises(ValueError, match="unknown capability or common flag"):
        Backend(supports={"text"}, build=lambda *a: None, notes={"modle": "x"})
    with pytest.raises(ValueError, match="a common flag; describe it in notes"):
        Backend(supports={"text"}, build=lambda *a: None, options=(Option("device", "cpu", "x"),))
