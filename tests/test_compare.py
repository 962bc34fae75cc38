"""compare.py on the reference logs and on our runs, the plot, multi-seed runs and their
summary arithmetic, and main.py --compare_to."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import compare
import main as M
from runs import seeds
from conftest import SHARED_REFERENCE, needs_reference_logs, write_split_folder
from conftest import fails_with, run_main, synthetic_rows
from test_parser import REFERENCE_NUMBERS


@needs_reference_logs
@pytest.mark.parametrize("name", sorted(REFERENCE_NUMBERS))
def test_table_carries_the_spec_numbers(name):
    entry = compare.load(SHARED_REFERENCE / "refine_plus" / name)
    recall, ndcg, seconds = REFERENCE_NUMBERS[name]
    assert entry.rows["test R@20"] == (recall, None)
    assert entry.rows["test NDCG@20"] == (ndcg, None)
    assert round(entry.rows["train seconds"][0]) == seconds
    epochs = entry.rows["epochs run"][0]
    assert entry.rows["seconds/epoch"][0] == pytest.approx(entry.rows["train seconds"][0] / epochs)


@needs_reference_logs
def test_table_side_by_side_with_differences():
    lines = compare.compare_lines([SHARED_REFERENCE / "refine" / "ReFINe_ML-100K.out",
                                   SHARED_REFERENCE / "refine_plus" / "ML-100K.log"])
    assert lines[0].split() == ["ReFINe_ML-100K", "ML-100K"]
    rows = {line.split()[0] + " " + line.split()[1]: line.split()[2:] for line in lines[1:]}
    # ReFINe 0.4296 vs ReFINe++ 0.4420 (docs/results.md and the reference ReFINe log)
    assert rows["test R@20"] == ["0.4296", "0.4420", "(+0.0124)"]
    assert rows["best epoch"] == ["421", "400", "(-21)"]


@needs_reference_logs
def test_plot_file_is_written(tmp_path):
    out = tmp_path / "curves.png"
    rc = compare.main([str(SHARED_REFERENCE / "refine" / "ReFINe_ML-100K.out"),
                       str(SHARED_REFERENCE / "refine_plus" / "ML-100K.log"), "--plot", str(out)])
    assert rc == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


RESULTS = Path(__file__).resolve().parents[1] / "results4comparison"


def test_labels_carry_the_model_and_stay_unique(capsys):
    """Two models' runs of one folder name are told apart by the model (config.json, seeds.json
    or the log header); the same run twice gets #2; --labels are taken as given."""
    lines = compare.compare_lines([RESULTS / "lightgcn" / "ML-100K_refined",
                                   RESULTS / "siren" / "ML-100K_refined",
                                   RESULTS / "lightgcn" / "ML-100K.log",
                                   RESULTS / "siren" / "ML-100K_refined" / "seed2024",
                                   RESULTS / "siren" / "ML-100K_refined" / "seed2024" / "train.log",
                                   RESULTS / "lightgcn" / "ML-100K_refined"])
    assert [c.strip() for c in lines[0].split("  ") if c.strip()] == [
        "lightgcn:ML-100K_refined (5 seeds)", "siren:ML-100K_refined (5 seeds)",
        "lightgcn:ML-100K", "siren:seed2024", "siren:seed2024#2",
        "lightgcn:ML-100K_refined (5 seeds)#2"]
    # a multi-seed folder whose seeds.json predates --model: the seeds' log header names it
    assert compare.load(RESULTS / "refine_plus" / "ML-100K_shared").label == \
        "refine_plus:ML-100K_shared (5 seeds)"
    assert compare.main([str(RESULTS / "lightgcn" / "ML-100K.log"),
                         str(RESULTS / "refine" / "ML-100K.log"), "--labels", "a", "a"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["a", "a#2"]


def test_bad_paths_exit_2(tmp_path, capsys):
    assert compare.main([str(tmp_path / "missing.log")]) == 2
    (tmp_path / "empty.log").write_text("hello\n")
    assert compare.main([str(tmp_path / "empty.log")]) == 2
    assert compare.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)


def test_mean_std_by_hand():
    assert seeds.mean_std([0.40, 0.42, 0.44]) == pytest.approx((0.42, 0.02))
    assert seeds.mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert seeds.mean_std([0.3]) == (0.3, 0.0)


def test_summarize_by_hand():
    def metrics(recall, epoch, seconds):
        return {"dataset": "X", "best_epoch": epoch, "last_epoch": epoch + 50,
                "train_seconds": seconds, "seconds_per_epoch": seconds / (epoch + 50),
                "best_validation": {"recall@20": recall - 0.1}, "test": {"recall@20": recall}}
    summary = seeds.summarize({2025: metrics(0.44, 10, 100.0), 2024: metrics(0.40, 30, 200.0)})
    assert summary["seeds"] == [2024, 2025]
    test = summary["test"]["recall@20"]
    assert test["values"] == [0.40, 0.44]
    assert test["mean"] == pytest.approx(0.42)
    assert test["std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))  # sample std of 2 values
    assert summary["best_epoch"]["mean"] == 20 and summary["train_seconds"]["mean"] == 150


def test_resolve_seeds():
    assert seeds.resolve_seeds(None, 3, 2024) == (2024, 2025, 2026)
    assert seeds.resolve_seeds([7, 5], None, 2024) == (7, 5)
    assert seeds.resolve_seeds(None, None, 2024) is None
    for args in (([1], 2), ([1, 1], None), (None, 0)):
        with pytest.raises(ValueError):
            seeds.resolve_seeds(*args, 2024)


def test_multi_seed_run_summary_compare_and_resume(tmp_path, capsys):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    args = ["--model", "lightgcn", "--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
            "--epochs", "2", "--batch_size", "64", "--seeds", "3", "4"]
    rc, result = run_main(args, tmp_path, "multi")
    assert rc == 0
    parent = result / "Synth" / "multi"
    per_seed = [json.loads((parent / f"seed{s}" / "metrics.json").read_text()) for s in (3, 4)]
    cfgs = [json.loads((parent / f"seed{s}" / "config.json").read_text()) for s in (3, 4)]
    assert [c["random_seed"] for c in cfgs] == [3, 4]
    summary = json.loads((parent / "summary.json").read_text())
    values = [m["test"]["recall@20"] for m in per_seed]
    assert values[0] != values[1]  # the seeds differ
    assert summary["test"]["recall@20"]["mean"] == pytest.approx(sum(values) / 2)
    assert summary["test"]["recall@20"]["std"] == pytest.approx(abs(values[0] - values[1])
                                                                / math.sqrt(2))
    entry = compare.load(parent)
    assert entry.label == "lightgcn:multi (2 seeds)" and len(entry.logs) == 2
    assert entry.rows["test R@20"][0] == pytest.approx(sum(values) / 2)
    # the same folder again is refused; --resume keeps the finished seeds and rewrites the summary
    rc, _ = run_main(args, tmp_path, "multi")
    fails_with(capsys, rc, "exists", "--resume")
    (parent / "summary.json").unlink()
    assert M.main(["--resume", str(parent), "--quiet", "--threads", "1"]) == 0
    assert json.loads((parent / "summary.json").read_text())["test"] == summary["test"]


def test_compare_to_prints_the_table_into_the_log(tmp_path, capsys):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    base = ["--model", "lightgcn", "--dataset", "Synth", "--data_dir", str(tmp_path / "data"),
            "--epochs", "1", "--batch_size", "64"]
    rc, result = run_main(base, tmp_path, "first")
    assert rc == 0
    first = result / "Synth" / "first"
    rc, _ = run_main([*base, "--compare_to", str(first)], tmp_path, "second")
    assert rc == 0
    log = (result / "Synth" / "second" / "train.log").read_text().splitlines()
    header = [line for line in log if line.split()[:2] == ["lightgcn:first", "lightgcn:second"]]
    assert len(header) == 1
    row = next(line for line in log if line.startswith("test R@20"))
    assert len(row.split()) == 5 and row.split()[4].startswith("(")  # value, value (diff)
    rc, _ = run_main([*base, "--compare_to", str(tmp_path / "nothing.log")], tmp_path, "third")
    fails_with(capsys, rc, "--compare_to", "nothing.log")


def test_every_committed_run_config_still_loads():
    """The flat config.json of each run in results4comparison/ (written before the model
    settings moved into their files) still builds a Config with the same values."""
    from pathlib import Path

    from recommenders import make_config
    configs = sorted((Path(__file__).resolve().parents[1] / "results4comparison").rglob(
        "config.json"))
    assert len(configs) >= 40
    for path in configs:
        saved = json.loads(path.read_text())
        config = make_config(strict=False, **{k: v for k, v in saved.items() if k != "inputs"})
        flat = config.to_dict()
        assert flat["model"] == saved.get("model", "refine_plus")  # the oldest had no --model
        for key in ("dataset", "learning_rate", "layers", "batch_size", "epochs",
                    *config.settings.__dataclass_fields__):
            if key in saved:
                assert flat[key] == saved[key], (path, key)
