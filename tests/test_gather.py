"""python -m runs.gather: single-seed runs of one configuration gathered into a multi-seed
folder equal to the one ``main.py --seeds`` writes, and the one-line refusals."""
from __future__ import annotations

import json
import shutil

import pytest

import compare
from conftest import fails_with, run_main, synthetic_rows, write_split_folder
from runs import environment, gather

ARGS = ["--dataset", "Synth", "--batch_size", "64", "--epochs", "2", "--embedding_dim", "8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(data folder, result folder): seeds 1 and 2 as single runs and as one --seeds run."""
    root = tmp_path_factory.mktemp("gather")
    write_split_folder(root / "data", "Synth", *synthetic_rows())
    base = [*ARGS, "--data_dir", str(root / "data")]
    for seed in (1, 2):
        assert run_main([*base, "--random_seed", str(seed)], root, f"s{seed}")[0] == 0
    assert run_main([*base, "--seeds", "1", "2"], root, "both")[0] == 0
    return root / "data", root / "result" / "Synth"


def without_timings(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("train_seconds", "seconds_per_epoch")}


def test_gathered_seeds_equal_a_multi_seed_run(runs, tmp_path, capsys):
    data, result = runs
    into = tmp_path / "gathered"
    assert gather.main([str(result / "s2"), str(result / "s1"), "--into", str(into)]) == 0
    assert "recall@20" in capsys.readouterr().out.lower()  # the summary table, printed
    made = json.loads((into / "summary.json").read_text())
    real = json.loads((result / "both" / "summary.json").read_text())
    assert without_timings(made) == without_timings(real)  # every metric's mean, std and
    assert made.keys() == real.keys()  # per-seed values, the seed order; timings differ
    seeds_file = json.loads((into / "seeds.json").read_text())
    assert seeds_file["seeds"] == [1, 2] and seeds_file["random_seed"] == 1
    for seed in (1, 2):  # byte-identical copies, checkpoints included
        for name in ("metrics.json", "per_user.npz", "best.pt", "epochs.jsonl"):
            assert (into / f"seed{seed}" / name).read_bytes() == \
                (result / f"s{seed}" / name).read_bytes()
    record = json.loads((into / gather.GATHERED_FILE).read_text())
    for seed in (1, 2):  # relative to the gathered folder
        assert (into / record["seeds"][f"seed{seed}"]).resolve() == (result / f"s{seed}").resolve()
    now = environment.code_version() or "unknown"
    assert record["code"] == {"seed1": now, "seed2": now}
    assert not list(tmp_path.glob(".*gathering"))
    # compare.py --test pairs it with the real multi-seed run: the same per-user numbers
    assert compare.main(["--test", str(into), str(result / "both")]) == 0
    out = capsys.readouterr().out
    assert "+0.0000" in out and "nan" not in out.lower()


def test_without_checkpoints(runs, tmp_path):
    _, result = runs
    into = tmp_path / "light"
    assert gather.main([str(result / "s1"), str(result / "s2"), "--into", str(into),
                        "--without_checkpoints", "--quiet"]) == 0
    assert not list(into.rglob("*.pt")) and (into / "seed1" / "per_user.npz").is_file()


def test_refusals_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    data, result = runs
    into = tmp_path / "into"

    def refused(paths, *fragments):
        fails_with(capsys, gather.main([*map(str, paths), "--into", str(into)]), *fragments)
        assert not into.exists()

    refused([result / "s1"], "at least two runs")
    refused([result / "s1", result / "s1"], "are both seed 1")
    refused([result / "s1", result / "both"], "is a multi-seed run")
    refused([result / "s1", tmp_path / "nothing"], "not a run folder")
    killed = tmp_path / "killed"
    shutil.copytree(result / "s2", killed)
    (killed / "metrics.json").unlink()
    refused([result / "s1", killed], "did not finish (no metrics.json)")
    other = tmp_path / "other"  # seed 2 with another learning rate
    shutil.copytree(result / "s2", other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "learning_rate": 0.5}))
    refused([result / "s1", other], "has learning_rate 0.5", "not seeds of one configuration")
    moved = tmp_path / "moved"  # where it ran may differ: another result_dir and threads
    shutil.copytree(result / "s2", moved)
    (moved / "config.json").write_text(json.dumps({**config, "threads": 2,
                                                   "result_dir": "elsewhere"}))
    metrics = json.loads((moved / "metrics.json").read_text())
    metrics["inputs"][0]["git_blob"] = "0" * 40  # as a run on changed data records it: in
    (moved / "metrics.json").write_text(json.dumps(metrics))  # both files
    (moved / "config.json").write_text(json.dumps({**config, "threads": 2,
                                                   "inputs": metrics["inputs"]}))
    refused([result / "s1", moved], "read other files than", metrics["inputs"][0]["role"])
    bare = tmp_path / "bare"  # a metrics.json a summary cannot average: nothing written
    shutil.copytree(result / "s2", bare)
    metrics = json.loads((bare / "metrics.json").read_text())
    (bare / "metrics.json").write_text(json.dumps({**metrics, "seconds_per_epoch": None}))
    refused([result / "s1", bare], "lacks seconds_per_epoch")
    (bare / "metrics.json").write_text(json.dumps({**metrics, "inputs": []}))
    refused([result / "s1", bare], "records no input files")
    assert not list(tmp_path.glob(".*gathering"))
    into.mkdir()
    fails_with(capsys, gather.main([str(result / "s1"), str(result / "s2"), "--into",
                                    str(into)]), "exists; give a new folder")


def test_a_setting_only_one_version_knows_is_not_a_difference_and_other_code_is_said(
        runs, tmp_path, capsys):
    _, result = runs
    newer = tmp_path / "newer"  # seed 2 as a later version writes it: one more setting,
    shutil.copytree(result / "s2", newer)  # trained on another commit
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "a_later_setting": True}))
    env = newer / environment.FILE
    env.write_text(env.read_text().replace('"code": ', '"code": "f00d", "was": '))
    into = tmp_path / "into"
    assert gather.main([str(result / "s1"), str(newer), "--into", str(into), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "note: the seeds trained on different code" in err and "f00d" in err
    assert json.loads((into / gather.GATHERED_FILE).read_text())["code"]["seed2"] == "f00d"
