"""compare.py --test: paired significance tests on per_user.npz files fabricated here (the
p-values are scipy's on the arrays paired by hand, Holm and the seed means by hand, every
refusal one line), and end to end on two short real runs once training writes the file."""
from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import compare
from runs import paired_runs, significance
from runs.significance import Outcome, Row
from conftest import fails_with, run_main, synthetic_rows, write_split_folder

KS = (5, 10, 15, 20)
BLOBS = {"train_augment": "a1" * 20, "validation": "b2" * 20, "test": "c3" * 20,
         "train_original": "d4" * 20}


def inputs(**blobs) -> list[dict]:
    """config.json's input records of the split files (``blobs`` override a role's blob)."""
    return [{"role": role, "path": f"Synth/Synth_{role}.csv", "bytes": 100,
             "git_blob": blobs.get(role, blob), "published": False, "in_data_dir": True}
            for role, blob in BLOBS.items()]


def write_per_user(run_dir: Path, ids: list[str], values: dict, order=None, model="lightgcn"):
    """per_user.npz as training writes it: ``ids`` the test users' original ids, ``values``
    metric@k -> one value per id; ``order``: the user index of each id (default 0, 1, ...),
    user index len(ids) is a user without test items (not in test.users)."""
    order = list(range(len(ids))) if order is None else list(order)
    user_ids = np.empty(len(ids) + 1, dtype=object)
    user_ids[order] = ids
    user_ids[len(ids)] = "no-test-items"
    rank = np.argsort(order)  # test.users ascending
    arrays = {"user_ids": user_ids.astype(str),
              "meta": np.array(json.dumps({"model": model, "best_epoch": 3, "ks": list(KS),
                                           "splits": ["validation", "test"]}))}
    for split in ("validation", "test"):
        arrays[f"{split}.users"] = np.asarray(order, dtype=np.int64)[rank]
        arrays[f"{split}.num_relevant"] = np.full(len(ids), 2, dtype=np.int64)
        for name, v in values.items():
            arrays[f"{split}.{name}"] = np.asarray(v, dtype=np.float64)[rank]
    np.savez(run_dir / "per_user.npz", **arrays)


def fake_run(folder: Path, per_seed: dict, ids=None, model="lightgcn", multi=None,
             orders=None, **blobs) -> Path:
    """A run folder (one seed) or a multi-seed run folder (seeds.json, summary.json,
    seed<S>/) with config.json, metrics.json and per_user.npz; per_seed: seed -> {metric@k:
    per-user values}."""
    multi = len(per_seed) > 1 if multi is None else multi
    seeds = sorted(per_seed)
    if multi:
        folder.mkdir(parents=True)
        (folder / "seeds.json").write_text(json.dumps({"dataset": "Synth", "model": model,
                                                       "seeds": seeds}))
        (folder / "summary.json").write_text(json.dumps({"seeds": seeds, "num_seeds": len(seeds),
                                                         "runs": [f"seed{s}" for s in seeds]}))
    for seed in seeds:
        run_dir = folder / f"seed{seed}" if multi else folder
        run_dir.mkdir(parents=True)
        values = per_seed[seed]
        n = len(next(iter(values.values())))
        config = {"dataset": "Synth", "model": model, "random_seed": seed, "top_k": list(KS),
                  "inputs": inputs(**blobs)}
        (run_dir / "config.json").write_text(json.dumps(config))
        metrics = {"dataset": "Synth", "best_epoch": 3, "last_epoch": 5, "best_validation": {},
                   "test": {m: float(np.mean(v)) for m, v in values.items()},
                   "inputs": config["inputs"]}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        write_per_user(run_dir, ids or [f"u{i}" for i in range(n)], values,
                       order=(orders or {}).get(seed), model=model)
    return folder


def rows_of(*folders, **options) -> list[Row]:
    runs = [paired_runs.load_run(f) for f in folders]
    for run, f in zip(runs, folders):
        run.label = f.name
    return significance.tested_rows(runs, **options)


RNG = np.random.default_rng(7)
A = RNG.uniform(0, 0.6, 40).round(3)
B = np.clip(A + RNG.normal(0.02, 0.05, 40), 0, 1).round(3)


def test_p_values_and_interval_are_scipys_on_users_paired_by_id(tmp_path):
    """The run's users sit at other indices in its per_user.npz: they are paired by id."""
    ids = [f"u{i}" for i in range(40)]
    base = fake_run(tmp_path / "base", {1: {"recall@20": A, "ndcg@20": A / 2}}, ids=ids)
    shuffled = RNG.permutation(40)
    run = fake_run(tmp_path / "run", {1: {"recall@20": B, "ndcg@20": B / 2}}, ids=ids,
                   orders={1: shuffled})
    row = rows_of(base, run, metrics=["recall@20"])[0]
    assert (row.base_mean, row.mean) == (pytest.approx(A.mean()), pytest.approx(B.mean()))
    assert row.tests["wilcoxon"].p == pytest.approx(stats.wilcoxon(B, A).pvalue, rel=1e-12)
    assert row.tests["t_users"].p == pytest.approx(stats.ttest_rel(B, A).pvalue, rel=1e-12)
    assert row.tests["t_seeds"].p is None and row.tests["t_seeds"].reason == "a single seed"
    rng = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    direct = stats.bootstrap((B, A), lambda x, y, axis: x.mean(axis) - y.mean(axis),
                             paired=True, vectorized=True, n_resamples=significance.RESAMPLES,
                             method="percentile", **{rng: np.random.default_rng(0)})
    assert row.ci == pytest.approx(tuple(direct.confidence_interval), abs=1e-12)
    assert row.ci[0] < row.diff < row.ci[1]
    # a single comparison: Holm leaves the p-value as it is
    assert row.tests["t_users"].holm == pytest.approx(row.tests["t_users"].p)


def test_identical_runs_show_no_difference(tmp_path):
    base = fake_run(tmp_path / "base", {1: {"recall@20": A, "ndcg@20": A}})
    same = fake_run(tmp_path / "same", {1: {"recall@20": A, "ndcg@20": A}})
    for row in rows_of(base, same):
        assert row.diff == 0 and row.ci == (0.0, 0.0)
        wilcoxon = row.tests["wilcoxon"]
        try:  # scipy's answer when no difference is > 0: p = 1, nan (its normal
            with warnings.catch_warnings():  # approximation) or a ValueError (older)
                warnings.simplefilter("ignore")
                expected = stats.wilcoxon(A, A).pvalue
        except ValueError:
            expected = float("nan")
        assert wilcoxon.p == expected if np.isfinite(expected) else wilcoxon.p is None
        assert not wilcoxon.significant
        assert row.tests["t_users"].p is None  # scipy's ttest_rel gives nan: 0 / 0
        assert row.tests["t_users"].reason == "no user's value differs"


def test_a_large_shift_is_significant_and_marked(tmp_path, capsys):
    shifted = np.clip(A + 0.2 + RNG.normal(0, 0.02, 40), 0, 1)
    base = fake_run(tmp_path / "base", {1: {"recall@20": A, "ndcg@20": A}})
    run = fake_run(tmp_path / "better", {1: {"recall@20": shifted, "ndcg@20": A}})
    assert compare.main(["--test", str(base), str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "baseline: lightgcn:base, 40 test users paired by user id, seeds 1"
    assert out[1].split()[:6] == ["metric", "baseline", "run", "diff", "95%", "CI"]
    recall = next(line for line in out if "recall@20" in line)
    assert recall.split()[:5] == ["lightgcn:better", "recall@20", f"{A.mean():.4f}",
                                  f"{shifted.mean():.4f}", f"{shifted.mean() - A.mean():+.4f}"]
    assert recall.count("*") == 2  # Wilcoxon and t over users; no t over seeds (one seed)
    assert "n/a" in recall.split()[-1]
    rows = rows_of(base, run)
    assert rows[0].tests["wilcoxon"].p < 1e-6 and rows[0].tests["t_users"].significant
    assert rows[1].tests["t_users"].p is None and "*" not in out[3]  # ndcg: no difference


def test_holm_by_hand():
    """p = 0.01, 0.04, 0.03 of three rows: sorted 0.01*3, 0.03*2, max(0.04*1, 0.06); a row
    without p-value is not in the family."""
    rows = []
    for p in (0.01, 0.04, 0.03, None):
        outcome = {t: Outcome(p, None if p else "a single seed") for t in significance.TESTS}
        rows.append(Row(None, "recall@20", 0.0, 0.0, None, outcome))
    significance.holm(rows, alpha=0.05)
    for test in significance.TESTS:
        adjusted = [row.tests[test].holm for row in rows]
        assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and adjusted[3] is None
        assert [row.tests[test].significant for row in rows] == [True, False, False, False]


def test_seed_means_by_hand(tmp_path):
    """Two seeds on each side (seed 2's users in another order): each user's value is the
    mean of its two seeds; the t-test over seeds pairs the seeds' means."""
    ids = [f"u{i}" for i in range(6)]
    base_seeds = {1: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 2: [1.0, 0.2, 0.0, 0.6, 0.4, 0.0]}
    run_seeds = {1: [0.5, 0.5, 0.5, 0.9, 0.9, 1.0], 2: [0.7, 0.3, 0.1, 0.9, 0.7, 0.2]}
    base = fake_run(tmp_path / "base", {s: {"recall@20": v} for s, v in base_seeds.items()},
                    ids=ids)
    run = fake_run(tmp_path / "run", {s: {"recall@20": v} for s, v in run_seeds.items()},
                   ids=ids, orders={2: [5, 3, 1, 0, 2, 4]})
    before = np.array([0.5, 0.2, 0.2, 0.6, 0.6, 0.5])  # (seed 1 + seed 2) / 2, by hand
    after = np.array([0.6, 0.4, 0.3, 0.9, 0.8, 0.6])
    row = rows_of(base, run, metrics=["recall@20"])[0]
    assert (row.base_mean, row.mean) == (pytest.approx(before.mean()), pytest.approx(after.mean()))
    assert row.tests["t_users"].p == pytest.approx(stats.ttest_rel(after, before).pvalue)
    assert row.tests["wilcoxon"].p == pytest.approx(stats.wilcoxon(after, before).pvalue)
    seed_means = ([np.mean(run_seeds[1]), np.mean(run_seeds[2])],
                  [np.mean(base_seeds[1]), np.mean(base_seeds[2])])
    assert row.tests["t_seeds"].p == pytest.approx(stats.ttest_rel(*seed_means).pvalue)


def test_other_seeds_keep_the_user_tests_and_say_so(tmp_path, capsys):
    base = fake_run(tmp_path / "base", {1: {"recall@20": A}, 2: {"recall@20": B}})
    run = fake_run(tmp_path / "run", {1: {"recall@20": B}, 3: {"recall@20": B * 0.5}})
    row = rows_of(base, run, metrics=["recall@20"])[0]
    assert row.tests["t_seeds"].reason == "other seeds than the baseline (1 3 vs 1 2)"
    assert row.tests["t_users"].p == pytest.approx(  # each side's mean over its own seeds
        stats.ttest_rel(B * 0.75, (A + B) / 2).pvalue)
    assert compare.main(["--test", str(base), str(run), "--metrics", "recall@20"]) == 0
    out = capsys.readouterr().out
    assert "t seeds n/a for lightgcn:run (2 seeds): other seeds than the baseline" in out
    assert "note: lightgcn:run (2 seeds) has other seeds than the baseline" in out


def test_metric_names_come_from_the_file(tmp_path, capsys):
    """A metric the table does not know yet (hr@10) is tested when both files have it."""
    base = fake_run(tmp_path / "base", {1: {"recall@10": A, "hr@10": (A > 0.3) * 1.0}})
    run = fake_run(tmp_path / "run", {1: {"recall@10": B, "hr@10": (B > 0.2) * 1.0}})
    assert [r.metric for r in rows_of(base, run)] == ["recall@10"]  # no ndcg, no k = 20
    row = rows_of(base, run, metrics=["hr@10"])[0]
    assert row.tests["wilcoxon"].p == pytest.approx(
        stats.wilcoxon((B > 0.2) * 1.0, (A > 0.3) * 1.0).pvalue)
    assert compare.main(["--test", str(base), str(run), "--metrics", "ndcg@20"]) == 2
    assert "not in every run's per-user file (all have: hr@10, recall@10)" in \
        capsys.readouterr().err


@pytest.mark.parametrize("case, fragments", [
    ("test", ["did not read the same data",
              "test Synth_test.csv (fffffff) vs Synth_test.csv (c3c3c3c)"]),
    ("train", ["train Synth_train_augment.csv", "--other_train allows"]),
    ("users", ["different test users (1 only in lightgcn:run, 1 only in lightgcn:base)"]),
    ("missing", ["no per_user.npz", "train the run again"]),
    ("stale", ["per_user.npz does not match metrics.json (test recall@20: mean", "not this run's"]),
    ("log", ["needs run folders", "not a log file"]),
])
def test_refusals_are_one_line(tmp_path, capsys, case, fragments):
    base = fake_run(tmp_path / "base", {1: {"recall@20": A, "ndcg@20": A}})
    blobs = {"test": {"test": "f" * 40}, "train": {"train_augment": "e" * 40}}.get(case, {})
    ids = [f"u{i}" for i in range(39)] + ["other"] if case == "users" else None
    run = fake_run(tmp_path / "run", {1: {"recall@20": B, "ndcg@20": B}}, ids=ids, **blobs)
    if case == "missing":
        (run / "per_user.npz").unlink()
    if case == "stale":  # metrics.json of another epoch than per_user.npz
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["test"]["recall@20"] += 0.01
        (run / "metrics.json").write_text(json.dumps(metrics))
    if case == "log":
        (run / "train.log").write_text("a log\n")
        run = run / "train.log"
    fails_with(capsys, compare.main(["--test", str(base), str(run)]), *fragments)


def test_other_train_pairs_augmented_with_original_training_files(tmp_path, capsys):
    base = fake_run(tmp_path / "base", {1: {"recall@20": A, "ndcg@20": A}})
    run = fake_run(tmp_path / "run", {1: {"recall@20": B, "ndcg@20": B}},
                   train_augment="e" * 40)
    assert compare.main(["--test", str(base), str(run), "--other_train"]) == 0
    assert "note: lightgcn:run trained on other data (--other_train): Synth_train_augment.csv " \
           "(eeeeeee) vs baseline Synth_train_augment.csv (a1a1a1a)" in capsys.readouterr().out


def test_options_without_test_and_bad_options(tmp_path, capsys):
    base = fake_run(tmp_path / "base", {1: {"recall@20": A, "ndcg@20": A}})
    fails_with(capsys, compare.main([str(base), "--json", str(tmp_path / "t.json")]),
               "--json is an option of --test")
    fails_with(capsys, compare.main(["--test", str(base)]), "two runs or more")
    fails_with(capsys, compare.main(["--test", str(base), str(base), "--alpha", "5"]),
               "--alpha 5.0")
    fails_with(capsys, compare.main(["--test", str(base), str(base), "--json",
                                     str(tmp_path / "no" / "t.json")]), "does not exist")


def test_json_holds_the_table_numbers(tmp_path, capsys):
    base = fake_run(tmp_path / "base", {1: {"recall@20": A, "ndcg@20": A}, 2: {
        "recall@20": B, "ndcg@20": B}})
    runs = [fake_run(tmp_path / name, {1: {"recall@20": B + d, "ndcg@20": A + d},
                                       2: {"recall@20": A + d, "ndcg@20": B}})
            for name, d in (("run1", 0.01), ("run2", 0.03))]
    out = tmp_path / "tests.json"
    argv = ["--test", str(base), *map(str, runs), "--json", str(out), "--seed", "3"]
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["bootstrap"]["seed"] == 3 and saved["alpha"] == 0.05
    assert [(r["run"], r["metric"]) for r in saved["rows"]] == [
        (f"lightgcn:{n} (2 seeds)", m) for n in ("run1", "run2") for m in ("recall@20", "ndcg@20")]
    for row in saved["rows"]:
        assert row["diff"] == pytest.approx(row["mean"] - row["baseline_mean"])
        assert f"{row['diff']:+.4f}" in printed
        if row["t_seeds"]["p"] is not None:
            assert row["t_seeds"]["holm"] >= row["t_seeds"]["p"]
    assert saved["baseline"]["data"]["test"]["git_blob"] == BLOBS["test"]
    assert compare.main(argv) == 0 and capsys.readouterr().out == printed  # reproducible


def test_two_real_runs_end_to_end(tmp_path, capsys):
    """Two short runs through main.main on synthetic splits."""
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    base = ["--dataset", "Synth", "--data_dir", str(tmp_path / "data"), "--epochs", "2",
            "--batch_size", "64"]
    rc, result = run_main(["--model", "lightgcn", *base], tmp_path, "first")
    assert rc == 0
    first = result / "Synth" / "first"
    assert (first / paired_runs.PER_USER_FILE).is_file()
    rc, _ = run_main(["--model", "lightgcn", "--learning_rate", "0.01", *base], tmp_path,
                     "second")
    assert rc == 0
    second = result / "Synth" / "second"
    out = tmp_path / "tests.json"
    assert compare.main(["--test", str(first), str(second), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    for row in saved["rows"]:
        for folder, mean in ((first, row["baseline_mean"]), (second, row["mean"])):
            test = json.loads((folder / "metrics.json").read_text())["test"]
            assert mean == pytest.approx(test[row["metric"]], abs=1e-9)
    assert saved["users"] == 30 and len(saved["rows"]) == 2
    assert "lightgcn:second" in capsys.readouterr().out


def test_committed_ml100k_runs_pair(tmp_path, capsys):
    """The committed five-seed runs carry per_user.npz whose means are their metrics.json
    (checked by the pairing) and pair on the same published split."""
    results = Path(__file__).resolve().parents[1] / "results4comparison"
    out = tmp_path / "t.json"
    assert compare.main(["--test", str(results / "refine_plus/ML-100K_shared"),
                         str(results / "lightgcn/ML-100K_refined"), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    rows = {row["metric"]: row for row in saved["rows"]}
    for side, folder in (("baseline_mean", "refine_plus/ML-100K_shared"),
                         ("mean", "lightgcn/ML-100K_refined")):
        summary = json.loads((results / folder / "summary.json").read_text())
        for metric in ("recall@20", "ndcg@20"):  # every user has every seed: mean of means
            assert rows[metric][side] == pytest.approx(summary["test"][metric]["mean"], abs=1e-12)
    assert "938 test users" in capsys.readouterr().out
