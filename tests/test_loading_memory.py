"""Loading split files in bounded memory (review r27, finding 13): the chunked, integer-coded
loader (data/table.py, data/loading.py) gives exactly what a straightforward whole-file
pandas reading gives — on odd synthetic files, across chunk boundaries, and on the published
splits where present — its memory grows with the rows kept, not with the file's text, and
running out of memory is one line.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dataloader
from conftest import SHARED_DATASETS
from data import table
from data.schema import (EVAL_RATINGS, ITEM_COL, RATING_COL, TRAIN_RATINGS, USER_COL,
                         DataError, sorted_ids)
from data.splits import read_split, split_path

REPO = Path(__file__).resolve().parents[1]
HEADER = "user_id:token,item_id:token,rating:float"


# ----------------------------------------------------------------------------- the reference

def reference_read(path: Path, is_train: bool) -> pd.DataFrame:
    """The whole file at once, as the loader read it before chunking."""
    df = pd.read_csv(path, dtype={USER_COL: str, ITEM_COL: str})[[USER_COL, ITEM_COL,
                                                                  RATING_COL]]
    ratings = pd.to_numeric(df[RATING_COL], errors="coerce")
    if ratings.isna().any():
        raise DataError("non-numeric")
    if df[USER_COL].isna().any() or df[ITEM_COL].isna().any():
        raise DataError("empty id")
    df = df.assign(**{RATING_COL: ratings.astype(np.float64)})
    if not df[RATING_COL].isin(TRAIN_RATINGS if is_train else EVAL_RATINGS).all():
        raise DataError("unexpected rating")
    df = df[~df.duplicated([USER_COL, ITEM_COL], keep="first")]
    if len(df) == 0:
        raise DataError("empty")
    return df.reset_index(drop=True)


def reference_load(folder: Path, name: str, augment: str = "augment") -> dict:
    train = reference_read(split_path(folder, name, f"train_{augment}"), True)
    rating = train[RATING_COL].to_numpy()
    in_t = (rating >= 4) | (rating <= 1)
    t = train[in_t]
    users, items = pd.Index(sorted_ids(t[USER_COL])), pd.Index(sorted_ids(t[ITEM_COL]))

    def enc(df):
        u = users.get_indexer(df[USER_COL].to_numpy(dtype=object))
        i = items.get_indexer(df[ITEM_COL].to_numpy(dtype=object))
        return u, i
    out = {"user_ids": users.to_numpy(), "item_ids": items.to_numpy(),
           "is_pos": t[RATING_COL].to_numpy() >= 4}
    out["train_u"], out["train_i"] = enc(t)
    nu, ni = enc(train[~in_t])
    keep = (nu >= 0) & (ni >= 0)
    out["neutral_u"], out["neutral_i"] = nu[keep], ni[keep]
    for split in ("validation", "test"):
        df = reference_read(split_path(folder, name, split), False)
        u, i = enc(df[df[RATING_COL] >= 4])
        seen = (u >= 0) & (i >= 0)
        out[f"{split}_u"], out[f"{split}_i"] = u[seen], i[seen]
    return out


def loaded(folder: Path, name: str, augment: str = "augment") -> dict:
    data = dataloader.load_dataset(folder, name, augment, warn=lambda line: None)
    out = {"user_ids": data.user_ids, "item_ids": data.item_ids,
           "is_pos": data.train_is_pos.numpy()}
    for key, rel in (("train", data.train), ("neutral", data.neutral),
                     ("validation", data.validation), ("test", data.test)):
        out[f"{key}_u"], out[f"{key}_i"] = rel.users.numpy(), rel.items.numpy()
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype.kind == b[key].dtype.kind, key
        assert np.array_equal(a[key], b[key]), key


def write(folder: Path, name: str, train: str, valid: str, test: str) -> None:
    for split, text in (("train_augment", train), ("validation", valid), ("test", test)):
        path = split_path(folder, name, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))


ODD_TRAINS = {
    "plain": HEADER + "\n1,10,5\n1,11,4.5\n2,10,4\n2,12,0.5\n3,11,3\n2,14,1\n",
    "extra and reordered columns": "ts,rating:float,item_id:token,note,user_id:token\n"
    "7,5,10,a,1\n8,4.5,11,b,1\n9,4,10,,2\n1,0.5,12,x,2\n2,3,11,y,3\n3,1,14,z,2\n",
    "blank lines and CRLF": HEADER + "\r\n\r\n1,10,5\r\n1,11,4.5\r\n\r\n2,10,4\r\n2,12,0.5\r\n"
    "3,11,3\r\n2,14,1\r\n\r\n",
    "quoted fields": HEADER + '\n"1","10","5"\n"1",11,4.5\n2,"10",4\n"2","12","0.5"\n'
    '3,11,"3"\n"2","14",1\n',
    "duplicates": HEADER + "\n1,10,5\n1,10,1\n1,11,4.5\n2,10,4\n2,12,0.5\n2,12,5\n3,11,3\n"
    "2,14,1\n1,10,5\n",
    "string and odd ids": HEADER + "\nu007,B00X,5\nu007,0012,4.5\n1.0,B00X,4\n1.0,12,0.5\n"
    "-0,0012,3\n1.0,0012,1\n0,12,5\n",
    "numeric ids": HEADER + "\n10,100,5\n9,100,4\n10,99,4.5\n9,99,1\n100,5,5\n100,99,4\n"
    "9,5,2\n",
    "BOM": "\ufeff" + HEADER + "\n1,10,5\n1,11,4.5\n2,10,4\n2,12,0.5\n3,11,3\n2,14,1\n",
}
VALID = HEADER + "\n1,12,5\n2,11,4\n9,10,4\n3,10,5\n"
TEST = HEADER + "\n1,14,4\n3,12,2\n"
OTHER_EVAL = {"string and odd ids": ("u007,12,5", "0,B00X,4"),
              "numeric ids": ("10,5,5", "100,100,4")}


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 1 << 20])
@pytest.mark.parametrize("case", sorted(ODD_TRAINS))
def test_chunked_loading_equals_the_whole_file_reference(tmp_path, monkeypatch, case,
                                                         chunk_rows):
    monkeypatch.setattr(table, "CHUNK_ROWS", chunk_rows)
    train = ODD_TRAINS[case]
    valid, test = VALID, TEST
    if case in OTHER_EVAL:
        valid, test = (HEADER + "\n" + row + "\n" for row in OTHER_EVAL[case])
    write(tmp_path, "Odd", train, valid, test)
    assert_same(loaded(tmp_path, "Odd"), reference_load(tmp_path, "Odd"))
    path = split_path(tmp_path, "Odd", "train_augment")
    got, want = read_split(path, is_train=True, warn=lambda line: None), \
        reference_read(path, True)
    pd.testing.assert_frame_equal(got, want)


@pytest.mark.parametrize("chunk_rows", [1, 2, 1 << 20])
@pytest.mark.parametrize("text, message", [
    (HEADER + "\n1,10,5\n1,11,4\n2,10,good\n2,11,bad\n", "2 non-numeric or empty rating(s), "
     "first at data row 3: 'good'"),
    (HEADER + "\n1,10,5\n1,11,4\n2,10,\n", "first at data row 3: empty"),
    (HEADER + "\n1,10,5\n,11,4\n2,10,4\n2,,4\n", "empty user or item id in 2 row(s)"),
    (HEADER + "\n1,10,5\n1,11,7\n2,10,4\n2,11,6\n3,1,7\n", "3 rating(s) outside [0.5, 1.0, 2.0, "
     "3.0, 4.0, 4.5, 5.0], e.g. [6.0, 7.0]"),
    (HEADER + "\n1,10,5\n1,11,4\n2,10,4,9\n", "Expected 3 fields in line 4, saw 4"),
    (HEADER.replace(",", "\t") + "\n1\t10\t5\n", "looks tab-separated"),
    ("user_id:token,rating:float\n1,5\n", "missing column(s) item_id:token"),
    ("", "No columns to parse from file"),
    (HEADER + "\n", "the split is empty"),
])
def test_chunked_loading_refuses_what_the_loader_refused(tmp_path, monkeypatch, text, message,
                                                          chunk_rows):
    monkeypatch.setattr(table, "CHUNK_ROWS", chunk_rows)
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_split(path, is_train=True, warn=lambda line: None)
    assert message in str(err.value) and "\n" not in str(err.value)


PUBLISHED = [(name, augment) for name, augment in (
    ("ML-100K", "augment"), ("ML-100K", "original"), ("ML-1M", "original"),
    ("Amazon_Digital_Music", "augment"))
    if split_path(SHARED_DATASETS, name, f"train_{augment}").is_file()]


@pytest.mark.parametrize("name, augment", PUBLISHED)
def test_published_splits_load_exactly_as_the_reference(name, augment):
    assert_same(loaded(SHARED_DATASETS, name, augment),
                reference_load(SHARED_DATASETS, name, augment))


# ----------------------------------------------------------------------------- memory

def big_train(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, rows // 20, rows)
    items = rng.integers(0, 5000, rows)
    ratings = np.array(["1", "2", "3", "4", "5", "4.5", "0.5"])[rng.integers(0, 7, rows)]
    lines = "\n".join(f"{u},{i},{r}" for u, i, r in zip(users, items, ratings))
    path.write_text(HEADER + "\n" + lines + "\n")


def test_memory_grows_with_the_rows_kept_not_the_text(tmp_path):
    """Peak resident memory (VmHWM: ru_maxrss would start at pytest's own, inherited at
    the fork) a child process adds while reading a 2,000,000-row train file
    (100,000 users, 5,000 items): the whole-file string reading took ~137 bytes a row, the
    chunked codes ~70 (two int32 codes and a float32 kept, plus the sort that finds
    duplicates); the bound is 110."""
    path = tmp_path / "t.csv"
    rows = 2_000_000
    big_train(path, rows)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import numpy, pandas\n"
        "from data.splits import read_split_coded\n"
        "def rss(): return next(int(l.split()[1]) for l in open('/proc/self/status')\n"
        "                       if l.startswith('VmHWM')) * 1024\n"
        "base = rss()\n"
        "n = len(read_split_coded(Path(sys.argv[1]), is_train=True, warn=lambda x: None))\n"
        "print(n, rss() - base)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept, grown = map(int, proc.stdout.split())
    assert kept > 0.99 * rows
    assert grown / rows < 110, f"{grown / rows:.0f} bytes a row"


def test_out_of_memory_while_loading_is_one_line(tmp_path, monkeypatch, capsys):
    write(tmp_path, "Big", ODD_TRAINS["plain"], VALID, TEST)

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(table.Vocab, "encode", no_memory)
    with pytest.raises(DataError) as err:
        dataloader.load_dataset(tmp_path, "Big", warn=lambda line: None)
    message = str(err.value)
    assert "\n" not in message and "out of memory while loading Big_train_augment.csv" in message
    assert "needs roughly" in message and "GiB" in message


def test_a_real_memory_limit_gives_one_line(tmp_path):
    """A child process with its address space capped just above what it uses before
    loading a 1,000,000-row file: one error line, no traceback."""
    big_train(tmp_path / "t.csv", 1_000_000)
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "import dataloader\n"
        "from runs.cli import run_cli\n"
        "from data.splits import read_split\n"
        "vm = next(int(l.split()[1]) for l in open('/proc/self/status') "
        "if l.startswith('VmSize')) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (40 << 20), vm + (40 << 20)))\n"
        "sys.exit(run_cli(lambda: read_split(Path(sys.argv[1]), is_train=True)))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "t.csv")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "out of memory while loading t.csv" in lines[0], lines
