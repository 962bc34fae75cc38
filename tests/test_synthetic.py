"""bench/synthetic.py: exact shape after loading, classes, no overlaps, determinism."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dataloader
from recommenders import base, refine_plus
from bench import synthetic as S
from data.schema import ITEM_COL, RATING_COL, USER_COL

# (shape, scale, U, I, |T|, validation rows, test rows): floor(n * scale + 0.5) by hand,
# e.g. 29,948 x 0.02 = 598.96 -> 599 and 1,169,780 x 0.02 = 23,395.6 -> 23,396.
SCALED = [
    ("Amazon_Books", 0.02, 572, 599, 23396, 2229, 4457),
    ("Netflix-1M", 0.05, 240, 279, 24062, 2518, 5160),
]
SPLITS = ("train_augment", "train_original", "validation", "test")


def quiet(line: str) -> None:
    pass


def read(folder: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(folder / f"{folder.name}_{split}.csv")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """Folders of the scaled shapes (seed 0), Amazon_Books again with seed 0 and with seed 1."""
    root = tmp_path_factory.mktemp("synthetic")
    folders = {}
    for shape, scale, *_ in SCALED:
        folders[shape, 0] = S.make(shape, root / "a", seed=0, scale=scale, log=quiet)
    folders["again", 0] = S.make("Amazon_Books", root / "b", seed=0, scale=0.02, log=quiet)
    folders["Amazon_Books", 1] = S.make("Amazon_Books", root / "c", seed=1, scale=0.02, log=quiet)
    return folders


def test_scaled_count_rounds_half_up():
    assert [S.scaled_count(n, 0.5) for n in (1, 2, 3, 5)] == [1, 1, 2, 3]
    assert S.scaled_count(29948, 0.02) == 599 and S.scaled_count(28623, 0.02) == 572
    assert S.scaled_shape(S.SHAPES["Netflix-1M"], 1.0) == S.SHAPES["Netflix-1M"]


@pytest.mark.parametrize("shape, scale, U, I, T, V, Te", SCALED)
def test_exact_shape_after_loading(made, shape, scale, U, I, T, V, Te):
    s = S.scaled_shape(S.SHAPES[shape], scale)
    assert (s.num_users, s.num_items, s.num_t, s.num_valid, s.num_test) == (U, I, T, V, Te)
    folder = made[shape, 0]
    assert folder.name == f"{shape}-synthetic"
    warnings = []
    data = dataloader.load_dataset(folder.parent, folder.name, "augment", warn=warnings.append)
    assert warnings == []  # no duplicates, every val/test row's user and item occur in T
    assert (data.num_users, data.num_items, len(data.train)) == (U, I, T)
    assert (len(data.validation), len(data.test)) == (V, Te)
    num_neg, num_neutral = S.class_totals(s)
    assert int((~data.train_is_pos).sum()) == num_neg
    assert len(data.neutral) == num_neutral
    # the sampler's condition: >= floor(I/10) items without a T row for every user
    graphs = base.build_graphs(data, "cpu")
    refine_plus.check_sampling_feasible(graphs, refine_plus.num_negatives(I))
    assert int(graphs.t_by_user.degree().max()) <= I - I // 10
    # train_original keeps every user (each has >= 4 raw positives)
    original = dataloader.load_dataset(folder.parent, folder.name, "original", warn=quiet)
    assert original.num_users == U


@pytest.mark.parametrize("shape", [s[0] for s in SCALED])
def test_class_fractions(made, shape):
    ratings = read(made[shape, 0], "train_augment")[RATING_COL]
    assert set(ratings.unique()) <= {0.5, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0}
    in_t = (ratings >= 4) | (ratings <= 1)
    pos, neg = ratings[ratings >= 4], ratings[ratings <= 1]
    assert abs((ratings <= 1).sum() / in_t.sum() - S.NEG_SHARE) < 1e-3
    assert abs((~in_t).mean() - S.NEUTRAL_SHARE) < 1e-3
    assert 0.10 < (pos == 4.5).mean() < S.REFINED_POS_SHARE + 0.02  # first 4 per user stay raw
    assert abs((neg == 0.5).mean() - S.REFINED_NEG_SHARE) < 0.05
    assert abs((ratings[~in_t] == 2).mean() - S.TWO_SHARE) < 0.05
    raw = pos[pos != 4.5]
    assert abs((raw == 5).mean() - S.FIVE_SHARE) < 0.05


@pytest.mark.parametrize("shape", [s[0] for s in SCALED])
def test_no_duplicates_and_eval_rows_are_new_positives(made, shape):
    folder = made[shape, 0]
    frames = {split: read(folder, split) for split in SPLITS}
    train = frames["train_augment"]
    assert not train.duplicated([USER_COL, ITEM_COL]).any()
    every = pd.concat([train, frames["validation"], frames["test"]])
    assert not every.duplicated([USER_COL, ITEM_COL]).any()  # val, test, train disjoint
    for split in ("validation", "test"):
        assert set(frames[split][RATING_COL].unique()) <= {4, 5}
        assert frames[split][USER_COL].is_monotonic_increasing


@pytest.mark.parametrize("shape", [s[0] for s in SCALED])
def test_original_is_augment_before_refinement(made, shape):
    folder = made[shape, 0]
    augment, original = read(folder, "train_augment"), read(folder, "train_original")
    assert augment[[USER_COL, ITEM_COL]].equals(original[[USER_COL, ITEM_COL]])
    a, o = augment[RATING_COL].to_numpy(), original[RATING_COL].to_numpy()
    refined = (a == 4.5) | (a == 0.5)
    assert refined.any()
    assert np.isin(o[refined], [2, 3]).all()
    assert (a[~refined] == o[~refined]).all()
    # published layout: raw positives grouped by user, then all other rows grouped by user
    raw_pos = o >= 4
    first_other = int(np.argmin(raw_pos))
    assert raw_pos[:first_other].all() and not raw_pos[first_other:].any()
    users = original[USER_COL].to_numpy()
    assert (np.diff(users[:first_other]) >= 0).all() and (np.diff(users[first_other:]) >= 0).all()


def test_same_seed_same_bytes_other_seed_differs(made):
    a, b, c = made["Amazon_Books", 0], made["again", 0], made["Amazon_Books", 1]
    for split in SPLITS:
        name = f"{a.name}_{split}.csv"
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_popularity_is_skewed(made):
    train = read(made["Amazon_Books", 0], "train_augment")
    items = pd.factorize(train[ITEM_COL])[0]
    assert S.top_share(items, 599) > 0.2  # uniform popularity would give about 0.1


def test_items_nobody_drew_get_a_t_row(tmp_path):
    steep = dataclasses.replace(S.scaled_shape(S.SHAPES["Amazon_Books"], 0.02),
                                zipf_exponent=3.0)
    data = S.generate(steep, seed=0)
    assert data.moved > 0
    folder = S.write(data, tmp_path, seed=0)
    loaded = dataloader.load_dataset(tmp_path, folder.name, "augment", warn=quiet)
    assert (loaded.num_users, loaded.num_items, len(loaded.train)) == (572, 599, 23396)
    frame = read(folder, "train_augment")
    assert not frame.duplicated([USER_COL, ITEM_COL]).any()


def test_allocate_exact_sum_and_bounds():
    w = np.array([1.0, 100.0, 3.0, 0.5, 7.0])
    x = S.allocate(60, w, low=2, high=30)
    assert x.sum() == 60 and x.min() >= 2 and x.max() <= 30 and x[1] == 30
    with pytest.raises(ValueError):
        S.allocate(200, w, low=2, high=30)


def test_cli_refuses_a_scale_too_small(tmp_path, capsys):
    assert S.main(["--shape", "Netflix-1M", "--scale", "0.01", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
