"""The dislikes variant (data/dislikes.py, ``python dataloader.py dislikes``): hand-checked
counts per user and the rounding, determinism, both train files still row-aligned, refusals
(misaligned sources, an existing other folder, a name of the source's), variant.json, and a
short training run on the variant; ML-100K's counts where the real files are there."""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

import dataloader
from conftest import SHARED_DATASETS, fails_with, run_main, shared_dataset, write_split_folder
from data import checks, dislikes
from data.dislikes import DislikeRecipe
from data.provenance import git_blob_sha1, record_file
from data.registry import DATASETS
from data.schema import DataError
from data.splits import read_split
from recommenders import make_config

HEADER = "user_id:token,item_id:token,rating:float\n"
# user -> rows rated 1 or 2 in train_original, and how many of them 0.2 holds out
LOW = [0, 1, 2, 3, 8, 13, 4, 5, 7, 1, 2, 10]
HELD = [0, 0, 0, 1, 2, 3, 1, 1, 1, 0, 0, 2]


def source_rows(seed=0):
    """(train_original, train_augment, validation, test) rows: user u has 8 positives,
    LOW[u] rows rated 1/2 and two 3s, shuffled; train_augment is the same rows with some
    2/3 relabeled 0.5/4.5 (so a held-out 2 may be a 4.5 there)."""
    rng = random.Random(seed)
    original, valid, test = [], [], []
    for u, n_low in enumerate(LOW):
        items = rng.sample(range(40), 8 + n_low + 4)
        rows = ([(u, i, rng.choice([4, 5])) for i in items[:8]]
                + [(u, i, rng.choice([1, 2])) for i in items[8:8 + n_low]]
                + [(u, i, 3) for i in items[8 + n_low:10 + n_low]])
        rng.shuffle(rows)
        original += rows
        valid.append((u, items[-2], 5))
        test.append((u, items[-1], 4))
    augment = [(u, i, rng.choice([r, 0.5, 4.5]) if r in (2, 3) else r) for u, i, r in original]
    return original, augment, valid, test


def write_source(root: Path, name="Synth", seed=0, augment_rows=None) -> Path:
    original, augment, valid, test = source_rows(seed)
    write_split_folder(root, name, original, valid, test, augment="original")
    lines = "".join(f"{u},{i},{r}\n" for u, i, r in (augment_rows or augment))
    (root / name / f"{name}_train_augment.csv").write_text(HEADER + lines)
    return root


def derive(root, out_dir=None, **kw) -> Path:
    recipe = DislikeRecipe(**kw)
    return dislikes.derive(root, "Synth", recipe=recipe, out_dir=out_dir, log=lambda line: None)


def rows(path: Path) -> list[tuple[str, str, float]]:
    return [(u, i, float(r)) for u, i, r in
            (line.split(",") for line in path.read_text().splitlines()[1:])]


def test_rounding_is_half_up_in_exact_decimals():
    assert [DislikeRecipe(share=0.2).held_out(n) for n in range(14)] == \
        [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]
    assert [DislikeRecipe(share=0.5).held_out(n) for n in (1, 2, 3)] == [1, 1, 2]
    assert DislikeRecipe(share=0.1).held_out(15) == 2  # 0.1 * 15 is 1.5000000000000002
    assert DislikeRecipe(share=0.1).held_out(25) == 3  # exactly 2.5 -> up
    for bad in ({"share": 0}, {"share": 1.5}, {"max_rating": 4}, {"seed": -1}):
        with pytest.raises(DataError):
            DislikeRecipe(**bad)


def test_held_out_counts_per_user_and_only_low_original_ratings(tmp_path):
    folder = derive(write_source(tmp_path))
    source = rows(tmp_path / "Synth" / "Synth_train_original.csv")
    held = rows(folder / "Synth_dislikes_test_dislikes.csv")
    assert Counter(u for u, _, _ in held) == Counter(
        {str(u): k for u, k in enumerate(HELD) if k})
    assert all(r <= 2 for _, _, r in held) and set(held) <= set(source)
    # the original ratings, in source file order; the train files lose exactly these rows
    assert held == [row for row in source if row in set(held)]
    kept = rows(folder / "Synth_dislikes_train_original.csv")
    assert kept == [row for row in source if row not in set(held)]
    pairs = {(u, i) for u, i, _ in held}
    for role in ("train_original", "train_augment"):
        assert not pairs & {(u, i) for u, i, _ in rows(folder / f"Synth_dislikes_{role}.csv")}
    spec = json.loads((folder / "variant.json").read_text())
    assert spec["counts"]["held_out_rows"] == sum(HELD) == len(held)
    assert spec["counts"]["users_with_selectable_rows"] == sum(n > 0 for n in LOW)
    assert spec["counts"]["users_with_held_out_rows"] == sum(k > 0 for k in HELD)


def test_both_train_files_stay_row_aligned_and_the_rest_is_copied(tmp_path):
    folder = derive(write_source(tmp_path))
    variant = {role: folder / f"Synth_dislikes_{role}.csv"
               for role in ("train_original", "train_augment", "validation", "test")}
    frames = {role: read_split(path, is_train=role.startswith("train"))
              for role, path in variant.items()}
    checks.check_relabeling(frames["train_original"], frames["train_augment"],
                            variant["train_original"], variant["train_augment"])
    source_augment = (tmp_path / "Synth" / "Synth_train_augment.csv").read_text().splitlines()
    assert set(variant["train_augment"].read_text().splitlines()) <= set(source_augment)
    for role in ("validation", "test"):  # byte for byte
        assert variant[role].read_bytes() == \
            (tmp_path / "Synth" / f"Synth_{role}.csv").read_bytes()


def test_same_seed_same_bytes_another_seed_other_rows(tmp_path):
    root = write_source(tmp_path / "data")
    first, second = derive(root, tmp_path / "a"), derive(root, tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) and len(names) == 6
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    other = derive(root, tmp_path / "c", seed=7)
    assert (other / "Synth_dislikes_test_dislikes.csv").read_bytes() != \
        (first / "Synth_dislikes_test_dislikes.csv").read_bytes()
    # one seed: a larger share holds out a superset (each user's permutation is drawn once)
    larger = derive(root, tmp_path / "d", share=0.5)
    assert set(rows(first / "Synth_dislikes_test_dislikes.csv")) < \
        set(rows(larger / "Synth_dislikes_test_dislikes.csv"))


def test_misaligned_or_duplicated_sources_are_refused(tmp_path, capsys):
    original, augment, _, _ = source_rows()
    swapped = [augment[1], augment[0], *augment[2:]]
    root = write_source(tmp_path / "swapped", augment_rows=swapped)
    rc = dataloader.main(["dislikes", "--dataset", "Synth", "--data_dir", str(root)])
    fails_with(capsys, rc, "not row-aligned", "nothing written", "data row 1")
    root = write_source(tmp_path / "short", augment_rows=augment[:-1])
    rc = dataloader.main(["dislikes", "--dataset", "Synth", "--data_dir", str(root)])
    fails_with(capsys, rc, "not row-aligned")
    assert not (root / "Synth_dislikes").exists()
    root = write_source(tmp_path / "dup")
    path = root / "Synth" / "Synth_train_original.csv"
    path.write_text(path.read_text() + f"0,{original[0][1]},4\n")
    with pytest.raises(DataError, match="needs one per pair"):
        derive(root)


def test_an_existing_other_folder_and_names_of_published_data_are_refused(tmp_path, capsys):
    root = write_source(tmp_path)
    args = ["dislikes", "--dataset", "Synth", "--data_dir", str(root)]
    assert dataloader.main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in (root / "Synth_dislikes").iterdir()}
    assert dataloader.main(args) == 0  # the same variant again: nothing written
    assert "nothing written" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in (root / "Synth_dislikes").iterdir()}
    fails_with(capsys, dataloader.main([*args, "--seed", "1"]), "exists and is not this variant",
               "Synth_dislikes_train_original.csv")
    for name in ("Synth", "ML-100K", "../x"):
        fails_with(capsys, dataloader.main([*args, "--out_name", name]), "--out_name")
    fails_with(capsys, dataloader.main(["dislikes", "--dataset", "Synth_dislikes",
                                        "--data_dir", str(root)]), "already a variant")
    (root / "Empty").mkdir()
    assert dataloader.main([*args, "--out_name", "Empty"]) == 0  # an empty folder is filled


def test_variant_json_records_recipe_sources_and_files(tmp_path):
    root = write_source(tmp_path)
    folder = derive(root, max_rating=1, share=0.5, seed=3)
    text = (folder / "variant.json").read_text()
    spec = json.loads(text)
    assert str(tmp_path) not in text and spec["published"] is False
    assert spec["variant"] == "dislikes_holdout" and spec["derived_from"] == "Synth"
    assert spec["parameters"] == {"max_rating": 1.0, "share": 0.5, "seed": 3}
    assert spec["made_by"].endswith("--max_rating 1 --share 0.5 --seed 3")
    for role in ("train_original", "train_augment", "validation", "test"):
        path = root / "Synth" / f"Synth_{role}.csv"
        assert spec["sources"][role] == {
            "path": f"Synth/Synth_{role}.csv", "bytes": path.stat().st_size,
            "sha1": hashlib.sha1(path.read_bytes()).hexdigest(),
            "git_blob": git_blob_sha1(path), "published": False}
    assert spec["files"] == {p.name: git_blob_sha1(p) for p in folder.iterdir()
                             if p.name != "variant.json"}
    assert set(spec["counts"]["held_out_by_original_rating"]) == {"1"}
    assert all(r == 1 for _, _, r in rows(folder / "Synth_dislikes_test_dislikes.csv"))
    # --without_augment, or no train_augment in the source: none in the variant, and it
    # says so; the same rows are held out
    assert dataloader.main(["dislikes", "--dataset", "Synth", "--data_dir", str(root),
                            "--out_dir", str(tmp_path / "o"), "--without_augment"]) == 0
    (root / "Synth" / "Synth_train_augment.csv").unlink()
    for out in (tmp_path / "o", derive(root, tmp_path / "p").parent):
        spec = json.loads((out / "Synth_dislikes" / "variant.json").read_text())
        assert spec["sources"]["train_augment"] is None
        assert spec["recipe"]["held_out_of"] == ["train_original"]
        assert not (out / "Synth_dislikes" / "Synth_dislikes_train_augment.csv").exists()
    assert (tmp_path / "o" / "Synth_dislikes" / "variant.json").read_bytes() == \
        (tmp_path / "p" / "Synth_dislikes" / "variant.json").read_bytes()


def test_a_run_on_the_variant_says_it_is_not_published(tmp_path, capsys):
    root = write_source(tmp_path / "data")
    folder = derive(root)
    args = ["--dataset", "Synth_dislikes", "--data_dir", str(root), "--model", "lightgcn",
            "--epochs", "1"]
    rc, result = run_main(args, tmp_path)
    assert rc == 0
    log = (result / "Synth_dislikes" / "run" / "train.log").read_text()
    assert "input variant: Synth_dislikes/variant.json" in log
    assert "NOT published data" in log and "inputs: a variant derived by" in log
    assert "published)" not in log
    config = json.loads((result / "Synth_dislikes" / "run" / "config.json").read_text())
    assert "variant" in {r["role"] for r in config["inputs"]}
    path = folder / "Synth_dislikes_train_augment.csv"  # an edited file no longer matches
    path.write_text(path.read_text().replace(",4.5\n", ",4\n", 1))
    rc, _ = run_main(args, tmp_path, name="edited")
    fails_with(capsys, rc, "is not the file variant.json records", "derive it again")


def test_a_variant_has_its_source_defaults_and_item_file(tmp_path):
    from data.items import find_item_file
    folder = tmp_path / "ML-1M_dislikes"
    folder.mkdir()
    (folder / "variant.json").write_text(json.dumps({"files": {}, "derived_from": "ML-1M"}))
    config = make_config(model="refine", dataset="ML-1M_dislikes", data_dir=str(tmp_path))
    assert config.settings.r == 250 == make_config(model="refine", dataset="ML-1M").settings.r
    assert find_item_file("ML-1M_dislikes", str(tmp_path), None) == \
        tmp_path / "raw" / "ml-1m" / "ml-1m.item"
    record = record_file("variant", folder / "variant.json", tmp_path)
    assert not record.published and "NOT published" in record.header_line()


@shared_dataset("ML-100K")
def test_ml100k_variant_counts(tmp_path):
    log = []
    folder = dislikes.derive(SHARED_DATASETS, "ML-100K", out_dir=tmp_path, log=log.append)
    spec = json.loads((folder / "variant.json").read_text())
    counts = spec["counts"]
    print(log[-1])
    assert (counts["selectable_rows"], counts["users_with_selectable_rows"],
            counts["users_with_held_out_rows"], counts["held_out_rows"]) == (15164, 906, 779, 3030)
    assert counts["held_out_by_original_rating"] == {"1": 1005, "2": 2025}
    assert counts["held_out_by_train_augment_rating"] == {"0.5": 1010, "1": 1005, "2": 827,
                                                          "4.5": 188}
    assert all(s["published"] for s in spec["sources"].values())
    data = dataloader.load_dataset(tmp_path, "ML-100K_dislikes", warn=lambda line: None)
    records = [record_file(role, path, tmp_path) for role, path in data.files]
    assert [r.role for r in records][-2:] == ["variant", "test_dislikes"]
    assert not any(r.published for r in records)
    assert len(data.train) + len(data.neutral) == 79683 - 3030 == \
        counts["rows"]["train_augment"]["variant"]
    blobs = DATASETS["ML-100K"].blobs
    assert spec["files"]["ML-100K_dislikes_test.csv"] == blobs["test"]
    assert spec["files"]["ML-100K_dislikes_train_original.csv"] != blobs["train_original"]


def test_disliked_at_k_by_hand(tmp_path):
    """disliked@k = share of a user's held-out dislikes inside the test ranking's top-k
    (train-file rows masked), averaged over users with >= 1, recomputed here from best.pt."""
    import numpy as np

    from runs.evaluation import read_per_user
    from runs.trained import load_trained
    root = write_source(tmp_path / "data")
    folder = derive(root)
    rc, result = run_main(["--dataset", "Synth_dislikes", "--data_dir", str(root), "--model",
                           "lightgcn", "--epochs", "2", "--top_k", "3", "10"], tmp_path)
    assert rc == 0
    run = result / "Synth_dislikes" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    log = (run / "train.log").read_text()
    assert "input test_dislikes: Synth_dislikes/Synth_dislikes_test_dislikes.csv" in log
    assert f"Disliked@10: {metrics['test']['disliked@10']:.4f}" in log
    trained = load_trained(run, None, None)
    users, items = trained.model(trained.graphs.norm_adj)
    scores = (users @ items.t()).detach().numpy()
    uid = {u: i for i, u in enumerate(trained.data.user_ids)}
    iid = {v: i for i, v in enumerate(trained.data.item_ids)}
    for u, i, _ in rows(root / "Synth_dislikes" / "Synth_dislikes_train_augment.csv"):
        if u in uid and i in iid:  # every train-file row of T's users and items is masked
            scores[uid[u], iid[i]] = -np.inf
    held: dict = {}
    for u, i, _ in rows(folder / "Synth_dislikes_test_dislikes.csv"):
        if u in uid and i in iid:
            held.setdefault(uid[u], set()).add(iid[i])
    for k in (3, 10):
        shares = []
        for u, disliked in held.items():
            top = set(np.argsort(-scores[u], kind="stable")[:k].tolist())
            shares.append(len(top & disliked) / len(disliked))
        assert metrics["test"][f"disliked@{k}"] == pytest.approx(np.mean(shares), abs=1e-12)
    _, meta, splits = read_per_user(run / "per_user.npz")
    assert meta["splits"][-1] == "test_dislikes"
    assert sorted(splits["test_dislikes"]["users"].tolist()) == sorted(held)
    assert splits["test_dislikes"]["disliked@10"].mean() == \
        pytest.approx(metrics["test"]["disliked@10"], abs=1e-12)


def test_compare_tests_disliked_at_k_on_the_users_with_held_out_dislikes(tmp_path, capsys):
    """compare.py --test --split test_dislikes pairs the users with held-out dislikes and
    tests disliked@20 by default; a run without a dislikes split is refused in one line."""
    import compare
    root = write_source(tmp_path / "data")
    derive(root)
    runs = []
    for name, model in (("base", "lightgcn"), ("other", "refine_plus")):
        rc, result = run_main(["--dataset", "Synth_dislikes", "--data_dir", str(root),
                               "--model", model, "--epochs", "2"], tmp_path, name=name)
        assert rc == 0
        runs.append(result / "Synth_dislikes" / name)
    out = tmp_path / "t.json"
    assert compare.main(["--test", *map(str, runs), "--split", "test_dislikes",
                         "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    held_users = {u for u, _, _ in rows(root / "Synth_dislikes" /
                                         "Synth_dislikes_test_dislikes.csv")}
    assert saved["split"] == "test_dislikes" and saved["users"] == len(held_users)
    assert f"{len(held_users)} test_dislikes users" in printed
    [row] = saved["rows"]
    assert row["metric"] == "disliked@20"
    for side, run in (("baseline_mean", runs[0]), ("mean", runs[1])):
        metrics = json.loads((run / "metrics.json").read_text())
        assert row[side] == pytest.approx(metrics["test"]["disliked@20"], abs=1e-12)
    plain = write_source(tmp_path / "plain")
    rc, result = run_main(["--dataset", "Synth", "--data_dir", str(plain), "--model",
                           "lightgcn", "--epochs", "1"], tmp_path, name="plain")
    assert rc == 0
    fails_with(capsys, compare.main(["--test", str(result / "Synth" / "plain"), str(runs[1]),
                                     "--split", "test_dislikes"]),
               "no test_dislikes split", "dislikes variant")


def test_compare_table_shows_disliked_rows_of_a_run(tmp_path, capsys):
    import compare
    root = write_source(tmp_path / "data")
    derive(root)
    rc, result = run_main(["--dataset", "Synth_dislikes", "--data_dir", str(root), "--model",
                           "lightgcn", "--epochs", "1"], tmp_path)
    assert rc == 0
    run = result / "Synth_dislikes" / "run"
    value = json.loads((run / "metrics.json").read_text())["test"]["disliked@20"]
    assert compare.main([str(run)]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("test disliked@20")]
    assert line.split()[-1] == f"{value:.4f}"
