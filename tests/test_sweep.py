"""sweep.py: an experiment file's grid as a queue of ordinary run folders named by a hash of
their settings and inputs; finished cells skipped, interrupted ones resumed (also after
kill -9 of the sweep); one table of mean ± std per cell group at the end."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from runs import environment, sweep
from tests.conftest import REPO, fails_with, synthetic_rows, write_split_folder


def experiment(tmp_path, result, grid="model: [lightgcn]", seeds="[1, 2, 3]", extra=""):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    path = tmp_path / "tiny.yaml"
    path.write_text(f"name: tiny\nresult_dir: {result}\nseeds: {seeds}\n"
                    f"settings:\n  dataset: Synth\n  data_dir: {tmp_path / 'data'}\n"
                    f"  epochs: 3\n  top_k: [5, 20]\n  embedding_dim: 8\n  no_download: true\n"
                    f"{extra}grid:\n  {grid}\n")
    return str(path)


def run_sweep(exp, *more, env=None):
    return subprocess.run([sys.executable, str(REPO / "sweep.py"), exp, *more], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def cells(result):
    return sorted((result / "sweeps" / "tiny" / "Synth").iterdir())


def epochs_logged(cell):
    return [json.loads(line)["epoch"] for line in (cell / "epochs.jsonl").read_text().splitlines()]


def test_grid_runs_as_run_folders_and_a_table_per_group(tmp_path):
    result = tmp_path / "result"
    exp = experiment(tmp_path, result, grid="model: [lightgcn, mixgcf]", seeds="[1, 2]")
    done = run_sweep(exp, "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    folders = cells(result)
    assert len(folders) == 4
    for cell in folders:
        config = json.loads((cell / "config.json").read_text())
        assert re.fullmatch(rf"{config['model']}-s{config['random_seed']}-[0-9a-f]{{10}}",
                            cell.name)
        assert config["epochs"] == 3  # each worker its share of the cores:
        assert config["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    table = (result / "sweeps" / "tiny" / "results.txt").read_text().splitlines()
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {"lightgcn", "mixgcf"}
    records = json.loads((result / "sweeps" / "tiny" / "results.json").read_text())
    for record in records:  # the mean of the two seeds' own numbers
        values = [json.loads((REPO / f / "metrics.json").read_text())["test"]["recall@20"]
                  for f in record["folders"]]
        mean = record["summary"]["test"]["recall@20"]["mean"]
        assert mean == pytest.approx(sum(values) / 2)
        assert f"{mean:.4f} ±" in rows[record["cell"].split()[0]]
        assert record["code"] == [environment.code_version() or "unknown"]
    assert not any(line.startswith("note:") for line in table)  # all on today's code
    stamps = {c: (c / "metrics.json").stat().st_mtime_ns for c in folders}
    old = folders[0] / environment.FILE  # as if trained before the last commit
    old.write_text(old.read_text().replace('"code": ', '"code": "0123456789abcdef", "was": '))
    again = run_sweep(exp, "--workers", "2")
    assert again.returncode == 0 and "4 finished, 0 to run" in again.stdout
    assert stamps == {c: (c / "metrics.json").stat().st_mtime_ns for c in cells(result)}
    config = json.loads((folders[0] / "config.json").read_text())
    notes = [line for line in again.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith(f"note: {config['model']} Synth ")
    now = environment.code_version() or "unknown"
    assert f"trained on code 0123456789ab, {now[:12]}{now[40:]}, not {now[:12]}{now[40:]} " \
        in notes[0] and notes[0].endswith("(remove its folders to rerun)")
    assert sweep.code_versions([folders[1], tmp_path]) == sorted({now, "unknown"})  # no file
    (folders[1] / environment.FILE).write_text("{damaged\n")
    assert sweep.code_versions([folders[1]]) == ["unknown"]


def test_cell_names_follow_settings_and_input_bytes(tmp_path):
    exp = experiment(tmp_path, tmp_path / "r", extra="  learning_rate: 0.01\n")
    spec = sweep.read_experiment(exp)
    first = [c.name for c in sweep.make_cells(spec, exp, None)]
    assert len(set(first)) == 3
    spec["settings"]["threads"] = 2  # how fast, not what: the same cells
    assert [c.name for c in sweep.make_cells(spec, exp, None)] == first
    spec["settings"]["learning_rate"] = 0.02
    assert not set(c.name for c in sweep.make_cells(spec, exp, None)) & set(first)
    spec["settings"]["learning_rate"] = 0.01
    valid = tmp_path / "data" / "Synth" / "Synth_validation.csv"
    valid.write_text(valid.read_text() + "0,39,5\n")
    assert not set(c.name for c in sweep.make_cells(spec, exp, None)) & set(first)


def test_bad_experiment_files_are_one_line(tmp_path, capsys):
    import sweep as S
    exp = experiment(tmp_path, tmp_path / "r", extra="  path_name: x\n")
    fails_with(capsys, S.main([exp]), "path_name is set by the sweep")
    exp = experiment(tmp_path, tmp_path / "r", extra="  lambda1: 0.1\n")
    fails_with(capsys, S.main([exp]), "--lambda1 is a setting of refine_plus")
    (tmp_path / "bad.yaml").write_text("gird: {model: [lightgcn]}\n")
    fails_with(capsys, S.main([str(tmp_path / "bad.yaml")]), "unknown key 'gird'")


def test_sweep_killed_with_sigkill_finishes_every_cell_once_with_the_same_numbers(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    exp = experiment(tmp_path, killed)
    # the sweep kills itself (kill -9) when its first cell has finished, the second running
    out = run_sweep(exp, "--workers", "2", env={"REFINE_CRASH_AT": "sweep_cell:1"})
    assert out.returncode == -signal.SIGKILL, out.stdout + out.stderr
    time.sleep(2)  # its workers die with it (PR_SET_PDEATHSIG)
    before = {c.name: (c / "metrics.json").stat().st_mtime_ns for c in cells(killed)
              if (c / "metrics.json").is_file()}
    assert 1 <= len(before) < 3
    resumed = run_sweep(exp, "--workers", "2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(before)} finished, {3 - len(before)} to run" in resumed.stdout
    assert run_sweep(experiment(tmp_path, clean), "--workers", "2").returncode == 0
    assert [c.name for c in cells(killed)] == [c.name for c in cells(clean)]
    for k, c in zip(cells(killed), cells(clean)):
        assert epochs_logged(k) == [1, 2, 3]  # each epoch once
        if k.name in before:  # not run again
            assert (k / "metrics.json").stat().st_mtime_ns == before[k.name]
        mk, mc = (json.loads((f / "metrics.json").read_text()) for f in (k, c))
        assert mk["test"] == mc["test"] and mk["best_validation"] == mc["best_validation"]


def test_a_tune_section_makes_each_cell_a_study_then_its_seeds(tmp_path):
    result = tmp_path / "result"
    exp = experiment(tmp_path, result, seeds="[7]")
    with open(exp, "a") as f:
        f.write("tune: {trials: 2, final_seeds: 2}\n")
    done = run_sweep(exp)
    assert done.returncode == 0, done.stdout + done.stderr
    [cell] = cells(result)
    assert re.fullmatch(r"lightgcn-tuned-[0-9a-f]{10}", cell.name)
    [best] = cell.glob("best-trial*")
    assert json.loads((best / "seeds.json").read_text())["study"]["trials"] == 2
    assert sorted(p.name for p in best.glob("seed[0-9]*")) == ["seed7", "seed8"]
    row = (result / "sweeps" / "tiny" / "results.txt").read_text().splitlines()[1]
    assert row.split()[:3] == ["lightgcn", "Synth", "2"]
    again = run_sweep(exp)
    assert "1 finished, 0 to run" in again.stdout


def test_an_empty_experiment_is_refused_before_any_run(tmp_path, capsys, monkeypatch):
    import sweep as S
    monkeypatch.chdir(tmp_path)  # where the old code ran its cell: kept away from real data
    monkeypatch.setenv("REFINE_DATA_DIR", str(tmp_path / "no-data"))
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")  # ran one cell of every default (ML-100K, 400 epochs)
    fails_with(capsys, S.main([str(empty), "--workers", "1"]), "empty.yaml", "no cell")
    assert not (tmp_path / "result").exists()
    listed = tmp_path / "listed.yaml"
    listed.write_text("- {model: lightgcn}\n")
    fails_with(capsys, S.main([str(listed)]), "listed.yaml", "mapping")
    assert "--config" not in capsys.readouterr().err


def test_a_key_set_twice_across_seeds_grid_and_runs_is_refused(tmp_path, capsys):
    import sweep as S
    # seeds: [1] silently replaced a grid's random_seed (and a runs entry's or settings')
    exp = experiment(tmp_path, tmp_path / "r", grid="random_seed: [5, 6]", seeds="[1]")
    fails_with(capsys, S.main([exp]), "random_seed", "seeds")
    exp = experiment(tmp_path, tmp_path / "r", extra="  random_seed: 9\n")
    fails_with(capsys, S.main([exp]), "random_seed", "seeds")
    exp = experiment(tmp_path, tmp_path / "r")
    with open(exp, "a") as f:
        f.write("runs:\n  - {model: mixgcf}\n")  # the grid's lightgcn silently won
    fails_with(capsys, S.main([exp]), "model", "grid", "runs")
    assert not (tmp_path / "r").exists()


def test_workers_below_one_are_refused(tmp_path, capsys):
    import sweep as S
    exp = experiment(tmp_path, tmp_path / "r")
    fails_with(capsys, S.main([exp, "--workers", "0"]), "--workers")  # ran as 1
    fails_with(capsys, S.main([exp, "--workers", "-2"]), "--workers")
    assert not (tmp_path / "r").exists()


def test_more_workers_than_cells_share_the_cores_among_the_cells(tmp_path):
    result = tmp_path / "result"
    done = run_sweep(experiment(tmp_path, result, seeds="[1]"), "--workers", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    [cell] = cells(result)  # one cell: every core, not a quarter of them
    threads = json.loads((cell / "config.json").read_text())["threads"]
    assert threads == len(os.sched_getaffinity(0))


def test_the_tune_section_is_checked_before_any_cell_runs(tmp_path, capsys):
    import sweep as S
    for section, fragment in (("{trails: 2}", "trails"), ("{study: shared}", "study"),
                              ("{trials: many}", "--trials")):
        exp = experiment(tmp_path, tmp_path / "r", seeds="[7]")
        with open(exp, "a") as f:
            f.write(f"tune: {section}\n")
        fails_with(capsys, S.main([exp]), "tune", fragment)  # every cell failed, one by one
    assert not (tmp_path / "r").exists()


def test_an_edited_tune_section_is_another_cell(tmp_path):
    exp = experiment(tmp_path, tmp_path / "r", seeds="[7]")
    spec = sweep.read_experiment(exp)
    [few] = sweep.make_cells(spec, exp, {"trials": 2})
    [more] = sweep.make_cells(spec, exp, {"trials": 3})
    assert few.name != more.name  # the 2-trial study's table was reused for 3 trials


def test_a_damaged_cell_is_one_line_and_the_rest_of_the_table_stands(tmp_path):
    result = tmp_path / "result"
    exp = experiment(tmp_path, result, seeds="[1, 2]")
    assert run_sweep(exp).returncode == 0
    first = cells(result)[0]
    (first / "metrics.json").write_text("{bad")
    again = run_sweep(exp)
    assert again.returncode == 2, again.stdout + again.stderr
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert "metrics.json" in again.stderr and first.name in again.stderr
    rows = (result / "sweeps" / "tiny" / "results.txt").read_text().splitlines()
    assert rows[1].split()[:3] == ["lightgcn", "Synth", "1"]  # the other seed


def test_a_second_sweep_of_the_same_file_is_refused_while_one_runs(tmp_path):
    result = tmp_path / "result"
    exp = experiment(tmp_path, result, seeds="[1, 2]")
    barrier = tmp_path / "go"  # the first sweep's first cell waits at its run folder's claim
    first = subprocess.Popen([sys.executable, str(REPO / "sweep.py"), exp], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "REFINE_WAIT_AT": f"claim:{barrier}"})
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("go.*")) and time.time() < deadline:
            time.sleep(0.1)
        second = run_sweep(exp)  # its cells were 'in use' or 'exists': spurious failures
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert "another sweep" in second.stderr
    finally:
        barrier.touch()
        out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    assert "2 finished, 0 to run" in run_sweep(exp).stdout


def test_threads_given_in_the_file_are_kept(tmp_path):
    result = tmp_path / "result"  # the sweep's share of the cores silently replaced them
    exp = experiment(tmp_path, result, seeds="[1]", extra="  threads: 1\n")
    assert run_sweep(exp, "--workers", "1").returncode == 0
    [cell] = cells(result)
    assert json.loads((cell / "config.json").read_text())["threads"] == 1


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_committed_experiment_files_are_valid(path):
    """Every cell of a committed experiment resolves to a configuration (its keys are flags
    of its model, its values parse); a renamed flag would otherwise surface hours into it."""
    from recommenders import make_config
    from runs.flags import values_as_flags
    spec = sweep.read_experiment(str(path))
    values = sweep.cell_values(spec, str(path))
    configs = [make_config(**values_as_flags(v, str(path))).to_dict() for v in values]
    assert configs and all(c["model"] == v["model"] for c, v in zip(configs, values))
    assert len({json.dumps(c, sort_keys=True, default=str) for c in configs}) == len(configs)


def test_a_cell_written_twice_runs_once_and_is_said(tmp_path):
    result = tmp_path / "result"
    exp = experiment(tmp_path, result, grid="model: [lightgcn, lightgcn]", seeds="[1]")
    done = run_sweep(exp)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(cells(result)) == 1 and "1 cells: 0 finished, 1 to run" in done.stdout
    assert "note: 1 cell of the file repeats another (the same settings and inputs); " \
           "it runs once" in done.stdout
