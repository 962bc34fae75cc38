"""recommend.py on tiny trained runs: the top-k of one user and of every user against a hand
ranking of the exported embeddings (train-file rows masked), the known dislikes by hand,
the exported arrays against the model's output for several models, and the one-line
refusals (changed data, unknown user, no best.pt, a multi-seed folder without --seed)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import recommend
from conftest import (SHARED_DATASETS, SHARED_RAW, fails_with, run_main, shared_dataset,
                      synthetic_rows, write_synthetic_with_items)
from data.vectors import write_pair_vectors
from recommenders.base import build_eval_index
from runs.metrics import evaluate
from runs.trained import load_trained


def train_run(root: Path, model: str, *extra) -> tuple[Path, Path]:
    """(data folder, run folder) of a 2-epoch run of ``model`` on the synthetic data with
    titles ("Item i", genre Genre<i % 3>)."""
    data = write_synthetic_with_items(root / "data")
    rc, result = run_main(["--model", model, "--dataset", "Synth", "--data_dir", str(data),
                           "--epochs", "2", "--batch_size", "64", *extra], root, model)
    assert rc == 0
    return data, result / "Synth" / model


@pytest.fixture(scope="module")
def lightgcn(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("lightgcn"), "lightgcn")


def hand_scores(folder: Path) -> tuple[np.ndarray, list, list]:
    """(U x I scores in float64 from the exported arrays, user ids, item ids)."""
    users = np.load(folder / "user_embeddings.npy").astype(np.float64)
    items = np.load(folder / "item_embeddings.npy").astype(np.float64)
    read = lambda name: (folder / name).read_text().splitlines()  # noqa: E731
    return users @ items.T, read("user_ids.txt"), read("item_ids.txt")


def hand_top(scores, user_ids, item_ids, train: pd.DataFrame, user: str, k: int) -> list:
    """The user's k best items by hand: every train-file row masked, descending score."""
    row = scores[user_ids.index(user)].copy()
    for item in train.loc[train["user_id:token"] == user, "item_id:token"]:
        row[item_ids.index(item)] = -np.inf
    return [item_ids[j] for j in np.argsort(-row, kind="stable")[:k]]


def read_train(data: Path) -> pd.DataFrame:
    return pd.read_csv(data / "Synth" / "Synth_train_augment.csv", dtype=str)


def exported(run_dir: Path, folder: Path) -> Path:
    assert recommend.main(["--run", str(run_dir), "--export", str(folder)]) == 0
    return folder


def top_table(out: str) -> list[list[str]]:
    """The rows (rank, item, score, title...) of --user's list."""
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.split()[:2] == ["rank", "item"])
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(line.split(maxsplit=3))
    return rows


def test_user_top_k_equals_the_hand_ranking(lightgcn, tmp_path, capsys):
    data, run_dir = lightgcn
    scores, user_ids, item_ids = hand_scores(exported(run_dir, tmp_path / "emb"))
    train = read_train(data)
    capsys.readouterr()
    for user, k in (("3", 5), ("17", 20)):
        assert recommend.main(["--run", str(run_dir), "--user", user, "--k", str(k)]) == 0
        out = capsys.readouterr().out
        rows = top_table(out)
        masked = int((train["user_id:token"] == user).sum())
        assert [r[1] for r in rows] == hand_top(scores, user_ids, item_ids, train, user, k)
        assert [r[0] for r in rows] == [str(n) for n in range(1, k + 1)]
        j = [item_ids.index(r[1]) for r in rows]
        assert np.allclose([float(r[2]) for r in rows], scores[user_ids.index(user), j],
                           atol=1e-4)
        assert all(r[3] == f"Item {r[1]} (Genre{int(r[1]) % 3})" for r in rows)
        assert f"its {masked} train-file rows are masked" in out
        assert "no titles" not in out


def test_without_titles_ids_only_and_said_once(lightgcn, tmp_path, capsys):
    data, run_dir = lightgcn
    assert recommend.main(["--run", str(run_dir), "--user", "3", "--item_file",
                           str(data / "Synth" / "Synth.item"), "--k", "3"]) == 0
    assert "Item " in capsys.readouterr().out
    bare = tmp_path / "bare"
    shutil.copytree(data, bare)
    (bare / "Synth" / "Synth.item").unlink()
    assert recommend.main(["--run", str(run_dir), "--data_dir", str(bare), "--user", "3",
                           "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("no titles, item ids only") == 1 and "Item " not in out
    assert all(len(r) == 3 for r in top_table(out))  # rank, item, score


def test_dislikes_by_hand(lightgcn, tmp_path, capsys):
    data, run_dir = lightgcn
    scores, user_ids, item_ids = hand_scores(exported(run_dir, tmp_path / "emb"))
    user = "4"
    train = read_train(data)
    mine = train[train["user_id:token"] == user]
    low = mine[mine["rating:float"].astype(float) <= 1]
    row, seen = scores[user_ids.index(user)], set(mine["item_id:token"])
    assert recommend.main(["--run", str(run_dir), "--user", user, "--k", "5"]) == 0
    out = capsys.readouterr().out
    top = [r[1] for r in top_table(out)]
    assert "held out: no Synth_test_dislikes.csv beside the split files" in out
    section = out[out.index("train file, rating <= 1"):].splitlines()[2:2 + len(low)]
    by_item = {ln.split()[0]: ln.split() for ln in section}
    for item, rating in zip(low["item_id:token"], low["rating:float"]):
        rank = int((row > row[item_ids.index(item)]).sum()) + 1  # among all items
        assert by_item[item][1] == f"{float(rating):g}" and by_item[item][3] == str(rank)
    assert [int(r[3]) for r in by_item.values()] == sorted(int(r[3]) for r in by_item.values())
    assert f"train file, rating <= 1: {len(low)}," in out
    # a held-out dislike file: two unmasked items (the user's best and another), a masked
    # one and an item the run does not know. The file is an input of the runs that read it:
    # the same run again with it (training never reads it: the same weights)
    open_items = [i for i in item_ids if i not in seen]
    held = [top[0], open_items[-1], sorted(seen)[0], "999"]
    copy = tmp_path / "with_dislikes"
    shutil.copytree(data, copy)
    (copy / "Synth" / "Synth_test_dislikes.csv").write_text(
        "user_id:token,item_id:token,rating:float\n" + "".join(f"{user},{i},1\n" for i in held)
        + "5,0,2\n")
    rc, result = run_main(["--model", "lightgcn", "--dataset", "Synth", "--data_dir", str(copy),
                           "--epochs", "2", "--batch_size", "64"], tmp_path, "again")
    assert rc == 0
    capsys.readouterr()
    assert recommend.main(["--run", str(result / "Synth" / "again"), "--user", user,
                           "--k", "5"]) == 0
    out = capsys.readouterr().out
    open_row = np.array([row[item_ids.index(i)] for i in open_items])
    lines = {ln.split()[0]: ln for ln in out.splitlines()[-4:]}
    for item in held[:2]:
        rank = int((open_row > row[item_ids.index(item)]).sum()) + 1
        inside = "yes" if item in top else "no (kept out)"
        assert lines[item].split()[3:5] == [str(rank), inside.split()[0]]
    assert "masked (a training row)" in lines[held[2]]
    assert "not an item of the run" in lines["999"]
    kept = int(held[1] not in top)
    assert f"held out, Synth_test_dislikes.csv: 4; rank among the {len(open_items)} unmasked " \
           f"items: {kept} of 4 kept out of the top 5" in out


def test_all_users_csv(lightgcn, tmp_path, capsys):
    data, run_dir = lightgcn
    scores, user_ids, item_ids = hand_scores(exported(run_dir, tmp_path / "emb"))
    train = read_train(data)
    out = tmp_path / "sub" / "top.csv"
    assert recommend.main(["--run", str(run_dir), "--all", "--out", str(out), "--k", "7"]) == 0
    assert "wrote" in capsys.readouterr().out
    table = pd.read_csv(out, dtype=str)
    assert list(table.columns) == ["user_id", "rank", "item_id", "score"]
    assert list(pd.unique(table["user_id"])) == user_ids  # every user of T, index order
    for user, rows in table.groupby("user_id", sort=False):
        assert rows["rank"].tolist() == [str(n) for n in range(1, 8)]
        assert rows["item_id"].tolist() == hand_top(scores, user_ids, item_ids, train, user, 7)
        j = [item_ids.index(i) for i in rows["item_id"]]
        assert np.allclose(rows["score"].astype(float), scores[user_ids.index(user), j],
                           rtol=1e-5, atol=1e-5)
    assert not [p for p in out.parent.iterdir() if p.name != "top.csv"]  # no temp file left


def write_vectors(path: Path, seed: int = 0) -> str:
    """HNLMRec's vector file: a random 8-d vector for every positive training pair."""
    pairs = [(str(u), str(i)) for u, i, r in synthetic_rows()[0] if r >= 4]
    write_pair_vectors(path, [u for u, _ in pairs], [i for _, i in pairs],
                       np.random.default_rng(seed).normal(size=(len(pairs), 8)), {"by": "test"})
    return str(path)


@pytest.mark.parametrize("model,extra", [
    ("refine_plus", ()), ("pngnn", ()), ("siren", ()), ("mixgcf", ()),
    ("hnlmrec", ("--negative_file", "VEC")),
    ("pngnn", ("--augment_file", "AUG", "--augment_mode", "edges")),
], ids=["refine_plus", "pngnn", "siren", "mixgcf", "hnlmrec", "pngnn-edges"])
def test_export_equals_the_model_output(tmp_path, model, extra):
    if "VEC" in extra:
        extra = ("--negative_file", write_vectors(tmp_path / "vec.npz"))
    if "AUG" in extra:  # an LLM augmentation's edges change the graph: the loaded model sees them
        rows = synthetic_rows()[0]
        own = {(u, i) for u, i, _ in rows}
        aug = tmp_path / "aug.csv"
        aug.write_text("user_id:token,pos_item_id:token,neg_item_id:token\n" + "".join(
            f"{u},{a},{b}\n" for u in range(5)
            for a, b in [[i for i in range(30, 40) if (u, i) not in own][:2]]))
        extra = tuple(str(aug) if x == "AUG" else x for x in extra)
    data, run_dir = train_run(tmp_path, model, *extra)
    folder = exported(run_dir, tmp_path / "emb")
    trained = load_trained(run_dir, None, None)
    with torch.no_grad():
        e_users, e_items = trained.model(trained.graphs.norm_adj)
    assert np.array_equal(np.load(folder / "user_embeddings.npy"), e_users.numpy())
    assert np.array_equal(np.load(folder / "item_embeddings.npy"), e_items.numpy())
    assert np.load(folder / "user_embeddings.npy").dtype == np.float32
    assert (folder / "user_ids.txt").read_text().split() == list(trained.data.user_ids)
    assert (folder / "item_ids.txt").read_text().split() == list(trained.data.item_ids)
    about = json.loads((folder / "about.json").read_text())
    best = torch.load(run_dir / "best.pt", weights_only=False)
    assert about["model"] == model and about["best_epoch"] == best["epoch"]
    assert (about["users"], about["items"], about["dim"]) == (*e_users.shape[:1],
                                                             e_items.shape[0], e_users.shape[1])
    saved = json.loads((run_dir / "config.json").read_text())["inputs"]
    assert {r["role"]: r["git_blob"] for r in about["inputs"]} == \
           {r["role"]: r["git_blob"] for r in saved}
    # the arrays are the trained model: they give the run's own test numbers again
    test = evaluate(torch.from_numpy(np.load(folder / "user_embeddings.npy")),
                    torch.from_numpy(np.load(folder / "item_embeddings.npy")),
                    trained.graphs.seen_by_user,
                    build_eval_index(trained.data, "cpu").test_by_user, (5, 20))
    saved_test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert test == pytest.approx({k: saved_test[k] for k in test}, abs=1e-9)
    if "--augment_file" in extra:
        assert "augment_file" in {r["role"] for r in about["inputs"]}
        assert len(trained.data.train) > sum(r <= 1 or r >= 4 for *_, r in synthetic_rows()[0])


def test_changed_data_is_refused_naming_the_file(lightgcn, tmp_path, capsys):
    data, run_dir = lightgcn
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    assert recommend.main(["--run", str(run_dir), "--data_dir", str(moved), "--user", "3"]) == 0
    capsys.readouterr()
    path = moved / "Synth" / "Synth_test.csv"
    text = path.read_text()
    path.write_text(text.replace(",4\n", ",5\n", 1))  # one byte, still a valid split
    rc = recommend.main(["--run", str(run_dir), "--data_dir", str(moved), "--all", "--out",
                         str(tmp_path / "x.csv")])
    fails_with(capsys, rc, "Synth_test.csv changed since the run started")
    assert not (tmp_path / "x.csv").exists()


def test_a_changed_or_missing_model_input_is_refused(tmp_path, capsys):
    """A file only the model's sampling read (HNLMRec's vectors) is checked too."""
    vectors = tmp_path / "vec.npz"
    data, run_dir = train_run(tmp_path, "hnlmrec", "--negative_file", write_vectors(vectors))
    write_vectors(vectors, seed=1)
    fails_with(capsys, recommend.main(["--run", str(run_dir), "--user", "3"]),
               "vec.npz changed since the run started")
    vectors.unlink()
    fails_with(capsys, recommend.main(["--run", str(run_dir), "--user", "3"]),
               "(its negative_file) is missing")


def test_one_line_refusals(lightgcn, tmp_path, capsys):
    data, run_dir = lightgcn
    fails_with(capsys, recommend.main(["--run", str(run_dir), "--user", "nobody"]),
               "--user nobody: not a user of the run's training data")
    no_best = tmp_path / "no_best"
    shutil.copytree(run_dir, no_best)
    (no_best / "best.pt").unlink()
    fails_with(capsys, recommend.main(["--run", str(no_best), "--user", "3"]), "no best.pt")
    fails_with(capsys, recommend.main(["--run", str(tmp_path / "none"), "--user", "3"]),
               "no such folder")
    fails_with(capsys, recommend.main(["--run", str(run_dir), "--all"]), "--all needs --out")
    fails_with(capsys, recommend.main(["--run", str(run_dir), "--user", "3", "--k", "0"]),
               "--k must be >= 1")
    fails_with(capsys, recommend.main(["--run", str(run_dir), "--user", "3", "--item_file",
                                       str(tmp_path / "x.item")]), "--item_file")


def test_a_multi_seed_folder_needs_a_seed(lightgcn, tmp_path, capsys):
    data, run_dir = lightgcn
    multi = tmp_path / "multi"
    for seed in (2024, 2025):
        shutil.copytree(run_dir, multi / f"seed{seed}")
    (multi / "seeds.json").write_text("{}")
    fails_with(capsys, recommend.main(["--run", str(multi), "--user", "3"]),
               "multi-seed run: pick one with --seed S (seeds: 2024, 2025)")
    fails_with(capsys, recommend.main(["--run", str(multi), "--seed", "7", "--user", "3"]),
               "--seed 7: ")
    fails_with(capsys, recommend.main(["--run", str(run_dir), "--seed", "7", "--user", "3"]),
               "a single run")
    assert recommend.main(["--run", str(multi), "--seed", "2025", "--user", "3"]) == 0
    assert "seed2025" in capsys.readouterr().out


@shared_dataset("ML-100K")
@pytest.mark.skipif(not (SHARED_RAW / "ml-100k" / "ml-100k.item").is_file(),
                    reason="the raw ml-100k.item (titles) is not present")
def test_ml100k_with_titles(tmp_path, capsys):
    rc, result = run_main(["--model", "lightgcn", "--dataset", "ML-100K", "--data_dir",
                           str(SHARED_DATASETS), "--epochs", "1"], tmp_path, "ml")
    assert rc == 0
    capsys.readouterr()
    assert recommend.main(["--run", str(result / "ML-100K" / "ml"), "--user", "1", "--k", "5",
                           "--item_file", str(SHARED_RAW / "ml-100k" / "ml-100k.item")]) == 0
    out = capsys.readouterr().out
    rows = top_table(out)
    assert len(rows) == 5 and all(len(r) == 4 and r[3] for r in rows)  # every row titled
    train = pd.read_csv(SHARED_DATASETS / "ML-100K" / "ML-100K_train_augment.csv", dtype=str)
    assert not {r[1] for r in rows} & set(train.loc[train["user_id:token"] == "1",
                                                    "item_id:token"])
    assert "train file, rating <= 1:" in out


def test_an_unfinished_run_is_refused_unless_allowed_and_then_said(lightgcn, tmp_path, capsys):
    data, run_dir = lightgcn
    killed = tmp_path / "killed"  # as a run killed after its last validation: no metrics.json
    shutil.copytree(run_dir, killed)
    (killed / "metrics.json").unlink()
    for mode in (["--user", "3"], ["--all", "--out", str(tmp_path / "all.csv")],
                 ["--export", str(tmp_path / "emb")]):
        fails_with(capsys, recommend.main(["--run", str(killed), *mode]),
                   "did not finish (no metrics.json)", "--allow_unfinished")
    assert not (tmp_path / "all.csv").exists() and not (tmp_path / "emb").exists()
    assert recommend.main(["--run", str(killed), "--user", "3", "--allow_unfinished"]) == 0
    out = capsys.readouterr().out
    assert "UNFINISHED: it did not finish (no metrics.json)" in out.splitlines()[0]
    assert recommend.main(["--run", str(killed), "--export", str(tmp_path / "emb"),
                           "--allow_unfinished"]) == 0  # the exported files say it too
    about = json.loads((tmp_path / "emb" / "about.json").read_text())
    assert about["unfinished"].startswith("it did not finish (no metrics.json)")
    assert "UNFINISHED:" in capsys.readouterr().out
    assert recommend.main(["--run", str(run_dir), "--user", "3"]) == 0  # a finished one:
    assert "UNFINISHED" not in capsys.readouterr().out  # nothing to say
