"""The baselines' own protocol (data/protocols.py, ``prepare --protocol``) and the fixed-epoch
mode of a folder without validation: hand-built ratings and test files, a download from a
loopback server, the catalogue and ground truth, exact resume; ML-1M split 1 when the real
files are there."""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import dataloader
import main as M
from conftest import SHARED_RAW, SHARED_REFERENCE, fails_with, run_main
from data import protocols, registry
from data.provenance import git_blob_sha1
from data.schema import DataError
from recommenders import MODELS, make_config

RATINGS_HEADER = "user_id:token\titem_id:token\trating:float\n"


def toy_ratings(seed=0):
    """(ratings, test): 12 users x 10 of 25 items; user 12's train rows are all neutral;
    item 99 is rated only in the test file."""
    rng = random.Random(seed)
    ratings = []
    for u in range(1, 13):
        for i in rng.sample(range(1, 26), 10):
            ratings.append((u, i, rng.choice([1, 2, 3, 4, 5, 5, 4]) if u < 12 else 3))
    ratings.append((1, 99, 5))
    test = [r for k, r in enumerate(ratings[:-1]) if k % 5 == 0 and r[0] < 12] + [(1, 99, 5)]
    test.append((12, ratings[-3][1], 3))
    return ratings, test


def write_toy(root: Path, seed=0):
    ratings, test = toy_ratings(seed)
    raw = root / "raw" / "toy"
    raw.mkdir(parents=True)
    (raw / "toy.inter").write_text(RATINGS_HEADER + "".join(f"{u}\t{i}\t{r}\n"
                                                            for u, i, r in ratings))
    test_file = root / "test_toy1.dat"
    test_file.write_text("".join(f"{u},{i},{r}\n" for u, i, r in test))
    return ratings, test, raw, test_file


@pytest.fixture
def toy_protocol(monkeypatch, tmp_path):
    """A protocol 'toy_random_split' (folders Toy_split1...) whose split 1 is a hand-made
    test file; its git blob is registered as the published one."""
    ratings, test, raw, test_file = write_toy(tmp_path)
    protocol = replace(registry.PROTOCOLS["ml1m_random_split"], name="toy_random_split",
                       base="Toy", raw_stem="toy", test_path="splits/test_toy{k}.dat",
                       test_blobs={1: git_blob_sha1(test_file)}, epochs=3, evaluation_step=2)
    monkeypatch.setitem(registry.PROTOCOLS, "toy_random_split", protocol)
    return ratings, test, raw, test_file


def prepare(tmp_path, raw, test_file, **kw):
    return protocols.prepare_random_split("toy_random_split", 1, raw, tmp_path / "data",
                                          test_file=test_file, log=lambda line: None, **kw)


def rows_of(path: Path):
    lines = path.read_text().splitlines()
    assert lines[0] == "user_id:token,item_id:token,rating:float"
    return [tuple(float(x) for x in line.split(",")) for line in lines[1:]]


def test_prepare_writes_ratings_minus_test(tmp_path, toy_protocol):
    ratings, test, raw, test_file = toy_protocol
    train_path, test_path = prepare(tmp_path, raw, test_file)
    pairs = {(u, i) for u, i, _ in test}
    assert rows_of(train_path) == [(u, i, r) for u, i, r in ratings if (u, i) not in pairs]
    assert rows_of(test_path) == [(u, i, r) for u, i, r in test]
    spec = json.loads((tmp_path / "data" / "Toy_split1" / "protocol.json").read_text())
    assert spec["counts"] == {"train_rows": len(ratings) - len(test), "test_rows": len(test)}
    assert spec["files"]["test"] == git_blob_sha1(test_path)
    assert spec["validation"] is False and spec["epochs"] == 3


def test_prepare_refuses_other_test_bytes_and_foreign_rows(tmp_path, toy_protocol):
    ratings, test, raw, test_file = toy_protocol
    other = tmp_path / "other.dat"
    other.write_text(test_file.read_text() + "1,1,5\n")
    with pytest.raises(DataError, match="is not the published test split 1"):
        prepare(tmp_path, raw, other)
    with pytest.raises(DataError, match="--split 2"):
        protocols.prepare_random_split("toy_random_split", 2, raw, tmp_path, test_file=other)
    # a ratings file that lacks a test row: not the full dataset
    (raw / "toy.inter").write_text(RATINGS_HEADER + "".join(
        f"{u}\t{i}\t{r}\n" for u, i, r in ratings if (u, i) != test[0][:2]))
    with pytest.raises(DataError, match="1 test row"):
        prepare(tmp_path, raw, test_file)


def test_prepare_downloads_and_verifies_the_test_file(tmp_path, toy_protocol, serve):
    _, _, raw, test_file = toy_protocol
    site = tmp_path / "site" / "splits"
    site.mkdir(parents=True)
    (site / test_file.name).write_bytes(test_file.read_bytes())
    base = serve(tmp_path / "site")
    prepare(tmp_path, raw, None, base_url=base)
    assert (raw / test_file.name).read_bytes() == test_file.read_bytes()
    # other bytes on the server: rejected, nothing kept
    (raw / test_file.name).unlink()
    (site / test_file.name).write_text("1,2,3\n")
    with pytest.raises(DataError, match="rejected: git blob SHA-1"):
        prepare(tmp_path, raw, None, base_url=base, overwrite=True)
    assert not (raw / test_file.name).exists()
    with pytest.raises(DataError, match="allow downloading"):
        prepare(tmp_path, raw, None, download=False, overwrite=True)


def test_edges_replace_a_train_rating_or_are_appended(tmp_path, toy_protocol):
    ratings, test, raw, test_file = toy_protocol
    pairs = {(u, i) for u, i, _ in test}
    train_pair = next((u, i) for u, i, r in ratings if (u, i) not in pairs and r < 4)
    test_pair = next((u, i) for u, i, r in test if r >= 4 and (u, i) != (1, 99))
    edges = tmp_path / "edges.csv"
    edges.write_text(f"userId,movieId,rating\n{train_pair[0]},{train_pair[1]},5\n"
                     f"3,99,5\n{test_pair[0]},{test_pair[1]},5\n")
    train_path, _ = prepare(tmp_path, raw, test_file, augment_edges=edges)
    assert train_path.parent.name == "Toy_split1_llm"
    rows = rows_of(train_path)
    base = [(u, i, 5.0 if (u, i) == train_pair else r) for u, i, r in ratings
            if (u, i) not in pairs]
    assert rows == base + [(3, 99, 5.0), (*test_pair, 5.0)]
    spec = json.loads((train_path.parent / "protocol.json").read_text())
    assert spec["counts"]["edges_replacing_a_train_rating"] == 1
    assert spec["counts"]["edges_on_test_pairs"] == 1 == spec["allowed_test_overlap"]
    assert spec["counts"]["edges_on_test_positives"] == 1
    assert spec["sources"]["augment_edges"]["authors_file"] is False
    # the loader accepts exactly the recorded overlap, and says so
    said = []
    dataloader.load_dataset(tmp_path / "data", "Toy_split1_llm", "original", warn=said.append)
    assert any("1 test pair(s) are also train rows" in line for line in said)
    # a pickle that is not the authors' file is never unpickled
    fake = tmp_path / "augmented_edges.pt"
    fake.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="refusing to unpickle"):
        prepare(tmp_path, raw, test_file, augment_edges=fake, overwrite=True)


def test_loader_catalogue_ground_truth_and_stale_files(tmp_path, toy_protocol):
    ratings, test, raw, test_file = toy_protocol
    train_path, test_path = prepare(tmp_path, raw, test_file)
    data = dataloader.load_dataset(tmp_path / "data", "Toy_split1", "original",
                                   warn=lambda line: None)
    # every user and item of train and test: user 12 (neutral rows only), item 99 (test only)
    assert data.user_ids.tolist() == [str(u) for u in range(1, 13)]  # numeric order
    assert "99" in data.item_ids.tolist()
    assert not data.has_validation and len(data.validation) == 0
    truth = {(int(data.user_ids[u]), int(data.item_ids[i]))
             for u, i in zip(data.test.users.tolist(), data.test.items.tolist())}
    assert truth == {(u, i) for u, i, r in test if r >= 4}  # > 3.5, test-only items too
    with pytest.raises(DataError, match="has train_original only"):
        dataloader.load_dataset(tmp_path / "data", "Toy_split1", "augment")
    with open(train_path, "a") as f:
        f.write("1,1,5.0\n")
    with pytest.raises(DataError, match="changed after preparing"):
        dataloader.load_dataset(tmp_path / "data", "Toy_split1", "original")


def test_protocol_defaults_come_from_protocol_json(tmp_path, toy_protocol):
    _, _, raw, test_file = toy_protocol
    prepare(tmp_path, raw, test_file, name="any_name")
    data_dir = str(tmp_path / "data")
    config = make_config(model="pngnn", dataset="any_name", data_dir=data_dir)
    assert (config.epochs, config.evaluation_step) == (3, 2)  # the toy protocol's
    assert make_config(model="pngnn", dataset="any_name", data_dir=data_dir,
                       epochs=1).evaluation_step == 1  # tested at its last epoch anyway
    # a folder without protocol.json keeps the general defaults, whatever its name
    assert make_config(model="pngnn", dataset="ML-1M_split9", data_dir=data_dir).epochs == 1000


def test_edges_without_a_train_pair_duplicates_and_unknown_ids(tmp_path, toy_protocol):
    ratings, test, raw, test_file = toy_protocol
    edges = tmp_path / "edges.csv"
    # (3, 99) is new; it comes twice; user 500 and movie 1000 have no rating at all
    edges.write_text("userId,movieId,rating\n3,99,5\n3,99,4\n500,1,5\n2,1000,5\n")
    said = []
    protocols.prepare_random_split("toy_random_split", 1, raw, tmp_path / "data",
                                   test_file=test_file, augment_edges=edges, log=said.append)
    assert any("1 duplicate (user, movie) edge(s)" in line for line in said)
    spec = protocols.read_protocol(tmp_path / "data", "Toy_split1_llm")
    assert spec["counts"]["edges"] == 1 and spec["counts"]["edges_dropped_unknown_ids"] == 2
    rows = rows_of(tmp_path / "data" / "Toy_split1_llm" / "Toy_split1_llm_train_original.csv")
    assert rows[-1] == (3, 99, 5.0) and len(rows) == spec["counts"]["train_rows"] + 1
    edges.write_text("userId,movieId,rating\n3,seventy,5\n")
    with pytest.raises(DataError, match="non-integer cells"):
        prepare(tmp_path, raw, test_file, augment_edges=edges, overwrite=True)


def test_a_protocol_file_without_its_file_records_is_refused(tmp_path, toy_protocol):
    _, _, raw, test_file = toy_protocol
    prepare(tmp_path, raw, test_file)
    path = tmp_path / "data" / "Toy_split1" / "protocol.json"
    spec = json.loads(path.read_text())
    path.write_text(json.dumps({**spec, "files": {}}))
    with pytest.raises(DataError, match="must record train_original and test"):
        dataloader.load_dataset(tmp_path / "data", "Toy_split1", "original")


def test_half_star_ratings_are_refused(tmp_path, toy_protocol):
    ratings, _, raw, test_file = toy_protocol
    (raw / "toy.inter").write_text(RATINGS_HEADER + "".join(
        f"{u}\t{i}\t{r - 0.5 if k == 3 else r}\n" for k, (u, i, r) in enumerate(ratings)))
    with pytest.raises(DataError, match="whole numbers"):
        prepare(tmp_path, raw, test_file)


def _interrupt_second_epoch(monkeypatch, model):
    spec, calls = MODELS[model], []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return spec.train_epoch(*a, **kw)

    monkeypatch.setitem(MODELS, model, replace(spec, train_epoch=interrupted))


@pytest.mark.parametrize("model", ["pngnn", "siren"])
def test_fixed_epochs_log_test_and_resume_exactly(tmp_path, toy_protocol, monkeypatch, capsys,
                                                  model):
    _, _, raw, test_file = toy_protocol
    prepare(tmp_path, raw, test_file)
    args = ["--model", model, "--dataset", "Toy_split1", "--dataset_augment", "original",
            "--data_dir", str(tmp_path / "data"), "--embedding_dim", "8", "--layers", "2",
            "--num_negatives", "3", "--batch_size", "16"]
    rc, result = run_main(args, tmp_path, "straight")
    assert rc == 0
    straight = result / "Toy_split1" / "straight"
    metrics = json.loads((straight / "metrics.json").read_text())
    # the protocol's 3 epochs, the test every 2 epochs and at the last; nothing selected
    assert metrics["last_epoch"] == 3 and list(metrics["test_by_epoch"]) == ["2", "3"]
    assert metrics["test"] == metrics["test_by_epoch"]["3"]
    assert metrics["best_validation"] == {} and not (straight / "best.pt").exists()
    log = (straight / "train.log").read_text()
    assert "protocol: toy_random_split split 1" in log and "Best Validation" not in log
    assert "inputs: a protocol folder made by" in log
    _interrupt_second_epoch(monkeypatch, model)
    assert run_main(args, tmp_path, "split")[0] == 130
    monkeypatch.undo()
    split = result / "Toy_split1" / "split"
    assert M.main(["--resume", str(split), "--quiet", "--threads", "1"]) == 0
    rows = lambda run: [(r["epoch"], r["loss"], r.get("test"))  # noqa: E731
                        for r in map(json.loads, (run / "epochs.jsonl").open())]
    assert rows(split) == rows(straight)
    assert json.loads((split / "metrics.json").read_text())["test"] == metrics["test"]
    # --compare_to compares best-validation runs: refused in one line
    capsys.readouterr()
    rc, _ = run_main([*args, "--compare_to", str(straight)], tmp_path, "cmp")
    fails_with(capsys, rc, "no validation split")


@pytest.mark.skipif(not (SHARED_RAW / "ml-1m" / "ml-1m.inter").is_file()
                    or not (SHARED_REFERENCE / "ml-1m_random_splits" / "test1.dat").is_file(),
                    reason="needs ml-1m.inter ($REFINE_RAW_DIR) and test1.dat "
                           "($REFINE_REFERENCE_DIR)")
def test_ml1m_split1_from_the_real_files(tmp_path):
    test_file = SHARED_REFERENCE / "ml-1m_random_splits" / "test1.dat"
    protocols.prepare_random_split("ml1m_random_split", 1, SHARED_RAW / "ml-1m", tmp_path,
                                   test_file=test_file, log=lambda line: None)
    spec = protocols.read_protocol(tmp_path, "ML-1M_split1")
    assert spec["counts"] == {"train_rows": 800_167, "test_rows": 200_042}  # 1,000,209 in all
    data = dataloader.load_dataset(tmp_path, "ML-1M_split1", "original", warn=lambda l: None)
    assert (data.num_users, data.num_items) == (6040, 3706)  # every rated movie
    assert len(data.test) == 115_319  # test rows rated > 3.5
    assert torch.unique(data.test.users).numel() == 5983  # users with ground truth
    # 4/5 positive, 1 confirmed negative, 2/3 neutral: all 800,167 train rows kept
    assert int(data.train_is_pos.sum()) == 459_962
    assert len(data.train) + len(data.neutral) == 800_167
