"""Shared test helpers: where the real data is, and tiny synthetic split folders.

Tests that read real files find them where main.py does, or through environment variables
(.ci/run sets them): the published split folders (<dir>/<DATASET>/...) in ``$REFINE_DATA_DIR``,
else in the repository's ``dataset/`` (the default of data/splits.py resolve_data_dir, where
``python main.py`` downloads them); the raw RecBole files in ``$REFINE_RAW_DIR``, else in
``raw/`` inside that folder (where ``dataloader.py download --raw`` puts them) or beside it;
the reference training logs in ``$REFINE_REFERENCE_DIR``, else ``reference/`` beside it.
Where a file is missing, the tests that need it skip. The exactness tests (oracles, resume,
compiled, distributed) run on synthetic rows (``varied_rows``) everywhere, and again on
ML-100K where it is present (``STEP_SOURCES``).
"""
from __future__ import annotations

import functools
import http.server
import os
import random
import threading
from pathlib import Path

import pytest

from data.splits import DATA_DIR_ENV, resolve_data_dir

REPO = Path(__file__).resolve().parents[1]
# main.py's data folder: $REFINE_DATA_DIR, else "dataset" (relative to the working folder),
# which the tests take as the repository's dataset/, wherever pytest is started from
_DATA_DIR = resolve_data_dir()
SHARED_DATASETS = _DATA_DIR if os.environ.get(DATA_DIR_ENV) else REPO / _DATA_DIR
SHARED = SHARED_DATASETS.parent
# raw files: raw/ inside the data folder (dataloader.py download --raw) or beside it (.ci/run)
_RAW_PLACES = [p for p in (SHARED_DATASETS / "raw", SHARED / "raw") if p.is_dir()]
SHARED_RAW = Path(os.environ.get("REFINE_RAW_DIR") or (_RAW_PLACES or [SHARED / "raw"])[0])
SHARED_REFERENCE = Path(os.environ.get("REFINE_REFERENCE_DIR") or SHARED / "reference")


def shared_dataset(name: str):
    """skipif marker for tests that read <name> in $REFINE_DATA_DIR (else dataset/)."""
    return pytest.mark.skipif(
        not (SHARED_DATASETS / name).is_dir(),
        reason=f"{name} is not in the data folder ($REFINE_DATA_DIR, else dataset/)")


needs_reference_logs = pytest.mark.skipif(
    not (SHARED_REFERENCE / "refine_plus").is_dir(),
    reason="$REFINE_REFERENCE_DIR (the reference training logs) is not present")


def write_split_folder(root: Path, name: str, train_rows, valid_rows, test_rows,
                       augment: str = "augment") -> Path:
    """Write <root>/<name>/<name>_{train_<augment>,validation,test}.csv from (u, i, r) rows."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token,item_id:token,rating:float\n"
    for split, rows in ((f"train_{augment}", train_rows), ("validation", valid_rows),
                        ("test", test_rows)):
        lines = "".join(f"{u},{i},{r}\n" for u, i, r in rows)
        (folder / f"{name}_{split}.csv").write_text(header + lines)
    return root


def interrupt_second_epoch(monkeypatch) -> None:
    """Make the next training run stop with Ctrl-C in the middle of its epoch 2 (after
    epoch 1's last.pt); undo with ``monkeypatch.undo()`` before resuming."""
    from dataclasses import replace

    from recommenders import MODELS
    spec = MODELS["refine_plus"]
    calls = []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return spec.train_epoch(*a, **kw)

    monkeypatch.setitem(MODELS, "refine_plus", replace(spec, train_epoch=interrupted))


def poison_batch_loss(monkeypatch, at_call: int) -> None:
    """Make ReFINe++'s ``at_call``-th batch loss (counting from 1) NaN."""
    from recommenders import refine_plus
    real_batch_loss, calls = refine_plus.batch_loss, []

    def poisoned(*a, **kw):
        loss, value, num_pos = real_batch_loss(*a, **kw)
        calls.append(1)
        if len(calls) == at_call:
            loss, value = loss * float("nan"), value * float("nan")
        return loss, value, num_pos

    monkeypatch.setattr(refine_plus, "batch_loss", poisoned)


def run_main(args, tmp_path, name="run"):
    import main as M
    argv = [*args, "--result_dir", str(tmp_path / "result"), "--path_name", name, "--quiet",
            "--no_download", *([] if "--threads" in args else ["--threads", "1"])]
    return M.main(argv), tmp_path / "result"


def synthetic_rows(num_users=30, num_items=40, seed=0):
    """Random ratings: every user has >= 8 positives and a few negatives/neutral rows."""
    rng = random.Random(seed)
    train, valid, test = [], [], []
    for u in range(num_users):
        items = rng.sample(range(num_items), 16)
        for i in items[:8]:
            train.append((u, i, rng.choice([4, 4.5, 5])))
        for i in items[8:11]:
            train.append((u, i, rng.choice([0.5, 1])))
        for i in items[11:13]:
            train.append((u, i, 3))
        valid.append((u, items[13], 5))
        test += [(u, items[14], 4), (u, items[15], 5)]
    return train, valid, test


def varied_rows(seed=0):
    """``synthetic_rows`` (60 users, 80 items: n = 8 negatives per positive) varied so that a
    training step meets every kind of row: users 1, 5, 9, ... have no confirmed negative,
    neutral 2s beside the 3s, user 60 has confirmed negatives only (no positive, no
    evaluation row) and item 80 is rated by confirmed negatives only."""
    train, valid, test = synthetic_rows(num_users=60, num_items=80, seed=seed)
    train = [(u, i, 2 if r == 3 and (u + i) % 2 else r) for u, i, r in train
             if not (u % 4 == 1 and r <= 1)]
    train += [(60, i, 1) for i in range(0, 80, 7)] + [(u, 80, 0.5) for u in range(0, 60, 7)]
    return train, valid, test


# the data of the exactness tests: synthetic always, ML-100K where it is present
STEP_SOURCES = [pytest.param("synthetic", id="synthetic"),
                pytest.param("ML-100K", id="ML-100K", marks=shared_dataset("ML-100K"))]


def step_source(source: str, tmp_path_factory) -> tuple[Path, str]:
    """(data folder, dataset) of a STEP_SOURCES entry: ``varied_rows`` written to a new
    folder as the dataset "Synth", or the published ML-100K."""
    if source == "ML-100K":
        return SHARED_DATASETS, "ML-100K"
    return write_split_folder(tmp_path_factory.mktemp("synthetic"), "Synth", *varied_rows()), \
        "Synth"


def step_rows(num_train_rows: int) -> int:
    """Rows of T in one checked step: 1024 (ML-100K), at most half of T (synthetic), so
    that the AE inputs --ae_input batch and user_negatives differ."""
    return min(1024, num_train_rows // 2)


@pytest.fixture(scope="module", params=STEP_SOURCES)
def step_graphs(request, tmp_path_factory):
    """The float32 training graphs (recommenders/base.py) of each STEP_SOURCES entry."""
    import dataloader
    from recommenders import base
    data_dir, dataset = step_source(request.param, tmp_path_factory)
    return base.build_graphs(dataloader.load_dataset(data_dir, dataset, "augment"), "cpu")


def write_synthetic_with_items(data: Path, name: str = "Synth") -> Path:
    """``synthetic_rows`` as a split folder plus a RecBole .item file: item i is titled
    "Item i" with the genre "Genre<i % 3>"."""
    write_split_folder(data, name, *synthetic_rows())
    (data / name / f"{name}.item").write_text(
        "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
        + "".join(f"{i}\tItem {i}\tGenre{i % 3}\n" for i in range(40)))
    return data


def fails_with(capsys, rc, *fragments):
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def build_tiny_llama(folder: Path, corpus: list[str], hidden_size: int, vocab_size: int = 400):
    """A 2-layer random LlamaForCausalLM (4 heads) and a byte-level BPE tokenizer trained on
    ``corpus`` (with <s>, </s>, <pad> and a small chat template), saved to ``folder``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "</s>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=2048, bos_token_id=0, eos_token_id=1,
        pad_token_id=2)).save_pretrained(folder)
    return folder


@pytest.fixture
def serve():
    """Start a quiet HTTP server on 127.0.0.1 for a folder; returns its base URL."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def start(directory: Path) -> str:
        handler = functools.partial(Quiet, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
