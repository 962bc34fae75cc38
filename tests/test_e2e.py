"""End-to-end runs through main.main(): real 2-epoch runs on the published ML-100K and
Amazon_Digital_Music, exact resume (synthetic rows, and ML-100K where present), and every
bad input ending in one line + exit code 2."""
from __future__ import annotations

import json

import pytest
import torch

import main as M
from conftest import (SHARED_DATASETS, SHARED_REFERENCE, STEP_SOURCES, fails_with,
                      interrupt_second_epoch, poison_batch_loss, run_main, step_source,
                      synthetic_rows, write_split_folder)
from runs.log_format import parse_log

REFERENCE_LOG = {"ML-100K": "ML-100K.log", "Amazon_Digital_Music": "Amazon-Music.log"}


@pytest.mark.parametrize("dataset", ["ML-100K", "Amazon_Digital_Music"])
def test_two_epochs_on_real_data(dataset, tmp_path):
    if not (SHARED_DATASETS / dataset).is_dir():
        pytest.skip(f"$REFINE_DATA_DIR/{dataset} is not present")
    rc, result = run_main(["--dataset", dataset, "--data_dir", str(SHARED_DATASETS),
                           "--epochs", "2"], tmp_path)
    assert rc == 0
    run_dir = result / dataset / "run"
    for name in ("argv.txt", "config.json", "train.log", "best.pt", "last.pt", "metrics.json",
                 "epochs.jsonl"):
        assert (run_dir / name).is_file(), name
    log = parse_log(run_dir / "train.log")
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    losses = [e["loss"] for e in log["epochs"]]
    assert all(0 < x < 20 for x in losses) and losses[1] < losses[0]
    assert {int(name.split("@")[1]) for name in log["test"]} == {5, 10, 15, 20}
    assert 0 < log["test"]["recall@20"] < 1
    # the dataset statistics in our header equal the reference log's
    ref_log = SHARED_REFERENCE / "refine_plus" / REFERENCE_LOG[dataset]
    if ref_log.is_file():
        assert log["stats"] == parse_log(ref_log)["stats"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["recall@20"] == pytest.approx(log["test"]["recall@20"], abs=5e-5)
    assert metrics["best_epoch"] == log["best_epoch"]
    best = torch.load(run_dir / "best.pt", weights_only=False)
    assert best["config"]["dataset"] == dataset and best["epoch"] == metrics["best_epoch"]


@pytest.mark.parametrize("source", STEP_SOURCES)
def test_resume_after_interrupt_equals_straight_run(source, tmp_path, monkeypatch,
                                                    tmp_path_factory):
    data_dir, dataset = step_source(source, tmp_path_factory)
    batch = "4096" if dataset == "ML-100K" else "64"  # synthetic: 10 batches an epoch
    args = ["--dataset", dataset, "--data_dir", str(data_dir), "--batch_size", batch,
            "--epochs", "3"]
    rc, result = run_main(args, tmp_path, "straight")
    assert rc == 0

    interrupt_second_epoch(monkeypatch)
    rc, _ = run_main(args, tmp_path, "split")
    assert rc == 130
    monkeypatch.undo()
    split_dir = result / dataset / "split"
    assert torch.load(split_dir / "last.pt", weights_only=False)["epoch"] == 1
    assert M.main(["--resume", str(split_dir), "--quiet", "--threads", "1"]) == 0

    def epochs(run):
        rows = [json.loads(line) for line in (result / dataset / run / "epochs.jsonl").open()]
        return [(r["epoch"], r["loss"], r["valid"]) for r in rows]

    assert epochs("split") == epochs("straight")
    straight = json.loads((result / dataset / "straight" / "metrics.json").read_text())
    resumed = json.loads((split_dir / "metrics.json").read_text())
    assert resumed["test"] == straight["test"] and resumed["best_epoch"] == straight["best_epoch"]
    assert parse_log(split_dir / "train.log")["test"] == \
        parse_log(result / dataset / "straight" / "train.log")["test"]


# ------------------------------------------------------------------------- bad inputs

def test_synthetic_dataset_trains(tmp_path):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
                           "--epochs", "2", "--batch_size", "64"], tmp_path)
    assert rc == 0
    assert (result / "Synth" / "run" / "metrics.json").is_file()


def test_missing_data_folder(tmp_path, capsys):
    rc, result = run_main(["--dataset", "ML-100K", "--data_dir", str(tmp_path / "nowhere")],
                          tmp_path)
    fails_with(capsys, rc, "ML-100K_train_augment.csv")
    assert not result.exists()  # data is checked before a run folder is made


def test_unknown_dataset(tmp_path, capsys):
    rc, _ = run_main(["--dataset", "ML-200K", "--data_dir", str(tmp_path)], tmp_path)
    fails_with(capsys, rc, "unknown dataset 'ML-200K'")


def test_renamed_column(tmp_path, capsys):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    path = tmp_path / "data" / "Synth" / "Synth_train_augment.csv"
    path.write_text(path.read_text().replace("rating:float", "score"))
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data")], tmp_path)
    fails_with(capsys, rc, "missing column(s) rating:float")
    assert not result.exists()


def test_non_numeric_rating(tmp_path, capsys):
    train, valid, test = synthetic_rows()
    train[3] = (train[3][0], train[3][1], "five")
    write_split_folder(tmp_path / "data", "Synth", train, valid, test)
    rc, _ = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data")], tmp_path)
    fails_with(capsys, rc, "non-numeric", "'five'")


def test_unseen_validation_rows_are_dropped_with_a_count(tmp_path):
    train, valid, test = synthetic_rows()
    valid += [(999, 1, 5), (0, 999, 4)]
    write_split_folder(tmp_path / "data", "Synth", train, valid, test)
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
                           "--epochs", "1", "--batch_size", "64"], tmp_path)
    assert rc == 0
    log = (result / "Synth" / "run" / "train.log").read_text()
    assert "dropped 2 row(s) whose user or item is not in the training data" in log


def test_too_few_sampling_candidates(tmp_path, capsys):
    # I = 20 items, so n = 2; user 0 has 19 of them in T: 1 candidate left
    train = [(0, i, 5) for i in range(19)] + [(1, i, 4) for i in range(5, 20)]
    write_split_folder(tmp_path / "data", "Dense", train, [(1, 0, 5)], [(1, 1, 5)])
    rc, _ = run_main(["--dataset", "Dense", "--data_dir", str(tmp_path / "data")], tmp_path)
    fails_with(capsys, rc, "fewer than n = floor(I/10) = 2")


def test_shared_mode_batch_with_one_positive(tmp_path, capsys):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    rc, _ = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
                      "--batch_size", "1"], tmp_path)
    fails_with(capsys, rc, "needs >= 2", "--negatives per_user")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    poison_batch_loss(monkeypatch, 8)  # |T| = 330: 6 batches of 64 per epoch; epoch 2, batch 2
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
                           "--epochs", "5", "--batch_size", "64"], tmp_path)
    fails_with(capsys, rc, "non-finite loss at epoch 2, batch 2")
    last = torch.load(result / "Synth" / "run" / "last.pt", weights_only=False)
    assert last["epoch"] == 1


def test_resume_refuses_changed_settings(tmp_path, capsys):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
                           "--epochs", "1", "--batch_size", "64"], tmp_path)
    assert rc == 0
    rc = M.main(["--resume", str(result / "Synth" / "run"), "--learning_rate", "0.1"])
    fails_with(capsys, rc, "--learning_rate")


def test_data_dir_from_environment(tmp_path, monkeypatch):
    write_split_folder(tmp_path / "envdata", "Synth", *synthetic_rows())
    monkeypatch.setenv("REFINE_DATA_DIR", str(tmp_path / "envdata"))
    rc, result = run_main(["--dataset", "Synth", "--epochs", "1", "--batch_size", "64"],
                          tmp_path)
    assert rc == 0 and (result / "Synth" / "run" / "metrics.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
                           "--device", "cuda:1"], tmp_path)
    fails_with(capsys, rc, "--device cuda:1", "CUDA is not available")
    assert not result.exists()


def test_progress_bar_on_a_terminal_never_in_train_log(tmp_path):
    """On a terminal (a pty of 120 columns) each epoch shows a bar with the batch count and
    ETA on stderr; train.log keeps the reference's lines only; --quiet has no bar."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios
    from pathlib import Path
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    repo = Path(__file__).resolve().parents[1]

    def stderr_on_a_tty(*extra):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc = subprocess.Popen(
            [sys.executable, str(repo / "main.py"), "--dataset", "Synth", "--data_dir",
             str(tmp_path / "data"), "--epochs", "2", "--batch_size", "16", "--threads", "1",
             "--result_dir", str(tmp_path / "result"), *extra],
            cwd=repo, stdin=slave, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the pty
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait() == 0
        return out.decode(errors="replace")

    shown = stderr_on_a_tty("--path_name", "bar")
    assert "epoch 1:" in shown and "/21 [" in shown  # 330 rows of T in batches of 16
    assert "batch/s" not in (tmp_path / "result" / "Synth" / "bar" / "train.log").read_text()
    assert "epoch 1:" not in stderr_on_a_tty("--path_name", "quiet", "--quiet")
