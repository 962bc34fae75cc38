"""tune.py: Optuna TPE search on validation Recall@20 with pruning, search spaces declared by
each model, trials that never read the test split, several worker processes on one study
(SQLite; PostgreSQL in tests/test_tune_postgres.py), five seeds of the best on test."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest

import tune
from runs import tuning
from recommenders import MODELS, make_config
from runs.config import GENERAL_FIELDS
from tests.conftest import REPO, fails_with, synthetic_rows, write_split_folder

TINY = ["--model", "lightgcn", "--dataset", "Synth", "--epochs", "2", "--top_k", "5", "20",
        "--threads", "1", "--no_download", "--quiet", "--embedding_dim", "8"]


def synth(tmp_path):
    return write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())


def tiny(tmp_path, *more):
    return [*TINY, "--data_dir", str(tmp_path / "data"), "--result_dir",
            str(tmp_path / "result"), *more]


@pytest.mark.parametrize("model", list(MODELS))
def test_each_model_declares_a_search_space_of_its_own_settings(model):
    space = MODELS[model].search_space
    assert "learning_rate" in space
    names = {f for f in MODELS[model].settings.__dataclass_fields__} | set(GENERAL_FIELDS)
    assert set(space) <= names
    defaults = tuning.default_point(model, "ML-100K")  # trial 0 of every study
    for name, (kind, low, high, *_) in space.items():
        assert low <= defaults[name] <= high, name
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):  # every sampled point is a valid configuration
        params = tuning.sample(study.ask(), space)
        make_config(model=model, **params)


def test_trials_never_read_the_test_split(tmp_path, capsys):
    data = synth(tmp_path)
    test_file = data / "Synth" / "Synth_test.csv"
    kept = test_file.read_bytes()
    test_file.unlink()  # a trial that opened it would fail
    assert tune.main(tiny(tmp_path, "--trials", "3", "--final_seeds", "0")) == 0
    study_dir = tmp_path / "result" / "Synth" / "lightgcn-tune"
    study = optuna.load_study(study_name="lightgcn-tune",
                              storage=f"sqlite:///{study_dir / 'study.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 3 and optuna.trial.TrialState.FAIL not in states
    for trial in study.trials:  # validation only: no test metrics anywhere
        run = study_dir / "trials" / f"trial{trial.number:04d}"
        assert (run / "epochs.jsonl").is_file() and not (run / "metrics.json").exists()
        assert list(trial.intermediate_values) == [1, 2]  # reported after each validation
        assert "ends after its last validation" in (run / "train.log").read_text()
    assert not test_file.exists()
    # the final seeds read test: back in place, they run on the best trial's settings
    test_file.write_bytes(kept)
    assert tune.main(tiny(tmp_path, "--trials", "3", "--final_seeds", "2")) == 0
    assert study.trials[0].params == tuning.default_point("lightgcn", "Synth")
    best = study.best_trial
    final = study_dir / f"best-trial{best.number:04d}"
    summary = json.loads((final / "summary.json").read_text())
    assert summary["num_seeds"] == 2 and "test" in summary
    seeds = json.loads((final / "seeds.json").read_text())
    assert seeds["study"] == {"name": "lightgcn-tune",
                              "storage": f"sqlite:///{study_dir / 'study.db'}",
                              "best_trial": best.number, "value": best.value,
                              "trials": 3}
    for name, value in best.params.items():
        assert seeds[name] == pytest.approx(value)
    assert len(optuna.load_study(study_name="lightgcn-tune",
                                 storage=f"sqlite:///{study_dir / 'study.db'}").trials) == 3


def test_pruner_stops_trials_after_a_validation(tmp_path):
    synth(tmp_path)
    pruner = optuna.pruners.ThresholdPruner(lower=2.0)  # recall <= 1: prune at once
    study = tuning.search(tiny(tmp_path, "--epochs", "3", "--trials", "2", "--final_seeds", "0"),
                        pruner=pruner)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [1] for t in study.trials)


def test_tuning_refuses_what_it_owns(tmp_path, capsys):
    synth(tmp_path)
    fails_with(capsys, tune.main(tiny(tmp_path, "--seeds", "1", "2")), "--seeds")
    fails_with(capsys, tune.main(tiny(tmp_path, "--trials", "0")), "--trials")


def start_worker(tmp_path, storage=None, trials=6):
    extra = ["--storage", storage] if storage else []
    return subprocess.Popen([sys.executable, "tune.py", *tiny(tmp_path, "--trials", str(trials),
                                                              "--final_seeds", "0", *extra)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def two_workers(tmp_path, storage=None, trials=6):
    """Two tune.py processes on one study; the study's trials with the pid of each worker."""
    workers = [start_worker(tmp_path, storage, trials) for _ in range(2)]
    for w in workers:
        out, _ = w.communicate(timeout=300)
        assert w.returncode == 0, out
    storage = storage or f"sqlite:///{tmp_path / 'result' / 'Synth' / 'lightgcn-tune' / 'study.db'}"
    study = optuna.load_study(study_name="lightgcn-tune", storage=storage)
    return study, {w.pid for w in workers}


def test_two_workers_share_one_sqlite_study(tmp_path):
    synth(tmp_path)
    study, pids = two_workers(tmp_path)
    done = [t for t in study.trials if t.state.is_finished()]
    assert 6 <= len(done) <= 7 and all(t.state != optuna.trial.TrialState.FAIL for t in done)
    assert {t.user_attrs["pid"] for t in done} == pids  # both processes ran trials
    assert len({t.number for t in done}) == len(done)


def test_recorded_storage_hides_the_password():
    assert tuning.shown_storage("postgresql+psycopg://ann:s3cret@db:5432/tune") == \
        "postgresql+psycopg://ann:***@db:5432/tune"


def load(tmp_path, name="lightgcn-tune"):
    db = tmp_path / "result" / "Synth" / name / "study.db"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def test_a_flag_given_fixed_is_held_fixed_not_searched(tmp_path):
    synth(tmp_path)  # the search space's learning rate silently replaced --learning_rate 0.05
    study = tuning.search(tiny(tmp_path, "--trials", "2", "--final_seeds", "0",
                               "--learning_rate", "0.05"))
    for trial in study.trials:
        assert "learning_rate" not in trial.params and "layers" in trial.params
        run = tmp_path / "result" / "Synth" / "lightgcn-tune" / "trials" / \
            f"trial{trial.number:04d}"
        assert json.loads((run / "config.json").read_text())["learning_rate"] == 0.05


def test_a_study_of_another_problem_is_refused(tmp_path, capsys):
    synth(tmp_path)
    assert tune.main(tiny(tmp_path, "--trials", "1", "--final_seeds", "0")) == 0
    assert load(tmp_path).user_attrs["problem"]["model"] == "lightgcn"
    # other epochs, another model, another fixed setting: trials that cannot be compared
    fails_with(capsys, tune.main(tiny(tmp_path, "--trials", "2", "--epochs", "3")),
               "lightgcn-tune", "epochs")
    fails_with(capsys, tune.main(tiny(tmp_path, "--trials", "2", "--model", "mixgcf",
                                      "--study", "lightgcn-tune")), "lightgcn-tune", "model")
    fails_with(capsys, tune.main(tiny(tmp_path, "--trials", "2", "--learning_rate", "0.01")),
               "lightgcn-tune", "learning_rate")
    assert len(load(tmp_path).trials) == 1
    assert tune.main(tiny(tmp_path, "--trials", "2", "--final_seeds", "0")) == 0  # the same


@pytest.mark.parametrize("storage", ["sqlite:///{tmp}", "sqlite:////proc/no/study.db",
                                     "not a url", "mysql://u@127.0.0.1/x",
                                     "postgresql+psycopg://u@127.0.0.1:1/x"])
def test_a_storage_that_cannot_open_is_one_line_at_once(tmp_path, capsys, storage):
    import time
    synth(tmp_path)
    start = time.monotonic()  # 13 s of retries (a traceback for the last two URLs)
    rc = tune.main(tiny(tmp_path, "--trials", "1", "--storage", storage.format(tmp=tmp_path)))
    fails_with(capsys, rc, "--storage")
    assert time.monotonic() - start < 5


def test_a_trial_killed_with_sigkill_is_failed_and_run_again(tmp_path):
    synth(tmp_path)
    args = [sys.executable, "tune.py", *tiny(tmp_path, "--trials", "2", "--final_seeds", "0",
                                             "--heartbeat", "1")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run(args, cwd=REPO, env={**env, "REFINE_CRASH_AT": "epochs_jsonl:1"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    [trial] = load(tmp_path).trials
    assert trial.state == optuna.trial.TrialState.RUNNING  # RUNNING forever, before
    import time
    time.sleep(3)  # past the grace period (2 heartbeats)
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = load(tmp_path).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and done[0].params == trials[0].params  # its settings run again


def test_a_negative_warmup_or_heartbeat_is_one_line(tmp_path, capsys):
    synth(tmp_path)  # Optuna's ValueError traceback, after the study folder was made
    fails_with(capsys, tune.main(tiny(tmp_path, "--warmup_epochs", "-1")), "--warmup_epochs")
    fails_with(capsys, tune.main(tiny(tmp_path, "--heartbeat", "0")), "--heartbeat")
    assert not (tmp_path / "result").exists()


def test_a_search_space_given_all_fixed_is_refused(tmp_path, capsys):
    synth(tmp_path)  # every trial was the same run
    fixed = [f"--{name}={tuning.default_point('lightgcn', 'Synth')[name]}"
             for name in MODELS["lightgcn"].search_space]
    fails_with(capsys, tune.main(tiny(tmp_path, *fixed)), "nothing to search")


def test_running_the_final_seeds_again_runs_nothing_again(tmp_path):
    synth(tmp_path)
    args = tiny(tmp_path, "--trials", "1", "--final_seeds", "2")
    assert tune.main(args) == 0
    [final] = (tmp_path / "result" / "Synth" / "lightgcn-tune").glob("best-trial*")
    stamps = {p: p.stat().st_mtime_ns for p in final.glob("seed*/*")}
    assert tune.main(args) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in final.glob("seed*/*")}
    assert json.loads((final / "seeds.json").read_text())["study"]["trials"] == 1
