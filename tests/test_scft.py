"""llm/scft.py, HNLMRec's SCFT on a tiny random Llama (no download): the loss by hand, loss
falls on a fixed batch, only LoRA trains, EOS pooling, determinism, and records from a real
short MixGCF run through to the vector file."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from conftest import run_main, write_synthetic_with_items
from data.vectors import read_pair_vectors

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("peft", "transformers", "tokenizers")),
    reason="peft / transformers not installed (pip install -r requirements-llm.txt)")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer random Llama (hidden 64, 4 heads) and a byte-level BPE tokenizer on disk."""
    from conftest import build_tiny_llama
    folder = tmp_path_factory.mktemp("scft_llama")
    corpus = ["User embedding: [0.123, -0.456] profile None Item embedding [1.000]"] * 50
    build_tiny_llama(folder, corpus, hidden_size=64, vocab_size=300)
    return folder


def records(n=32, seed=0):
    from llm.scft import Record, query_text, vector_text
    rng = np.random.default_rng(seed)
    return [Record(str(k), str(k % 7), query_text(rng.normal(size=4), "None",
                                                  rng.normal(size=4), "None"),
                   vector_text(rng.normal(size=4)), vector_text(rng.normal(size=4)))
            for k in range(n)]


def config(model, **kw):
    from llm.scft import SCFTConfig
    return SCFTConfig(**{"dataset": "Synth", "model": str(model), "lora_r": 4,
                         "batch_size": 4, "epochs": 2, "learning_rate": 5e-3, **kw})


def test_losses_by_hand():
    from llm.scft import scft_loss
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    n = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    # s+ = (1, 0)/tau; s- = [[0, c], [1, c]]/tau
    tau = 0.5
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(2 * c)))
    row1 = -math.log(1 / (1 + math.exp(2) + math.exp(2 * c)))
    assert float(scft_loss(q, p, n, tau)) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    soft = lambda x: math.log1p(math.exp(x))  # noqa: E731
    pairs = [soft(0 - 2), soft(2 * c - 2), soft(2 - 0), soft(2 * c - 0)]
    assert float(scft_loss(q, p, n, tau, "pairwise_logistic")) == pytest.approx(
        sum(pairs) / 4, rel=1e-6)


def test_eos_pooling_and_only_lora_trains(tiny_llama):
    from llm.scft import Encoder
    enc = Encoder(config(tiny_llama))
    names = [n for n, _ in enc.trainable()]
    assert names and all("lora_" in n for n in names)
    assert {m for n in names for m in ("q_proj", "k_proj", "v_proj", "o_proj") if m in n} == \
        {"q_proj", "k_proj", "v_proj", "o_proj"}
    batch = enc.batch(["short", "a much longer passage of text"], as_query=False)
    last = batch["attention_mask"].sum(1) - 1
    assert batch["input_ids"][torch.arange(2), last].tolist() == [1, 1]  # EOS appended
    query = enc.batch(["q"], as_query=True)["input_ids"][0].tolist()
    text = enc.tokenizer.decode(query)
    assert text.startswith("<system>You are a helpful assistant.") and "<assistant>" in text
    passage = enc.tokenizer.decode(enc.batch(["q"], as_query=False)["input_ids"][0].tolist())
    assert "<system>" not in passage and "<assistant>" not in passage  # passages: raw text
    short = Encoder(config(tiny_llama, max_len_passage=6))
    cut = short.batch(["a much longer passage of text than six tokens"], as_query=False)
    assert cut["input_ids"].shape[1] == 6 and cut["input_ids"][0, -1] == 1  # EOS kept
    assert short.truncated(["a much longer passage of text", "ab"], as_query=False) == 1
    with torch.no_grad():
        out = enc.embed(["short", "a much longer passage of text"], as_query=False)
        alone = enc.embed(["short"], as_query=False)
    assert out.shape == (2, 64)
    torch.testing.assert_close(out[:1], alone, rtol=1e-5, atol=1e-5)  # padding is ignored


def test_training_lowers_the_loss_and_is_deterministic(tiny_llama):
    from llm.scft import Encoder, batch_loss, infer, train
    recs = records()
    runs = []
    for _ in range(2):
        cfg = config(tiny_llama)
        enc = Encoder(cfg)
        fixed = recs[:4]
        with torch.no_grad():
            enc.model.eval()
            before = float(batch_loss(enc, fixed, cfg))
        frozen = {n: p.detach().clone() for n, p in enc.model.named_parameters()
                  if not p.requires_grad}
        losses = train(enc, recs, cfg, log=lambda _: None)
        with torch.no_grad():
            enc.model.eval()
            after = float(batch_loss(enc, fixed, cfg))
        assert all(math.isfinite(x) for x in losses) and len(losses) == 16
        assert after < before
        assert all(torch.equal(p, frozen[n]) for n, p in enc.model.named_parameters()
                   if not p.requires_grad)
        runs.append(infer(enc, recs))
    assert runs[0].shape == (32, 64)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_gradients_are_clipped_to_max_grad_norm(tiny_llama):
    """The last step's gradients stay in .grad: clipped to the norm, or larger when off."""
    from llm.scft import Encoder, train
    norms = {}
    for clip in (1e-4, 0.0):
        cfg = config(tiny_llama, max_grad_norm=clip)
        enc = Encoder(cfg)
        train(enc, records()[:8], cfg, log=lambda _: None)
        grads = [p.grad for _, p in enc.trainable()]
        norms[clip] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    assert norms[1e-4] <= 1e-4 * (1 + 1e-4) < norms[0.0]


def test_records_from_a_mixgcf_run_to_the_vector_file(tmp_path, tiny_llama):
    from llm import scft
    data = write_synthetic_with_items(tmp_path / "data")
    assert run_main(["--model", "mixgcf", "--dataset", "Synth", "--data_dir", str(data),
                     "--epochs", "1", "--batch_size", "64"], tmp_path, "mix")[0] == 0
    run_dir = tmp_path / "result" / "Synth" / "mix"
    cfg = config(tiny_llama, mixgcf_run=str(run_dir), data_dir=str(data), max_records=12,
                 epochs=1, output=str(tmp_path / "scft.npz"))
    recs = scft.mixgcf_records(cfg, chunk=5)  # chunks: the synthesis in parts
    assert len(recs.train) == 12 and recs.about["pool"] == "mean"
    assert len(recs.queries) == 240  # every positive training pair
    first = recs.train[0]
    assert first.query.count("[") == 2 and first.pos.startswith("[")
    assert len(first.pos.split(",")) == 64  # MixGCF's pooled 64-d negative
    assert (first.user, first.item, first.query) in recs.queries
    again = scft.mixgcf_records(cfg)  # seeded, and chunking changes nothing
    assert again.train == recs.train
    manifest = scft.run(cfg, log=lambda _: None)
    users, items, vectors, info = read_pair_vectors(tmp_path / "scft.npz")
    assert vectors.shape == (240, 64) and info["step"] == "scft"  # a vector for every pair
    assert [(u, i) for u, i, _ in recs.queries] == list(zip(users, items))
    assert manifest["steps"] == 3 and info["training_records"] == 12
    with pytest.raises(Exception, match="not mixgcf"):
        base = tmp_path / "result" / "Synth" / "light"
        run_main(["--model", "lightgcn", "--dataset", "Synth", "--data_dir", str(data),
                  "--epochs", "1"], tmp_path, "light")
        scft.mixgcf_records(config(tiny_llama, mixgcf_run=str(base), data_dir=str(data)))
