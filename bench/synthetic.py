"""Synthetic split files with the shape of datasets whose train files we do not have
(Netflix-1M, Amazon_Books), for memory and speed benchmarks at their scale.

    python bench/synthetic.py --shape Amazon_Books   # -> dataset/synthetic/Amazon_Books-synthetic/
    python bench/synthetic.py --shape Netflix-1M --scale 0.05 --seed 1 --out /tmp/syn

The folder ``<out>/<SHAPE>-synthetic/`` holds the four files of the published format
(docs/datasets.md) with integer ids. ``dataloader.load_dataset(out, "<SHAPE>-synthetic")``
reports exactly the shape's U, I and |T| (T = rows rated >= 4 or <= 1 of train_augment):
every user and item occurs in T. The numbers are not a model of anybody's taste; only the
shape is realistic:

* Item popularity is Zipf-like, p(rank r) ~ (r + ZIPF_OFFSET)^-a; users' row counts are
  lognormal (sigma per shape), at least MIN_T_PER_USER rows in T, at most half of the
  items. Both a and sigma were calibrated so that the synthetic validation split has the
  top-10% item share and top-10% user share of the real validation file of the dataset
  (the only real file of those datasets at hand); ``skew_report`` prints both.
* A user's rows are distinct items drawn without replacement with probability ~ p
  (successive sampling), then split at random into the classes. Of T, NEG_SHARE are
  confirmed negatives (0.5 or 1); NEUTRAL_SHARE of the train file are neutral rows (2, 3,
  outside T); positives are 4, 5 or 4.5. Validation/test rows are positives (4, 5) on
  items the user has no train row with, split over users in proportion to their positives.
* Items drawn by nobody into T are moved into T: a T row of an item with >= 2 T rows is
  given to the missing item (same user, same rating), so every item occurs in T.
* train_original holds the same rows in the same order with 4.5 and 0.5 replaced by 2 or 3
  (what the LLM step would have started from). Rows are ordered as in the published files:
  the raw positives (4, 5) grouped by user, then every other row grouped by user.

Every user keeps at least floor(I/10) items without a T row (the sampler draws that many).

``--scale s`` shrinks every count n of the shape (U, I, |T|, validation and test rows) to
``floor(n * s + 0.5)`` (``scaled_count``); the rows per user stay the same, so a small scale
makes a denser dataset, and a scale below which a user cannot hold its rows is refused.
The same --seed writes the same bytes.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

# dataloader's column names, repeated so that generating needs no torch import
USER_COL, ITEM_COL, RATING_COL = "user_id:token", "item_id:token", "rating:float"
NEG_SHARE = 0.15  # confirmed negatives / |T|
NEUTRAL_SHARE = 0.10  # neutral rows / train file rows
REFINED_POS_SHARE = 0.25  # 4.5 among positives beyond a user's first 4 (ML-100K's file: 0.27)
REFINED_NEG_SHARE = 0.60  # 0.5 among confirmed negatives (ML-100K: 0.62)
FIVE_SHARE = 0.40  # 5 among raw positives (ML-1M: 0.39)
TWO_SHARE = 0.30  # 2 among neutral rows (ML-1M: 0.29)
POS_WAS_THREE = 0.70  # a 4.5 row was a 3 in train_original with this probability, else a 2
NEG_WAS_TWO = 0.50  # a 0.5 row was a 2 with this probability, else a 3
MIN_T_PER_USER = 5
MIN_POS_PER_USER = 4  # raw positives (4, 5) in T per user at least, as a 5-core split leaves
MAX_T_SHARE = 0.5  # a user's T rows <= this share of the items (Netflix-1M's top user: ~0.5)
ZIPF_OFFSET = 10.0
SYNTHETIC_SUFFIX = "-synthetic"

# Rating classes: (train_augment rating, train_original rating or None when drawn).
POS4, POS5, POS45, NEG1, NEG05, NEU2, NEU3 = range(7)
AUGMENT_TEXT = np.array(["4.0", "5.0", "4.5", "1.0", "0.5", "2.0", "3.0"], dtype=object)
RAW_POSITIVE = (POS4, POS5)


@dataclass(frozen=True)
class Shape:
    """The statistics a synthetic dataset reproduces, and the calibration targets."""

    name: str
    num_users: int
    num_items: int
    num_t: int  # |T| of train_augment
    num_valid: int
    num_test: int
    zipf_exponent: float
    user_sigma: float
    real_valid_item_top10: float  # share of the real validation rows on the top 10% items
    real_valid_user_top10: float  # ... from the top 10% users


# Counts: the published datasets' figures; validation/test sizes of the real files
# (Amazon_Books: no test file there, twice its validation). The real top-10% shares were
# measured on those validation files with the shape's U and I as denominators.
SHAPES = {
    "Netflix-1M": Shape("Netflix-1M", 4803, 5575, 481248, 50366, 103202,
                        zipf_exponent=1.15, user_sigma=1.08,
                        real_valid_item_top10=0.591, real_valid_user_top10=0.405),
    "Amazon_Books": Shape("Amazon_Books", 28623, 29948, 1169780, 111432, 2 * 111432,
                          zipf_exponent=0.565, user_sigma=1.03,
                          real_valid_item_top10=0.366, real_valid_user_top10=0.397),
}


def scaled_count(n: int, scale: float) -> int:
    """floor(n * scale + 0.5): a count of the shape at ``scale`` (round half up)."""
    return math.floor(n * scale + 0.5)


def scaled_shape(shape: Shape, scale: float) -> Shape:
    if scale == 1.0:
        return shape
    return replace(shape, num_users=scaled_count(shape.num_users, scale),
                   num_items=scaled_count(shape.num_items, scale),
                   num_t=scaled_count(shape.num_t, scale),
                   num_valid=scaled_count(shape.num_valid, scale),
                   num_test=scaled_count(shape.num_test, scale))


def dataset_name(shape: str) -> str:
    """Folder name of a synthetic dataset: never mistaken for the real one."""
    return shape + SYNTHETIC_SUFFIX


# ----------------------------------------------------------------------------- counts

def allocate(total: int, weights: np.ndarray, low: int = 0, high: float = np.inf) -> np.ndarray:
    """Integers x with sum(x) = total, low <= x <= high, x ~ c * weights (largest remainder).

    c is found by bisection on sum(clip(c * w, low, high)); the rounding deficit goes to the
    largest fractional parts (ties: lower index first).
    """
    n = weights.size
    if not n * low <= total <= n * high:
        raise ValueError(f"cannot split {total} into {n} parts within [{low}, {high}]")
    lo, hi = 0.0, 1.0
    while np.clip(hi * weights, low, high).sum() < total:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.clip(mid * weights, low, high).sum() <= total:
            lo = mid
        else:
            hi = mid
    x = np.clip(lo * weights, low, high)
    base = np.floor(x).astype(np.int64)
    deficit = total - int(base.sum())
    room = np.flatnonzero(base < high)
    order = room[np.argsort(-(x - base)[room], kind="stable")]
    base[order[:deficit]] += 1
    return base


@dataclass
class UserCounts:
    """Rows per user of each kind; a user's rows are t + neutral + valid + test distinct items."""

    t: np.ndarray
    neg: np.ndarray
    neutral: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.t + self.neutral + self.valid + self.test


def class_totals(shape: Shape) -> tuple[int, int]:
    """(confirmed negatives in T, neutral rows): NEG_SHARE of |T|, NEUTRAL_SHARE of the file."""
    num_neg = scaled_count(shape.num_t, NEG_SHARE)
    num_neutral = scaled_count(shape.num_t, NEUTRAL_SHARE / (1 - NEUTRAL_SHARE))
    return num_neg, num_neutral


def user_counts(shape: Shape, rng: np.random.Generator) -> UserCounts:
    U, I = shape.num_users, shape.num_items
    if shape.num_t < I:
        raise ValueError(f"{shape.name}: |T| = {shape.num_t} < I = {I}; every item needs a T row")
    num_neg, num_neutral = class_totals(shape)
    activity = rng.lognormal(0.0, shape.user_sigma, U)
    t_cap = int(MAX_T_SHARE * I)
    t = allocate(shape.num_t, activity, MIN_T_PER_USER, t_cap)
    neg = rng.multivariate_hypergeometric(t - MIN_POS_PER_USER, num_neg)
    neutral = rng.multinomial(num_neutral, t / t.sum())
    pos = t - neg
    valid = allocate(shape.num_valid, pos.astype(np.float64))
    test = allocate(shape.num_test, pos.astype(np.float64))
    counts = UserCounts(t, neg, neutral, valid, test)
    if int(counts.total.max()) > I:
        raise ValueError(f"{shape.name}: a user needs {int(counts.total.max())} distinct items "
                         f"but there are only {I}; use a larger --scale")
    return counts


# ----------------------------------------------------------------------------- items

def item_popularity(num_items: int, exponent: float) -> np.ndarray:
    """p(rank r) ~ (r + ZIPF_OFFSET)^-exponent, r = 1..I, summing to 1."""
    w = (np.arange(1, num_items + 1) + ZIPF_OFFSET) ** -exponent
    return w / w.sum()


def sample_distinct(counts: np.ndarray, p: np.ndarray, rng: np.random.Generator,
                    block_users: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """counts[u] distinct items per user, drawn without replacement with probability ~ p.

    Returns (owner, item) grouped by user in ascending order. Light users: the first k
    distinct values of an i.i.d. sequence from p (the same distribution as successive
    sampling), in blocks of users, a longer sequence for a user whose sequence fell short.
    Heavy users (k > I/8): the k largest of log p + Gumbel noise over the row.
    """
    I = p.size
    cdf = np.cumsum(p)
    log_p = np.log(p)
    heavy_from = I // 8
    owners, items = [], []
    for start in range(0, counts.size, block_users):
        block = np.arange(start, min(start + block_users, counts.size))
        k = counts[block]
        picked: dict[int, np.ndarray] = {}
        todo = block[k <= heavy_from]
        draws = 2 * counts[todo] + 16
        while todo.size:
            owner = np.repeat(todo, draws)
            u01 = rng.random(owner.size)
            drawn = np.minimum(np.searchsorted(cdf, u01 * cdf[-1], side="right"), I - 1)
            _, first = np.unique(owner * I + drawn, return_index=True)
            first.sort()  # first occurrences in draw order, grouped by user
            f_owner = owner[first]
            starts = np.searchsorted(f_owner, todo)
            rank = np.arange(first.size) - np.repeat(starts, np.diff(np.append(starts, first.size)))
            keep = rank < counts[f_owner]
            for u, row in zip(*_split_by_owner(f_owner[keep], drawn[first[keep]])):
                if row.size == counts[u]:
                    picked[int(u)] = row
            short = np.array([u for u in todo if int(u) not in picked], dtype=np.int64)
            draws = 2 * draws[np.isin(todo, short)]
            todo = short
        for u in block[k > heavy_from]:
            keys = log_p + rng.gumbel(size=I)
            picked[int(u)] = np.argpartition(-keys, counts[u] - 1)[:counts[u]]
        for u in block:
            owners.append(np.full(counts[u], u, dtype=np.int64))
            items.append(picked[int(u)].astype(np.int64))
    return np.concatenate(owners), np.concatenate(items)


def _split_by_owner(owner: np.ndarray, values: np.ndarray):
    """(distinct owners, list of their values) for an owner-sorted pair of arrays."""
    uniq, starts = np.unique(owner, return_index=True)
    return uniq, np.split(values, starts[1:])


def cover_items(owner: np.ndarray, item: np.ndarray, in_t: np.ndarray, num_items: int,
                rng: np.random.Generator) -> int:
    """Give every item without a T row one, in place: a random T row (u, j) whose item j
    has >= 2 T rows and whose user u has no row of the missing item m becomes (u, m).
    Returns the number of rows moved."""
    t_rows = np.flatnonzero(in_t)
    t_count = np.bincount(item[t_rows], minlength=num_items)
    missing = np.flatnonzero(t_count == 0)
    keys = np.sort(owner * num_items + item)
    added, removed = set(), set()

    def has(u: int, i: int) -> bool:
        key = u * num_items + i
        if key in added:
            return True
        if key in removed:
            return False
        pos = np.searchsorted(keys, key)
        return pos < keys.size and keys[pos] == key

    for m in missing:
        while True:
            row = int(t_rows[rng.integers(t_rows.size)])
            u, j = int(owner[row]), int(item[row])
            if t_count[j] >= 2 and not has(u, int(m)):
                break
        t_count[j] -= 1
        t_count[m] += 1
        item[row] = m
        removed.add(u * num_items + j)
        added.discard(u * num_items + j)
        added.add(u * num_items + int(m))
        removed.discard(u * num_items + int(m))
    return int(missing.size)


# ----------------------------------------------------------------------------- the dataset

@dataclass
class Synthetic:
    """Rows in index space (users 0..U-1, items 0..I-1 by popularity rank) and their class."""

    shape: Shape
    owner: np.ndarray
    item: np.ndarray
    klass: np.ndarray  # rating class of train rows (POS4 ...), -1 for validation/test
    split: np.ndarray  # 0 train, 1 validation, 2 test
    was: np.ndarray  # train_original rating of each row (4.5/0.5 rows: 2 or 3)
    moved: int


def generate(shape: Shape, seed: int) -> Synthetic:
    """All rows of one synthetic dataset; deterministic for (shape, seed)."""
    rng_counts, rng_items, rng_order, rng_class, rng_cover = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    counts = user_counts(shape, rng_counts)
    p = item_popularity(shape.num_items, shape.zipf_exponent)
    owner, item = sample_distinct(counts.total, p, rng_items)
    # successive sampling draws popular items first: shuffle each user's rows
    order = np.lexsort((rng_order.random(owner.size), owner))
    owner, item = owner[order], item[order]

    # position of each row within its user; the first t are T (positives then negatives),
    # then neutral, validation, test rows
    starts = np.concatenate([[0], np.cumsum(counts.total)[:-1]])
    pos_in_user = np.arange(owner.size) - np.repeat(starts, counts.total)
    c = counts
    bounds = [c.t - c.neg, c.t, c.t + c.neutral, c.t + c.neutral + c.valid]
    b = [np.repeat(x, counts.total) for x in bounds]
    is_pos, is_neg = pos_in_user < b[0], (pos_in_user >= b[0]) & (pos_in_user < b[1])
    is_neutral = (pos_in_user >= b[1]) & (pos_in_user < b[2])
    split = np.where(pos_in_user < b[2], 0, np.where(pos_in_user < b[3], 1, 2)).astype(np.int8)

    moved = cover_items(owner, item, is_pos | is_neg, shape.num_items, rng_cover)

    u01 = rng_class.random((3, owner.size))
    klass = np.full(owner.size, -1, dtype=np.int8)
    raw_pos = np.where(u01[1] < FIVE_SHARE, POS5, POS4)
    # a user's first MIN_POS_PER_USER rows are raw positives, so train_original keeps every user
    refined = (u01[0] < REFINED_POS_SHARE) & (pos_in_user >= MIN_POS_PER_USER)
    klass[is_pos] = np.where(refined, POS45, raw_pos)[is_pos]
    klass[is_neg] = np.where(u01[0] < REFINED_NEG_SHARE, NEG05, NEG1)[is_neg]
    klass[is_neutral] = np.where(u01[0] < TWO_SHARE, NEU2, NEU3)[is_neutral]
    was = np.select([klass == POS4, klass == POS5, klass == NEG1, klass == NEU2, klass == NEU3,
                     klass == POS45, klass == NEG05, split > 0],
                    [4, 5, 1, 2, 3,
                     np.where(u01[2] < POS_WAS_THREE, 3, 2), np.where(u01[2] < NEG_WAS_TWO, 2, 3),
                     np.where(u01[1] < FIVE_SHARE, 5, 4)], 0).astype(np.int8)
    return Synthetic(shape, owner, item, klass, split, was, moved)


def write(data: Synthetic, out_dir: Path, seed: int) -> Path:
    """Write the four split files into ``<out_dir>/<shape>-synthetic/``; returns the folder.

    Ids: users 1..U in activity-draw order, items 1..I through a seeded permutation of the
    popularity ranks (so an id says nothing about popularity)."""
    name = dataset_name(data.shape.name)
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    item_id = np.random.default_rng([seed, 1]).permutation(data.shape.num_items) + 1
    user_id = data.owner + 1

    train = np.flatnonzero(data.split == 0)
    raw_pos = np.isin(data.klass[train], RAW_POSITIVE)
    # published layout: raw positives grouped by user, then every other row by user
    train = np.concatenate([train[raw_pos], train[~raw_pos]])

    def dump(rows: np.ndarray, ratings: np.ndarray, split: str) -> None:
        frame = pd.DataFrame({USER_COL: user_id[rows], ITEM_COL: item_id[data.item[rows]],
                              RATING_COL: ratings})
        frame.to_csv(folder / f"{name}_{split}.csv", index=False, lineterminator="\n")

    dump(train, AUGMENT_TEXT[data.klass[train]], "train_augment")
    dump(train, data.was[train].astype(np.int64), "train_original")
    for code, split in ((1, "validation"), (2, "test")):
        rows = np.flatnonzero(data.split == code)
        dump(rows, data.was[rows].astype(np.int64), split)
    return folder


# ----------------------------------------------------------------------------- skew

def top_share(ids: np.ndarray, num_ids: int, frac: float = 0.1) -> float:
    """Share of the rows that fall on the ceil(frac * num_ids) most frequent ids."""
    counts = np.sort(np.bincount(ids, minlength=num_ids))[::-1]
    return float(counts[:math.ceil(frac * num_ids)].sum() / max(counts.sum(), 1))


def file_top_shares(path: Path, num_users: int | None = None,
                    num_items: int | None = None) -> tuple[float, float]:
    """(top-10% item share, top-10% user share) of a split file; denominators default to
    the ids present."""
    frame = pd.read_csv(path, usecols=[USER_COL, ITEM_COL], dtype=str)
    users = pd.factorize(frame[USER_COL])[0]
    items = pd.factorize(frame[ITEM_COL])[0]
    return (top_share(items, num_items or int(items.max()) + 1),
            top_share(users, num_users or int(users.max()) + 1))


def skew_report(data: Synthetic, reference_train: Path | None = None) -> list[str]:
    """The calibration targets against what was generated (and a real train file's)."""
    s, I, U = data.shape, data.shape.num_items, data.shape.num_users
    lines = [f"{'top-10% share of rows':<44}{'items':>7}{'users':>7}"]
    for label, rows in (("synthetic train file", data.split == 0),
                        ("synthetic validation", data.split == 1)):
        lines.append(f"{label:<44}{top_share(data.item[rows], I):>7.3f}"
                     f"{top_share(data.owner[rows], U):>7.3f}")
    lines.append(f"{'real ' + s.name + ' validation (target)':<44}"
                 f"{s.real_valid_item_top10:>7.3f}{s.real_valid_user_top10:>7.3f}")
    if reference_train is not None and reference_train.is_file():
        item_share, user_share = file_top_shares(reference_train)
        lines.append(f"{'real ' + reference_train.name:<44}{item_share:>7.3f}{user_share:>7.3f}")
    return lines


def shared_train_original(dataset: str = "ML-1M") -> Path:
    """<$REFINE_DATA_DIR or dataset/>/<dataset>/<dataset>_train_original.csv."""
    import os
    root = Path(os.environ.get("REFINE_DATA_DIR") or "dataset")
    return root / dataset / f"{dataset}_train_original.csv"


def make(shape: str, out_dir: str | Path = "dataset/synthetic", seed: int = 0,
         scale: float = 1.0, log=print, reference_train: Path | None = None) -> Path:
    """Generate and write one synthetic dataset; returns its folder. The skew report
    includes ``reference_train`` (a real train file) when given."""
    tic = time.perf_counter()
    data = generate(scaled_shape(SHAPES[shape], scale), seed)
    folder = write(data, Path(out_dir), seed)
    s = data.shape
    num_neg, num_neutral = class_totals(s)
    log(f"{folder}: U {s.num_users:,}, I {s.num_items:,}, |T| {s.num_t:,} ({num_neg:,} "
        f"confirmed negatives), {num_neutral:,} neutral, validation {s.num_valid:,}, "
        f"test {s.num_test:,}; {data.moved:,} T rows moved to items nobody drew; seed {seed}, "
        f"{time.perf_counter() - tic:.1f} s")
    for line in skew_report(data, reference_train):
        log(line)
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--out", default="dataset/synthetic", help="parent folder (default "
                   "dataset/synthetic, git-ignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply U, I, |T|, validation and test rows (round half up)")
    p.add_argument("--reference", type=Path, default=shared_train_original(),
                   help="a real train file whose skew is printed for comparison (default "
                        "$REFINE_DATA_DIR/ML-1M/ML-1M_train_original.csv, when present)")
    args = p.parse_args(argv)
    if not 0 < args.scale <= 1:
        p.error("--scale must be in (0, 1]")
    try:
        make(args.shape, args.out, args.seed, args.scale, reference_train=args.reference)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
