"""Nothing that would change what a number means passes silently: which files a run read
(git blob SHA-1, published or not), derived and overlapping splits, prepare never
overwriting, resume checking its data, flags checked before a run folder exists, one
process per run folder, and epoch bookkeeping that survives kill -9."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import compare
import dataloader
import main as M
import refine_llm
from conftest import (SHARED_DATASETS, SHARED_RAW, fails_with, poison_batch_loss, run_main,
                      shared_dataset, synthetic_rows, write_split_folder)
from dataloader import DataError, load_dataset
from data.registry import PUBLISHED_BLOBS
from runs.log_format import parse_log

REPO = Path(__file__).resolve().parents[1]
RAW_ML100K = SHARED_RAW / "ml-100k"
HEADER = "user_id:token,item_id:token,rating:float\n"


def synth(tmp_path, name="Synth", rows=None, original=True) -> Path:
    """A synthetic split folder; with ``original`` also a train_original the augment file
    relabels (its 0.5/4.5 rows were 2/3)."""
    train, valid, test = rows or synthetic_rows()
    data = tmp_path / "data"
    write_split_folder(data, name, train, valid, test)
    if original:
        raw = [(u, i, {0.5: 2, 4.5: 3}.get(r, r)) for u, i, r in train]
        (data / name / f"{name}_train_original.csv").write_text(
            HEADER + "".join(f"{u},{i},{r}\n" for u, i, r in raw))
    return data


def train_args(data, *extra, epochs=2):
    return ["--dataset", "Synth", "--data_dir", str(data), "--epochs", str(epochs),
            "--batch_size", "64", *extra]


# ------------------------------------------------------------------- 1. provenance

def input_lines(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if line.startswith("input ")]


@shared_dataset("ML-100K")
def test_published_and_modified_ml100k_runs_say_which_files_they_read(tmp_path):
    published_args = ["--dataset", "ML-100K", "--data_dir", str(SHARED_DATASETS), "--epochs",
                      "1", "--batch_size", "4096"]
    assert run_main(published_args, tmp_path, "published")[0] == 0
    run_dir = tmp_path / "result" / "ML-100K" / "published"
    text = (run_dir / "train.log").read_text()
    lines = input_lines(text)
    assert [line.split(":")[0] for line in lines] == [
        "input train_augment", "input validation", "input test", "input train_original"]
    assert all(line.endswith(", published)") for line in lines), lines
    blob = PUBLISHED_BLOBS["ML-100K/ML-100K_train_augment.csv"]
    assert "ML-100K/ML-100K_train_augment.csv (" in lines[0] and blob[:12] in lines[0]
    assert "NOT the published file" not in text and "warning" not in text
    assert "inputs: the published files" in text.split("Final Test Results")[1]
    for name in ("config.json", "metrics.json"):
        inputs = json.loads((run_dir / name).read_text())["inputs"]
        assert [r["published"] for r in inputs] == [True] * 4
        assert inputs[0] == {"role": "train_augment",
                             "path": "ML-100K/ML-100K_train_augment.csv",
                             "bytes": (SHARED_DATASETS / inputs[0]["path"]).stat().st_size,
                             "git_blob": blob, "published": True, "in_data_dir": True}

    # the same run on a train file one relabeling away from the published one
    data = tmp_path / "data"
    shutil.copytree(SHARED_DATASETS / "ML-100K", data / "ML-100K")
    path = data / "ML-100K" / "ML-100K_train_augment.csv"
    rows = path.read_text().splitlines()
    at = next(n for n, row in enumerate(rows) if row.endswith(",0.5"))
    rows[at] = rows[at][:-3] + "4.5"
    path.write_text("\n".join(rows) + "\n")
    assert run_main([*published_args[:2], "--data_dir", str(data), *published_args[4:]],
                    tmp_path, "modified")[0] == 0
    modified = tmp_path / "result" / "ML-100K" / "modified"
    text = (modified / "train.log").read_text()
    assert "NOT the published file" in input_lines(text)[0]
    assert "NOT the published file" in text.split("Final Test Results")[1]
    assert json.loads((modified / "metrics.json").read_text())["inputs"][0]["published"] is False
    table = compare.compare_lines([str(run_dir), str(modified)])
    warnings = [line for line in table if line.startswith("warning:")]
    assert len(warnings) == 1 and "different files for ML-100K" in warnings[0] \
        and "train_augment" in warnings[0], table
    data_row = next(line for line in table if line.startswith("data"))
    assert "published" in data_row and "MODIFIED" in data_row


def test_own_dataset_records_unpublished_inputs(tmp_path):
    data = synth(tmp_path)
    assert run_main(train_args(data), tmp_path)[0] == 0
    inputs = json.loads((tmp_path / "result/Synth/run/config.json").read_text())["inputs"]
    assert [r["role"] for r in inputs] == ["train_augment", "validation", "test",
                                           "train_original"]
    assert all(r["published"] is False for r in inputs)
    assert "NOT the published file" not in (tmp_path / "result/Synth/run/train.log").read_text()


# ---------------------------------------------------------- 2. derived files, manifests

@pytest.mark.parametrize("change", ["order", "rating", "row"])
def test_stale_train_augment_is_refused(tmp_path, capsys, change):
    data = synth(tmp_path)
    path = data / "Synth" / "Synth_train_augment.csv"
    rows = path.read_text().splitlines()
    if change == "order":
        rows[1], rows[2] = rows[2], rows[1]
    elif change == "rating":  # a positive turned negative: not an LLM relabeling
        at = next(n for n, row in enumerate(rows) if row.endswith(",5"))
        rows[at] = rows[at][:-1] + "1"
    else:
        rows.pop(5)
    path.write_text("\n".join(rows) + "\n")
    rc, result = run_main(train_args(data), tmp_path)
    fails_with(capsys, rc, "Synth_train_augment.csv is stale", "Synth_train_original.csv",
               "refine_llm.py")
    assert not result.exists()


def test_train_augment_whose_manifest_names_another_input_is_refused(tmp_path, capsys):
    data = synth(tmp_path)
    (data / "Synth" / "Synth_train_augment.manifest.json").write_text(
        json.dumps({"input_sha1": "0" * 40, "output_sha1": "1" * 40}))
    rc, _ = run_main(train_args(data), tmp_path)
    fails_with(capsys, rc, "Synth_train_augment.manifest.json", "another train_original")


# ------------------------------------------------------------------ 3. split overlap

@pytest.mark.parametrize("pair", [("train", "valid"), ("train", "test"), ("valid", "test")])
def test_a_pair_in_two_splits_is_refused(tmp_path, capsys, pair):
    train, valid, test = synthetic_rows()
    splits = {"train": train, "valid": valid, "test": test}
    user, item, _ = splits[pair[0]][0]
    splits[pair[1]].append((user, item, 5))
    data = synth(tmp_path, rows=(train, valid, test))
    rc, result = run_main(train_args(data), tmp_path)
    names = {"train": "Synth_train_augment.csv", "valid": "Synth_validation.csv",
             "test": "Synth_test.csv"}
    fails_with(capsys, rc, "1 (user, item) pair(s)", names[pair[0]], names[pair[1]],
               f"user {user}, item {item}", "--allow_split_overlap")
    assert not result.exists()
    rc, result = run_main(train_args(data, "--allow_split_overlap", epochs=1), tmp_path)
    assert rc == 0
    assert "1 (user, item) pair(s)" in (result / "Synth/run/train.log").read_text()


def test_published_splits_load_without_warning():
    if not (SHARED_DATASETS / "Amazon_Digital_Music").is_dir():
        pytest.skip("the published Amazon_Digital_Music splits are not present")
    warnings = []
    load_dataset(SHARED_DATASETS, "Amazon_Digital_Music", warn=warnings.append)
    assert warnings == []


# ------------------------------------------------------------- 4. prepare --overwrite

def write_inter(path: Path, num_users=12, num_items=15):
    import random
    rng = random.Random(1)
    rows = [(u, i, rng.choice([1, 2, 3, 4, 5, 5, 4])) for u in range(1, num_users + 1)
            for i in rng.sample(range(1, num_items + 1), 12)]
    path.write_text("user_id:token\titem_id:token\trating:float\n"
                    + "".join(f"{u}\t{i}\t{r}\n" for u, i, r in rows))


def test_prepare_never_overwrites_and_removes_a_stale_augment(tmp_path, capsys):
    inter = tmp_path / "mine.inter"
    write_inter(inter)
    args = ["prepare", "--inter", str(inter), "--name", "Mine", "--data_dir", str(tmp_path),
            "--core", "2"]
    assert dataloader.main(args) == 0
    folder = tmp_path / "Mine"
    original = (folder / "Mine_train_original.csv").read_text()
    (folder / "Mine_train_augment.csv").write_text(original)  # a relabeling that kept all
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert dataloader.main([*args, "--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # same seed: the same split, so the augment still relabels it and stays
    assert dataloader.main([*args, "--overwrite"]) == 0
    assert (folder / "Mine_train_augment.csv").read_bytes() == before["Mine_train_augment.csv"]
    capsys.readouterr()
    assert dataloader.main([*args, "--overwrite", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert not (folder / "Mine_train_augment.csv").exists()
    assert (folder / "Mine_train_augment.csv.stale").read_bytes() == \
        before["Mine_train_augment.csv"]
    assert "renamed" in out and "Mine_train_augment.csv.stale" in out


@pytest.mark.skipif(not RAW_ML100K.is_dir(), reason="raw ml-100k files are not present")
@shared_dataset("ML-100K")
def test_prepare_over_the_published_ml100k_with_another_seed(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(SHARED_DATASETS / "ML-100K", data / "ML-100K")
    args = ["prepare", "--dataset", "ML-100K", "--raw_dir", str(RAW_ML100K), "--data_dir",
            str(data), "--seed", "1"]
    assert dataloader.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert dataloader.main([*args, "--overwrite"]) == 0
    assert not (data / "ML-100K" / "ML-100K_train_augment.csv").exists()
    capsys.readouterr()
    rc, _ = run_main(["--dataset", "ML-100K", "--data_dir", str(data)], tmp_path)
    fails_with(capsys, rc, "ML-100K_train_augment.csv")


# ------------------------------------------------------------------- 5. resume checks

def finished_run(tmp_path, *extra, epochs=2) -> Path:
    data = synth(tmp_path)
    assert run_main(train_args(data, *extra, epochs=epochs), tmp_path)[0] == 0
    return tmp_path / "result" / "Synth" / "run"


def snapshot(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


@pytest.mark.parametrize("change", ["half_validation", "other_shape"])
def test_resume_refuses_changed_data(tmp_path, capsys, change):
    run_dir = finished_run(tmp_path)
    before = snapshot(run_dir)
    folder = tmp_path / "data" / "Synth"
    if change == "half_validation":
        path = folder / "Synth_validation.csv"
        rows = path.read_text().splitlines()
        path.write_text("\n".join(rows[:1 + (len(rows) - 1) // 2]) + "\n")
        changed = "Synth_validation.csv"
    else:  # drop user 0 everywhere: fewer users, another embedding table shape
        for path in folder.glob("*.csv"):
            rows = path.read_text().splitlines()
            path.write_text("\n".join(r for r in rows if not r.startswith("0,")) + "\n")
        changed = "Synth_train_augment.csv"
    rc = M.main(["--resume", str(run_dir), "--epochs", "3", "--quiet"])
    fails_with(capsys, rc, changed, "changed since the run started")
    assert snapshot(run_dir) == before


def test_resume_with_truncated_last_pt_or_missing_best_pt(tmp_path, capsys):
    run_dir = finished_run(tmp_path)
    data = (run_dir / "last.pt").read_bytes()
    (run_dir / "last.pt").write_bytes(data[:len(data) // 2])
    before = snapshot(run_dir)
    rc = M.main(["--resume", str(run_dir), "--epochs", "3", "--quiet"])
    fails_with(capsys, rc, "last.pt", "cannot be read")
    assert snapshot(run_dir) == before
    (run_dir / "last.pt").write_bytes(data)
    (run_dir / "best.pt").unlink()
    before = snapshot(run_dir)
    rc = M.main(["--resume", str(run_dir), "--epochs", "3", "--quiet"])
    fails_with(capsys, rc, "best.pt", "missing")
    assert snapshot(run_dir) == before


# ------------------------------------------------------------- 6. flags checked first

@pytest.mark.parametrize("flags,fragment", [
    (["--device", "bogus"], "--device bogus"),
    (["--device", "mps"], "--device mps"),
    (["--threads", "-1"], "--threads"),
    (["--random_seed", "-1"], "--random_seed"),
    (["--random_seed", str(2 ** 32)], "--random_seed"),
    (["--seeds", "1", "-2"], "--seeds"),
    (["--top_k", "5", "5000"], "--top_k 5000"),
    (["--lambda1", "-1"], "--lambda1"),
    (["--lambda2", "-0.1"], "--lambda2"),
    (["--evaluation_step", "3"], "--evaluation_step 3"),
    (["--batch_size", "1"], "--batch_size 1"),
])
def test_bad_flags_are_one_line_and_make_no_folder(tmp_path, capsys, flags, fragment):
    data = synth(tmp_path)
    rc, result = run_main(train_args(data, *flags), tmp_path)
    fails_with(capsys, rc, fragment)
    assert not result.exists()


def test_result_dir_that_is_a_file(tmp_path, capsys):
    data = synth(tmp_path)
    (tmp_path / "afile").write_text("x")
    for result_dir in (tmp_path / "afile", tmp_path / "afile" / "below"):
        rc = M.main([*train_args(data), "--result_dir", str(result_dir), "--quiet"])
        fails_with(capsys, rc, "--result_dir", "not a folder")


def test_result_dir_not_writable(tmp_path, capsys, monkeypatch):
    data = synth(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anyway: let access() answer as for a user
        from runs import run_folder
        real_access = os.access
        monkeypatch.setattr(run_folder.os, "access",
                            lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    rc = M.main([*train_args(data), "--result_dir", str(locked / "runs"), "--quiet"])
    fails_with(capsys, rc, "--result_dir", "not writable")
    assert list(locked.iterdir()) == []


def test_infeasible_sampling_makes_no_folder(tmp_path, capsys):
    train = [(0, i, 5) for i in range(19)] + [(1, i, 4) for i in range(5, 20)]
    write_split_folder(tmp_path / "data", "Dense", train, [(1, 0, 5)], [(1, 1, 5)])
    rc, result = run_main(["--dataset", "Dense", "--data_dir", str(tmp_path / "data")],
                          tmp_path)
    fails_with(capsys, rc, "fewer than n = floor(I/10) = 2")
    assert not result.exists()


def test_compare_plot_into_a_missing_folder(tmp_path, capsys):
    run_dir = finished_run(tmp_path, epochs=1)
    rc = compare.main([str(run_dir), "--plot", str(tmp_path / "missing_dir" / "x.png")])
    fails_with(capsys, rc, "--plot", "missing_dir")


def test_a_later_error_is_in_train_log_and_the_folder_can_be_rerun(tmp_path, capsys,
                                                                     monkeypatch):
    data = synth(tmp_path)
    poison_batch_loss(monkeypatch, 1)  # the first batch: no epoch finishes
    rc, result = run_main(train_args(data), tmp_path)
    fails_with(capsys, rc, "non-finite loss at epoch 1")
    run_dir = result / "Synth" / "run"
    assert "error: non-finite loss at epoch 1" in (run_dir / "train.log").read_text()
    monkeypatch.undo()
    rc = M.main(["--resume", str(run_dir), "--quiet"])
    fails_with(capsys, rc, "no finished epoch", "same command")
    rc, _ = run_main(train_args(data), tmp_path)  # the same --path_name starts over there
    assert rc == 0
    log = (run_dir / "train.log").read_text()
    assert "error:" not in log and log.count("Epoch: 001") == 1
    assert json.loads((run_dir / "metrics.json").read_text())["last_epoch"] == 2


# ------------------------------------------------------------- 7. one run per folder

def spawn(args, env_extra=None):
    env = {**os.environ, **(env_extra or {}), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_racing_for_one_path_name(tmp_path):
    data = synth(tmp_path)
    result = tmp_path / "result"
    common = [*train_args(data, epochs=30), "--result_dir", str(result), "--path_name", "race",
              "--quiet", "--threads", "1", "--early_stopping_step", "100"]
    barrier = tmp_path / "go"  # both processes wait just before taking the folder
    procs = [spawn([*common, "--random_seed", str(seed)], {"REFINE_WAIT_AT": f"claim:{barrier}"})
             for seed in (11, 12)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    barrier.touch()
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in outs)
    assert codes == [0, 2], outs
    winner = 11 if outs[0][0] == 0 else 12
    loser_err = next(err for rc, _, err in outs if rc == 2).strip().splitlines()
    assert len(loser_err) == 1 and loser_err[0].startswith("error:") and "race" in loser_err[0]
    run_dir = result / "Synth" / "race"
    argv = (run_dir / "argv.txt").read_text()  # as typed: no interpreter or script path
    assert argv.startswith("python main.py --") and f"--random_seed {winner}" in argv
    assert json.loads((run_dir / "config.json").read_text())["random_seed"] == winner
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "argv.txt", "best.pt", "config.json", "environment.jsonl", "epochs.jsonl", "last.pt",
        "metrics.json", "per_user.npz", "train.log"]
    assert parse_log(run_dir / "train.log")["hparams"]["ramdom_seed"] == str(winner)


def test_default_run_names_do_not_collide(tmp_path):
    from runs import run_folder
    names = {run_folder.default_name() for _ in range(200)}
    assert len(names) == 200


# -------------------------------------------------- 8. kill -9 between jsonl and last.pt

def test_kill_between_epochs_jsonl_and_last_pt_then_resume(tmp_path):
    data = synth(tmp_path)
    result = tmp_path / "result"
    args = [*train_args(data, epochs=4), "--result_dir", str(result), "--path_name", "killed",
            "--quiet", "--threads", "1"]
    proc = spawn(args, {"REFINE_CRASH_AT": "epochs_jsonl:2"})
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    run_dir = result / "Synth" / "killed"
    assert torch.load(run_dir / "last.pt", weights_only=False)["epoch"] == 1
    assert torch.load(run_dir / "best.pt", weights_only=False)["epoch"] == 1  # matches last.pt
    assert [json.loads(r)["epoch"] for r in (run_dir / "epochs.jsonl").open()] == [1, 2]
    assert M.main(["--resume", str(run_dir), "--quiet", "--threads", "1"]) == 0
    assert [json.loads(r)["epoch"] for r in (run_dir / "epochs.jsonl").open()] == [1, 2, 3, 4]
    log = (run_dir / "train.log").read_text()
    assert [log.count(f"Epoch: {e:03d}") for e in (1, 2, 3, 4)] == [1, 1, 1, 1]
    entry = compare.load(run_dir)
    assert entry.rows["epochs run"][0] == 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert entry.rows["seconds/epoch"][0] == pytest.approx(metrics["train_seconds"] / 4,
                                                           rel=1e-3)


# --------------------------------------------------------------------- 9. the wording

def eval_failure(tmp_path, valid_text, train_rows=None):
    train = train_rows or [(1, 10, 5), (1, 11, 4), (2, 10, 4), (2, 12, 5)]
    folder = tmp_path / "Tiny"
    folder.mkdir(exist_ok=True)
    (folder / "Tiny_train_augment.csv").write_text(
        HEADER + "".join(f"{u},{i},{r}\n" for u, i, r in train))
    (folder / "Tiny_validation.csv").write_text(HEADER + valid_text)
    (folder / "Tiny_test.csv").write_text(HEADER + "1,12,5\n")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path, "Tiny", warn=lambda *_: None)
    return str(err.value)


def test_eval_split_with_only_low_ratings_names_the_cause(tmp_path):
    message = eval_failure(tmp_path, "2,11,3\n2,13,2\n")
    assert "every row has rating < 4" in message and "Tiny_validation.csv" in message


@pytest.mark.parametrize("valid,shown", [("1.0,12,5\n2.0,11,4\n", "'1.0'"),
                                         (" 1,12,5\n 2,11,4\n", "' 1'"),
                                         ("01,12,5\n02,11,4\n", "'01'")])
def test_eval_split_with_ids_written_differently_names_the_cause(tmp_path, valid, shown):
    message = eval_failure(tmp_path, valid)
    assert "written differently" in message and shown in message and "'1'" in message


def test_eval_split_with_really_unseen_ids(tmp_path):
    message = eval_failure(tmp_path, "9,12,5\n")
    assert "users/items unseen in training" in message and "written differently" not in message


@pytest.mark.parametrize("sep,name", [("\t", "tab"), (";", "semicolon")])
def test_split_file_with_another_delimiter(tmp_path, sep, name):
    path = tmp_path / "x.csv"
    path.write_text(HEADER.replace(",", sep) + f"1{sep}10{sep}5\n")
    with pytest.raises(DataError, match=f"{name}-separated"):
        dataloader.read_split(path, is_train=True)


def test_empty_rating_is_named_empty(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(HEADER + "1,10,5\n1,11,\n")
    with pytest.raises(DataError) as err:
        dataloader.read_split(path, is_train=True)
    assert "empty" in str(err.value) and "np.float64" not in str(err.value)


def test_missing_data_dir_is_not_an_unknown_dataset(tmp_path, capsys):
    rc, _ = run_main(["--dataset", "Mine", "--data_dir", str(tmp_path / "nowhere")], tmp_path)
    fails_with(capsys, rc, "--data_dir", "nowhere", "does not exist")


def test_resume_error_names_real_flags(tmp_path, capsys):
    run_dir = finished_run(tmp_path, epochs=1)
    rc = M.main(["--resume", str(run_dir), "--learning_rate", "0.1"])
    fails_with(capsys, rc, "--no_download")
    capsys.readouterr()
    rc = M.main(["--resume", str(run_dir), "--learning_rate", "0.1"])
    err = capsys.readouterr().err
    assert "--download," not in err and "--download " not in err


def test_refine_llm_dry_run_needs_no_model(tmp_path, capsys):
    from refine_helpers import write_toy
    write_toy(tmp_path)
    rc = refine_llm.main(["--dataset", "ML-100K", "--data_dir", str(tmp_path), "--backend",
                          "openai", "--dry_run", "1"])
    assert rc == 0
    assert "--- user" in capsys.readouterr().out


# ------------------------------------------- multi-seed runs, paths, damaged run files

def seeds_run(tmp_path, *extra, name="ms"):
    data = synth(tmp_path)
    rc, result = run_main(train_args(data, "--seeds", "1", "2", *extra), tmp_path, name)
    assert rc == 0
    return data, result / "Synth" / name


def test_multi_seed_resume_refuses_seeds_finished_on_other_data(tmp_path, capsys):
    data, parent = seeds_run(tmp_path)
    path = data / "Synth" / "Synth_test.csv"
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows[:len(rows) // 2]) + "\n")
    before = (parent / "summary.json").read_bytes()
    rc = M.main(["--resume", str(parent), "--quiet"])
    fails_with(capsys, rc, "seed1 finished on other data", "Synth_test.csv changed")
    assert (parent / "summary.json").read_bytes() == before


def test_multi_seed_resume_with_other_epochs(tmp_path, capsys):
    _, parent = seeds_run(tmp_path)
    assert M.main(["--resume", str(parent), "--epochs", "3", "--quiet", "--threads", "1"]) == 0
    summary = json.loads((parent / "summary.json").read_text())
    assert summary["last_epoch"]["values"] == [3, 3]  # both seeds continued, none reused
    assert json.loads((parent / "seeds.json").read_text())["epochs"] == 3
    rc = M.main(["--resume", str(parent), "--epochs", "1", "--quiet"])
    fails_with(capsys, rc, "seed1 ran 3 epochs, more than --epochs 1")


def test_nested_multi_seed_path_name_runs_and_resumes(tmp_path):
    _, parent = seeds_run(tmp_path, name="group/exp1")
    assert sorted(p.name for p in parent.iterdir() if p.is_dir()) == ["seed1", "seed2"]
    assert M.main(["--resume", str(parent), "--epochs", "3", "--quiet", "--threads", "1"]) == 0
    assert json.loads((parent / "seed2" / "metrics.json").read_text())["last_epoch"] == 3


def test_a_resumed_multi_seed_run_keeps_its_result_dir_as_given(tmp_path, monkeypatch):
    """--resume result/Synth/ms (relative) records result_dir "result" in every seed's
    config, a seed that had not begun included, and logs relative checkpoint paths: a
    resume does not turn a run's records into a machine's absolute paths."""
    synth(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["--dataset", "Synth", "--data_dir", "data", "--batch_size", "64", "--quiet",
            "--threads", "1", "--no_download", "--result_dir", "result", "--path_name", "ms"]
    assert M.main([*args, "--epochs", "2", "--seeds", "1", "2"]) == 0
    shutil.rmtree("result/Synth/ms/seed2")  # as if killed before seed 2 began
    assert M.main(["--resume", "result/Synth/ms", "--epochs", "3", "--quiet"]) == 0
    for seed in ("seed1", "seed2"):
        assert json.loads(Path(f"result/Synth/ms/{seed}/config.json").read_text())[
            "result_dir"] == "result"
    for path in Path("result").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log", ".jsonl"):
            assert str(tmp_path) not in path.read_text(), path


def test_resumed_run_has_no_stale_metrics_json_until_it_ends(tmp_path):
    run_dir = finished_run(tmp_path)
    proc = spawn(["--resume", str(run_dir), "--epochs", "4", "--quiet", "--threads", "1"],
                 {"REFINE_CRASH_AT": "epochs_jsonl:4"})
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()  # epoch 3 happened: the old one is gone


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../escape", "a/../../b", "."])
def test_path_name_stays_inside_the_result_folder(tmp_path, capsys, name):
    data = synth(tmp_path)
    rc = M.main([*train_args(data), "--result_dir", str(tmp_path / "result"), "--path_name",
                 name, "--quiet"])
    fails_with(capsys, rc, "--path_name", "without '..'")
    assert not (tmp_path / "result").exists()


@shared_dataset("ML-100K")
def test_symlinked_published_data_is_still_published(tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "ML-100K").symlink_to(SHARED_DATASETS / "ML-100K")
    data = dataloader.load_dataset(linked, "ML-100K", warn=lambda _: None)
    from data.provenance import record_file
    records = [record_file(role, path, linked) for role, path in data.files]
    assert [r.path for r in records][0] == "ML-100K/ML-100K_train_augment.csv"
    assert all(r.published for r in records)


def test_compare_counts_unvalidated_epochs_too(tmp_path):
    run_dir = finished_run(tmp_path, "--evaluation_step", "2", epochs=4)
    entry = compare.load(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert entry.rows["epochs run"][0] == 4 == metrics["last_epoch"]
    assert entry.rows["seconds/epoch"][0] == pytest.approx(metrics["seconds_per_epoch"])


def test_some_ids_written_differently_is_refused_not_dropped(tmp_path):
    train, valid, test = synthetic_rows()
    test = [(f"{u}.0" if u % 2 else u, i, r) for u, i, r in test]  # odd users as '1.0'
    data = synth(tmp_path, rows=(train, valid, test))
    with pytest.raises(DataError, match="written differently.*'1.0' here, '1' there"):
        load_dataset(data, "Synth", warn=lambda _: None)


def test_damaged_config_json_on_resume_is_one_line(tmp_path, capsys):
    run_dir = finished_run(tmp_path, epochs=1)
    for text in ("{bad", "[1, 2]"):
        (run_dir / "config.json").write_text(text)
        rc = M.main(["--resume", str(run_dir), "--epochs", "2", "--quiet"])
        fails_with(capsys, rc, "config.json")


@pytest.mark.parametrize("content", [b"\xff\xfe{", b'{"input_sha1": 5}', b'{"input_sha1": null}'])
def test_odd_manifests_are_one_line(tmp_path, capsys, content):
    data = synth(tmp_path)
    (data / "Synth" / "Synth_train_augment.manifest.json").write_bytes(content)
    rc, _ = run_main(train_args(data), tmp_path)
    fails_with(capsys, rc, "manifest")


def test_the_recorded_command_line_is_shell_quoted(monkeypatch):
    """argv.txt and the LLM steps' manifests: one function, arguments quoted as a shell
    needs them, the program as the user types it (never the interpreter's absolute path)."""
    from runs.cli import command_line
    monkeypatch.setattr(sys, "argv", ["/somewhere/main.py", "--path_name", "a b", "--epochs", "2"])
    assert command_line("python main.py") == "python main.py --path_name 'a b' --epochs 2"


def test_a_directory_named_like_a_run_file_is_not_removed(tmp_path, capsys):
    data = synth(tmp_path)
    (tmp_path / "result" / "Synth" / "run" / "argv.txt").mkdir(parents=True)
    rc, _ = run_main(train_args(data), tmp_path)
    fails_with(capsys, rc, "argv.txt", "which no run writes")
    assert (tmp_path / "result" / "Synth" / "run" / "argv.txt").is_dir()


def test_compare_unreadable_numbers_and_odd_plot_names(tmp_path, capsys):
    log = tmp_path / "odd.log"
    log.write_text("Epoch: 001, Loss: 1.2.3\n")
    assert compare.main([str(log)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    run_dir = finished_run(tmp_path, epochs=1)
    for out in (tmp_path / "x.foo", tmp_path):
        assert compare.main([str(run_dir), "--plot", str(out)]) == 2
        assert capsys.readouterr().err.startswith("error: --plot")


def test_prepare_refuses_empty_splits_and_keeps_older_stale_files(tmp_path, capsys):
    inter = tmp_path / "mine.inter"
    write_inter(inter)
    args = ["prepare", "--inter", str(inter), "--name", "Mine", "--data_dir", str(tmp_path),
            "--core", "2"]
    assert dataloader.main([*args, "--positive", "6"]) == 2
    assert "came out empty" in capsys.readouterr().err
    assert not (tmp_path / "Mine").exists()
    assert dataloader.main(args) == 0
    folder = tmp_path / "Mine"
    for seed, version in (("7", "first"), ("8", "second")):
        (folder / "Mine_train_augment.csv").write_text(HEADER + f"{version},1,5\n")
        assert dataloader.main([*args, "--overwrite", "--seed", seed]) == 0
    assert (folder / "Mine_train_augment.csv.stale").read_text().endswith("first,1,5\n")
    assert (folder / "Mine_train_augment.csv.stale2").read_text().endswith("second,1,5\n")


def test_kill_after_last_pt_before_the_new_best_is_renamed(tmp_path):
    data = synth(tmp_path)
    result = tmp_path / "result"
    args = [*train_args(data, epochs=3), "--result_dir", str(result), "--path_name", "k",
            "--quiet", "--threads", "1"]
    assert run_main(train_args(data, epochs=3), tmp_path, "straight")[0] == 0
    proc = spawn(args, {"REFINE_CRASH_AT": "best_rename:2"})
    proc.wait(timeout=300)
    run_dir = result / "Synth" / "k"
    if proc.returncode == 0:
        pytest.skip("epoch 2 was not a new best here: nothing to rename")
    assert proc.returncode == -signal.SIGKILL and (run_dir / "best.next.pt").is_file()
    assert M.main(["--resume", str(run_dir), "--quiet", "--threads", "1"]) == 0
    assert not (run_dir / "best.next.pt").exists()
    straight = json.loads((result / "Synth" / "straight" / "metrics.json").read_text())
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert (resumed["best_epoch"], resumed["test"]) == (straight["best_epoch"], straight["test"])


def test_resume_after_train_original_appears(tmp_path):
    data = synth(tmp_path, original=False)
    assert run_main(train_args(data), tmp_path)[0] == 0
    synth(tmp_path)  # now with the train_original that the augment file relabels
    run_dir = tmp_path / "result" / "Synth" / "run"
    assert M.main(["--resume", str(run_dir), "--epochs", "3", "--quiet", "--threads", "1"]) == 0


def test_inputs_outside_the_data_folder_are_found_again(tmp_path, monkeypatch):
    from dataclasses import asdict

    from data.provenance import located, record_file
    outside = tmp_path / "elsewhere.item"
    outside.write_text("x")
    record = asdict(record_file("item_texts", outside, tmp_path / "splits" / "data"))
    assert record["in_data_dir"] is False and located(record, tmp_path / "data") == outside
    beside = asdict(record_file("item_texts", outside, tmp_path / "data"))  # ../raw/x.item
    assert (beside["path"], beside["in_data_dir"]) == ("../elsewhere.item", True)
    assert located(beside, tmp_path / "data").resolve() == outside
    monkeypatch.chdir(tmp_path)  # a relative path outside the data folder: as given
    relative = asdict(record_file("item_texts", Path("elsewhere.item"), Path("data")))
    assert (relative["path"], relative["in_data_dir"]) == ("elsewhere.item", False)


def test_a_result_path_through_a_file_and_a_damaged_seed_are_one_line(tmp_path, capsys):
    data = synth(tmp_path)
    (tmp_path / "result").mkdir()
    (tmp_path / "result" / "Synth").write_text("not a folder")
    rc, _ = run_main(train_args(data), tmp_path)
    fails_with(capsys, rc, "is a file, not a folder")
    (tmp_path / "result" / "Synth").unlink()
    _, parent = seeds_run(tmp_path)
    (parent / "seed2" / "metrics.json").write_text("{torn")
    rc = M.main(["--resume", str(parent), "--quiet"])
    fails_with(capsys, rc, "metrics.json is damaged")
