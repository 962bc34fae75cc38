"""What a run saves and derives is never silently wrong: no non-finite parameter reaches a
checkpoint or a reported number, a multi-seed summary is rebuilt or refused when a seed
changes, a resume refuses a config.json that differs from last.pt's own and a log shorter
than last.pt recorded (both before touching a file), and an infeasible sampling (n = 0
negatives) is refused before the run folder exists (issue 27, findings 1-4 and 7)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import compare
import main as M
from conftest import fails_with, run_main, synthetic_rows, write_split_folder


def data_folder(tmp_path, rows=None, name="Synth"):
    write_split_folder(tmp_path / "data", name, *(rows or synthetic_rows()))
    return tmp_path / "data"


def args(data, *extra, epochs=2, name="Synth"):
    return ["--dataset", name, "--data_dir", str(data), "--epochs", str(epochs),
            "--batch_size", "64", *extra]


def finished_run(tmp_path, *extra, epochs=2):
    assert run_main(args(data_folder(tmp_path), *extra, epochs=epochs), tmp_path)[0] == 0
    return tmp_path / "result" / "Synth" / "run"


def snapshot(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


# --------------------------------------------------- 1. nothing non-finite is ever saved

def test_overflowing_learning_rate_saves_nothing_and_reports_nothing(tmp_path, capsys):
    data = data_folder(tmp_path)
    rc, result = run_main(args(data, "--batch_size", "1000000", "--learning_rate", "1e38"),
                          tmp_path)
    fails_with(capsys, rc, "non-finite parameters after epoch 1", "no finite checkpoint")
    run_dir = result / "Synth" / "run"
    for name in ("last.pt", "best.pt", "best.next.pt", "metrics.json"):
        assert not (run_dir / name).exists(), name


def poison_parameters_at(monkeypatch, model: str, at_epoch: int) -> None:
    """Make ``model``'s epoch ``at_epoch`` end with one NaN in its first parameter."""
    from recommenders import MODELS
    spec = MODELS[model]

    def poisoned(net, *a, **kw):
        loss = spec.train_epoch(net, *a, **kw)
        if a[3] == at_epoch:  # (optimizer, graphs, config, epoch, ...)
            with torch.no_grad():
                next(net.parameters()).view(-1)[0] = float("nan")
        return loss
    monkeypatch.setitem(MODELS, model, replace(spec, train_epoch=poisoned))


@pytest.mark.parametrize("model", ["refine_plus", "lightgcn"])
def test_non_finite_parameters_keep_the_last_finite_checkpoint(tmp_path, capsys, monkeypatch,
                                                               model):
    poison_parameters_at(monkeypatch, model, 2)
    rc, result = run_main(args(data_folder(tmp_path), "--model", model, epochs=3), tmp_path)
    fails_with(capsys, rc, "non-finite parameters after epoch 2",
               "last.pt of epoch 1 is the last finite checkpoint")
    run_dir = result / "Synth" / "run"
    last = torch.load(run_dir / "last.pt", weights_only=False)
    best = torch.load(run_dir / "best.pt", weights_only=False)
    assert last["epoch"] == 1 and best["epoch"] == 1
    assert all_finite(last["model"]) and all_finite(best["model"])
    assert not (run_dir / "metrics.json").exists()
    assert [json.loads(r)["epoch"] for r in (run_dir / "epochs.jsonl").read_text().splitlines()] \
        == [1]


def test_lightgcn_adam_overflow_is_one_line(tmp_path, capsys):
    data = data_folder(tmp_path)
    rc, result = run_main(args(data, "--model", "lightgcn", "--batch_size", "1000000",
                               "--learning_rate", "1e38"), tmp_path)
    fails_with(capsys, rc, "epoch 1", "--learning_rate", "no finite checkpoint")
    assert not (result / "Synth" / "run" / "last.pt").exists()


def test_resume_of_a_non_finite_last_pt_is_refused_untouched(tmp_path, capsys):
    run_dir = finished_run(tmp_path)
    state = torch.load(run_dir / "last.pt", weights_only=False)
    next(iter(state["model"].values())).view(-1)[0] = float("inf")
    torch.save(state, run_dir / "last.pt")
    before = snapshot(run_dir)
    rc = M.main(["--resume", str(run_dir), "--epochs", "3", "--quiet"])
    fails_with(capsys, rc, "last.pt", "non-finite")
    assert snapshot(run_dir) == before


# ----------------------------------------------- 2. a multi-seed summary is never stale

def seeds_run(tmp_path):
    rc, result = run_main(args(data_folder(tmp_path), "--seeds", "1", "2"), tmp_path, "ms")
    assert rc == 0
    return result / "Synth" / "ms"


def resume(run_dir, *extra):
    return M.main(["--resume", str(run_dir), "--quiet", "--threads", "1", *extra])


def test_a_seed_resumed_on_its_own_rebuilds_or_removes_the_summary(tmp_path, capsys):
    parent = seeds_run(tmp_path)
    assert resume(parent / "seed1", "--epochs", "3") == 0
    # seed1 now ran 3 epochs, seed2 2: no summary may average them (nor show the old one)
    assert not (parent / "summary.json").exists() and not (parent / "summary.txt").exists()
    capsys.readouterr()
    with pytest.raises(compare.CompareError, match="--resume"):
        compare.compare_lines([str(parent)])
    assert resume(parent / "seed2", "--epochs", "3") == 0
    summary = json.loads((parent / "summary.json").read_text())
    assert summary["last_epoch"]["values"] == [3, 3]
    seed1 = json.loads((parent / "seed1" / "metrics.json").read_text())
    assert summary["test"]["recall@20"]["values"][0] == seed1["test"]["recall@20"]
    assert "2 seeds: 1 2" in (parent / "summary.txt").read_text()
    assert compare.compare_lines([str(parent)])


def test_compare_refuses_a_summary_its_seeds_no_longer_match(tmp_path):
    parent = seeds_run(tmp_path)
    path = parent / "seed2" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["test"]["recall@20"] += 0.125  # as a seed continued by an older version would
    path.write_text(json.dumps(metrics))
    with pytest.raises(compare.CompareError, match="seed2"):
        compare.compare_lines([str(parent)])


# ------------------------------------- 3. resume compares config.json with last.pt's own

@pytest.mark.parametrize("key, value", [("learning_rate", 0.5), ("layers", 1),
                                        ("embedding_dim", 8), ("model", "lightgcn")])
def test_resume_refuses_an_edited_config_json_before_touching_a_file(tmp_path, capsys, key,
                                                                     value):
    run_dir = finished_run(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    config[key] = value
    (run_dir / "config.json").write_text(json.dumps(config))
    before = snapshot(run_dir)
    rc = resume(run_dir, "--epochs", "3")
    fails_with(capsys, rc, f"config.json has {key} {value}", "last.pt")
    assert snapshot(run_dir) == before


def test_multi_seed_resume_refuses_an_edited_seeds_json(tmp_path, capsys):
    parent = seeds_run(tmp_path)
    saved = json.loads((parent / "seeds.json").read_text())
    (parent / "seeds.json").write_text(json.dumps({**saved, "learning_rate": 0.5}))
    before = {p.name: p.read_bytes() for p in parent.rglob("*") if p.is_file()}
    rc = resume(parent, "--epochs", "3")
    fails_with(capsys, rc, "seeds.json has learning_rate 0.5", "learning_rate 0.001")
    assert {p.name: p.read_bytes() for p in parent.rglob("*") if p.is_file()} == before


def test_resume_may_still_change_the_allowed_flags(tmp_path):
    run_dir = finished_run(tmp_path)
    assert resume(run_dir, "--epochs", "3", "--device", "cpu") == 0
    assert json.loads((run_dir / "metrics.json").read_text())["last_epoch"] == 3


# ------------------------------------------------ 4. sampling feasibility: n >= 1

def nine_item_rows():
    train, valid, test = [], [], []
    for u in range(20):
        items = [(u + k) % 9 for k in range(7)]
        train += [(u, i, 5) for i in items[:4]] + [(u, items[4], 1)]
        valid.append((u, items[5], 5))
        test.append((u, items[6], 4))
    return train, valid, test


def test_fewer_than_ten_items_means_no_negatives_and_is_refused(tmp_path, capsys):
    data = data_folder(tmp_path, nine_item_rows(), name="Nine")
    rc, result = run_main(args(data, "--top_k", "1", "5", name="Nine"), tmp_path)
    fails_with(capsys, rc, "9 items", "n = floor(I/10) = 0")
    assert not (result / "Nine").exists()
    for _ in range(2):  # a multi-seed run refused by its first seed leaves no folder either
        rc, _ = run_main(args(data, "--top_k", "1", "5", "--seeds", "1", "2", name="Nine"),
                         tmp_path, "ms")
        fails_with(capsys, rc, "n = floor(I/10) = 0")
        assert not (result / "Nine").exists()


# ------------------------------------------------ 7. rewind never extends a file

@pytest.mark.parametrize("name", ["train.log", "epochs.jsonl"])
def test_resume_refuses_a_log_shorter_than_last_pt_recorded(tmp_path, capsys, name):
    run_dir = finished_run(tmp_path)
    path = run_dir / name
    path.write_bytes(path.read_bytes()[:40])
    before = snapshot(run_dir)
    rc = resume(run_dir, "--epochs", "3")
    fails_with(capsys, rc, name, "40 bytes", "shorter")
    assert snapshot(run_dir) == before
    assert b"\0" not in path.read_bytes()
