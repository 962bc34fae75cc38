"""Datasets (issue 3): byte-identical preparation from raw files, the four other raw formats on
synthetic files, the bring-your-own path, verified downloads over a loopback HTTP server, the
validation of every loaded split, and the CLI's exit codes.

The real data is found through conftest ($REFINE_DATA_DIR, $REFINE_RAW_DIR); tests that need
it skip when it is absent. Downloads only ever contact 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dataloader
from conftest import SHARED_DATASETS, SHARED_RAW
from data import fetch
from data import prepare as prep
from data.registry import SPLITS
from data.schema import DataError, sorted_ids
from data.splits import read_split, split_path
from dataloader import load_dataset

DATASETS_DIR = SHARED_DATASETS
RAW_DIR = SHARED_RAW
needs_shared = pytest.mark.skipif(not (DATASETS_DIR / "MANIFEST.tsv").is_file(),
                                  reason="$REFINE_DATA_DIR (published splits) is not present")
HEADER = "user_id:token,item_id:token,rating:float"


# ----------------------------------------------------------------------------- helpers

def closed_port_url() -> str:
    """A loopback URL nobody listens on (bind, read the port, close)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.part")) if folder.exists() else []


def synthetic(users: list, items: list, bad_user, text_less, rare, rating_fmt=str):
    """Rows (user, item, rating) in file order, items outer / users inner, such that the
    expected outcome is known by hand:

    - the 6 ``users`` rate the 12 ``items``: user a has negatives at items 2a, 2a+1 (ratings
      3/1/2), 4 or 5 elsewhere -> 10 positives each; every item has exactly 5 positives
      (the 5-core boundary) -> test 2, validation 1, train 7 per user; 12 negatives kept;
    - ``text_less`` items (no title/genre...) are rated 5 by everyone -> dropped in step 1;
    - ``rare`` gets 4 positives -> dropped by the 5-core;
    - ``bad_user`` has 3 positives and 1 negative -> dropped, with the negative.
    """
    rows = []
    for j, item in enumerate(items):
        for a, user in enumerate(users):
            if j in (2 * a, 2 * a + 1):
                rating = (3, 1, 2)[a % 3] if j == 2 * a else 2
            else:
                rating = 5 if (a + j) % 2 else 4
            rows.append((user, item, rating_fmt(rating)))
        if j < 3:
            rows.append((bad_user, item, rating_fmt(5)))
        if j == 3:
            rows.append((bad_user, item, rating_fmt(2)))
    for item in text_less:
        rows += [(user, item, rating_fmt(5)) for user in users]
    rows += [(user, rare, rating_fmt(5)) for user in users[:4]]
    return rows


def write_inter(path: Path, rows, timestamp=True):
    lines = ["user_id:token\titem_id:token\trating:float"
             + ("\ttimestamp:float" if timestamp else "")]
    lines += [f"{u}\t{i}\t{r}" + (f"\t{880000000 + n}" if timestamp else "")
              for n, (u, i, r) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_synthetic_output(out_dir: Path, name: str, users: list, items: list, rating_text):
    """The hand-known outcome of ``synthetic``: columns, filtering, split sizes, row order."""
    frames = {}
    for split in prep.PREPARED_SPLITS:
        path = split_path(out_dir, name, split)
        assert path.read_text().splitlines()[0] == HEADER
        frames[split] = pd.read_csv(path, dtype=str)
    train, valid, test = frames["train_original"], frames["validation"], frames["test"]
    assert (len(train), len(valid), len(test)) == (54, 6, 12)
    assert set(train["user_id:token"]) == set(valid["user_id:token"]) == set(map(str, users))
    assert set(pd.concat([train, valid, test])["item_id:token"]) == set(map(str, items))
    assert set(train["rating:float"]) == {rating_text(r) for r in (1, 2, 3, 4, 5)}
    # Positives first, grouped by user in ascending id order, then the 12 negatives.
    pos = train.iloc[:42]
    assert (pos["rating:float"].isin([rating_text(4), rating_text(5)])).all()
    assert list(pd.unique(pos["user_id:token"])) == [str(u) for u in sorted(users)]
    assert (~train.iloc[42:]["rating:float"].isin([rating_text(4), rating_text(5)])).all()
    for user in users:
        held = pd.concat([pos, valid, test])
        mine = held[held["user_id:token"] == str(user)]
        assert len(mine) == 10 and not mine.duplicated().any()
        assert (valid["user_id:token"] == str(user)).sum() == 1
        assert (test["user_id:token"] == str(user)).sum() == 2
        for part in (pos, test):  # each part keeps the file order (items ascending here)
            part_items = part[part["user_id:token"] == str(user)]["item_id:token"]
            order = [items.index(type(items[0])(i)) for i in part_items]
            assert order == sorted(order)


# ----------------------------------------------------------------------------- tables and hashes

def test_git_blob_sha1_matches_git_hash_object(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    # `printf 'hello\n' | git hash-object --stdin`
    assert fetch.git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"


@needs_shared
def test_shipped_blob_table_equals_manifest():
    manifest = pd.read_csv(DATASETS_DIR / "MANIFEST.tsv", sep="\t", dtype=str)
    assert dict(zip(manifest["file"], manifest["git_blob_sha1"])) == fetch.PUBLISHED_BLOBS


@needs_shared
def test_shared_split_files_match_their_blobs():
    present = [key for key in fetch.PUBLISHED_BLOBS if (DATASETS_DIR / key).is_file()]
    assert len(present) == 14
    for key in present:
        assert fetch.git_blob_sha1(DATASETS_DIR / key) == fetch.PUBLISHED_BLOBS[key], key


def test_default_base_url_is_the_pinned_commit(monkeypatch):
    monkeypatch.delenv(fetch.BASE_URL_ENV, raising=False)
    assert fetch.resolve_base_url() == (
        "https://raw.githubusercontent.com/Chanwoo-Jeong-2000/ReFINe_plus/"
        "458d2b3693663514849fb28bba38eaa3d75ff0cb/dataset")
    monkeypatch.setenv(fetch.BASE_URL_ENV, "http://127.0.0.1:9/x/")
    assert fetch.resolve_base_url() == "http://127.0.0.1:9/x"
    assert fetch.resolve_base_url("http://127.0.0.1:8/y") == "http://127.0.0.1:8/y"


def test_sorted_ids_one_rule_by_hand():
    # a leading zero is not a canonical integer: the whole column sorts lexicographically
    assert list(sorted_ids(["0439023483", "12", "5"])) == ["0439023483", "12", "5"]
    # canonical integers only: numeric order ("100" after "12", "5" first)
    assert list(sorted_ids(["12", "5", "100"])) == ["5", "12", "100"]


# ----------------------------------------------------------------------------- byte identity

@pytest.mark.skipif(not (RAW_DIR / "ml-100k" / "ml-100k.inter").is_file(),
                    reason="$REFINE_RAW_DIR/ml-100k is not present")
def test_prepare_ml100k_is_byte_identical(tmp_path):
    for name in ("ml-100k.inter", "ml-100k.item"):  # the raw input is RecBole's own
        assert hashlib.sha256((RAW_DIR / "ml-100k" / name).read_bytes()).hexdigest() == \
            fetch.RAW_SHA256[name]
    paths = prep.prepare_dataset("ML-100K", RAW_DIR / "ml-100k", tmp_path, log=lambda *_: None)
    for path in paths:
        assert fetch.git_blob_sha1(path) == fetch.PUBLISHED_BLOBS[f"ML-100K/{path.name}"], path.name


@pytest.mark.skipif(not (RAW_DIR / "ml-1m" / "ml-1m.inter").is_file(),
                    reason="$REFINE_RAW_DIR/ml-1m is not present")
def test_prepare_ml1m_is_byte_identical(tmp_path):
    paths = prep.prepare_dataset("ML-1M", RAW_DIR / "ml-1m", tmp_path, log=lambda *_: None)
    for path in paths:
        assert fetch.git_blob_sha1(path) == fetch.PUBLISHED_BLOBS[f"ML-1M/{path.name}"], path.name


# ----------------------------------------------------------------------------- other raw formats

def test_prepare_ml1m_format_synthetic(tmp_path):
    users = [3, 9, 10, 11, 20, 100]  # numeric order 9 < 10 (lexicographic would put 10 first)
    items = list(range(1, 13))
    write_inter(tmp_path / "ml-1m.inter", synthetic(users, items, 55, [13], 14))
    item_lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq"]
    item_lines += [f"{i}\tMovie {i}\t1995\tDrama Comedy" for i in items + [14]]
    item_lines += ["13\tNo Genre\t1995\t"]
    (tmp_path / "ml-1m.item").write_text("\n".join(item_lines) + "\n")
    prep.prepare_dataset("ML-1M", tmp_path, tmp_path / "out", log=lambda *_: None)
    check_synthetic_output(tmp_path / "out", "ML-1M", users, items, lambda r: str(r))


@pytest.mark.parametrize("dataset", ["Amazon_Digital_Music", "Amazon_Books"])
def test_prepare_amazon_format_synthetic(tmp_path, dataset):
    users = ["A10", "A9", "AZ", "A1B", "B07", "A2"]  # string ids: lexicographic order
    items = ["0439023483", "B000002PBH", "1489539042", "0000000011", "B00006690F", "5555991584",
             "B0002X314C", "0312853238", "B000075A20", "0060935464", "B00000IPAC", "0765326353"]
    write_inter(tmp_path / f"{dataset}.inter",
                synthetic(users, items, "ABAD", ["B0NOTITLE0"], "B0RARE0000", lambda r: f"{r:.1f}"))
    header = ("item_id:token\tcategories:token_seq\ttitle:token\tprice:float\tsales_type:token\t"
              "sales_rank:float\tbrand:token")
    item_lines = [header]
    item_lines += [f"{i}\tCDs & Vinyl Pop\t\"Weird\" Title {n}\t\tMusic\t12.0\t"
                   for n, i in enumerate(items + ["B0RARE0000"])]  # empty price/brand: kept
    item_lines += ["B0NOTITLE0\tCDs & Vinyl\t\t9.99\tMusic\t1.0\tX"]
    (tmp_path / f"{dataset}.item").write_text("\n".join(item_lines) + "\n")
    prep.prepare_dataset(dataset, tmp_path, tmp_path / "out", log=lambda *_: None)
    # (ids compare as strings there: the leading zeros of 0439023483 survive)
    check_synthetic_output(tmp_path / "out", dataset, users, items, lambda r: f"{r:.1f}")


def test_prepare_netflix_format_synthetic(tmp_path, monkeypatch):
    candidates = np.arange(1, 21)
    np.random.seed(2024)
    drawn = sorted(np.random.choice(candidates, 7, replace=False).tolist())
    users, bad_user = drawn[:6], drawn[6]
    others = [u for u in candidates.tolist() if u not in drawn]
    items = list(range(1, 13))
    rows = synthetic(users, items, bad_user, [13, 15], 14)
    # Users outside the draw would rescue the rare item and appear themselves if kept.
    rows += [(u, i, "5") for u in others for i in (1, 2, 3, 4, 14)]
    write_inter(tmp_path / "netflix.inter", rows)
    titles = [f"{i},{1990 + i},Title {i}, with, commas" for i in items + [14, 15]]
    titles += ["13,NULL,Amélie, the year unknown"]
    (tmp_path / "movie_titles.csv").write_bytes(("\n".join(titles) + "\n").encode("latin-1"))
    genres = ["movieId,genres"] + [f"{i},Drama|Comedy" for i in items + [13, 14]]  # 15: none
    (tmp_path / "netflix_genres.csv").write_text("\n".join(genres) + "\n")
    monkeypatch.setitem(prep.RAW_FORMATS, "Netflix-1M",
                        replace(prep.RAW_FORMATS["Netflix-1M"], sample_users=7))
    prep.prepare_dataset("Netflix-1M", tmp_path, tmp_path / "out", log=lambda *_: None)
    check_synthetic_output(tmp_path / "out", "Netflix-1M", users, items, lambda r: str(r))


def test_netflix_sample_is_5000_users_of_the_spec():
    fmt = prep.RAW_FORMATS["Netflix-1M"]
    assert (fmt.sample_users, fmt.netflix_items) == (5000, True)
    assert fmt.text_cols == ("title:token", "year:token", "genres:token")


# ----------------------------------------------------------------------------- bring your own

def test_prepare_custom_with_flags_via_cli(tmp_path, capsys):
    users, items = [1, 2, 3, 4, 5, 6], list(range(1, 13))
    write_inter(tmp_path / "mine.inter", synthetic(users, items, 7, [13], 14), timestamp=False)
    out = tmp_path / "data"
    assert dataloader.main(["prepare", "--inter", str(tmp_path / "mine.inter"), "--name", "Mine",
                            "--data_dir", str(out)]) == 0
    # No item file: the text-less item 13 stays (6 positives); rare item 14 goes (4 < 5).
    train = pd.read_csv(split_path(out, "Mine", "train_original"))
    valid = pd.read_csv(split_path(out, "Mine", "validation"))
    test = pd.read_csv(split_path(out, "Mine", "test"))
    assert (len(train) + len(valid) + len(test)) == 72 + 6
    assert 13 in set(pd.concat([train, valid, test])["item_id:token"])
    assert 14 not in set(pd.concat([train, valid, test])["item_id:token"])
    # 11 positives per user: test int(2.2) = 2, validation int(1.1) = 1.
    assert (len(valid), len(test)) == (6, 12)

    assert dataloader.main(["prepare", "--inter", str(tmp_path / "mine.inter"), "--name", "Core4",
                            "--data_dir", str(out), "--core", "4", "--valid_ratio", "0.2",
                            "--test_ratio", "0.3"]) == 0
    frames = [pd.read_csv(split_path(out, "Core4", s)) for s in prep.PREPARED_SPLITS]
    assert 14 in set(pd.concat(frames)["item_id:token"])  # 4 positives pass a 4-core
    # users 1..4 have 12 positives (test 3, validation 2), users 5..6 have 11 (3, 2).
    assert (len(frames[1]), len(frames[2])) == (12, 18)


def test_prepare_custom_with_item_file_and_text_cols(tmp_path):
    users, items = [1, 2, 3, 4, 5, 6], list(range(1, 13))
    write_inter(tmp_path / "mine.inter", synthetic(users, items, 7, [13], 14))
    (tmp_path / "mine.item").write_text("item_id:token\tname:token\tkind:token\n" + "".join(
        f"{i}\tThing {i}\t{'' if i == 13 else 'k'}\n" for i in items + [13, 14]))
    prep.prepare_custom(tmp_path / "mine.inter", "Mine", tmp_path / "out",
                        item_path=tmp_path / "mine.item", log=lambda *_: None)
    check_synthetic_output(tmp_path / "out", "Mine", users, items, lambda r: str(r))
    # Requiring only the name column keeps item 13 (its kind is empty).
    prep.prepare_custom(tmp_path / "mine.inter", "Mine2", tmp_path / "out",
                        item_path=tmp_path / "mine.item", text_cols=["name:token"],
                        log=lambda *_: None)
    frames = [pd.read_csv(split_path(tmp_path / "out", "Mine2", s)) for s in prep.PREPARED_SPLITS]
    assert (pd.concat(frames)["item_id:token"] == 13).sum() == 6


@pytest.mark.parametrize("content, message", [
    ("user_id:token\titem_id:token\n1\t2\n", "missing column(s) rating:float"),
    ("user_id:token\titem_id:token\trating:float\n1\t2\tgood\n", "non-numeric rating"),
])
def test_prepare_rejects_bad_raw_files(tmp_path, content, message):
    (tmp_path / "bad.inter").write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prep.prepare_custom(tmp_path / "bad.inter", "Bad", tmp_path, log=lambda *_: None)


def test_prepare_missing_raw_file_and_bad_flags(tmp_path, capsys):
    with pytest.raises(DataError, match="missing raw file"):
        prep.prepare_dataset("ML-1M", tmp_path, tmp_path, log=lambda *_: None)
    assert dataloader.main(["prepare", "--inter", "x.inter"]) == 2
    assert dataloader.main(["prepare", "--inter", "x.inter", "--name", "X",
                            "--valid_ratio", "0.5", "--test_ratio", "0.6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: --inter needs --name")
    assert err[1].startswith("error: split ratios must be")


# ----------------------------------------------------------------------------- downloads

@needs_shared
def test_download_round_trip_verifies_and_leaves_no_temp(tmp_path, serve):
    base = serve(DATASETS_DIR)
    messages = []
    dataloader.ensure_split_files(tmp_path, "ML-100K", list(SPLITS), base_url=base,
                                  log=messages.append)
    for split in SPLITS:
        path = split_path(tmp_path, "ML-100K", split)
        assert fetch.git_blob_sha1(path) == fetch.PUBLISHED_BLOBS[f"ML-100K/{path.name}"]
    assert leftovers(tmp_path) == []
    assert sum(m.startswith("verified") for m in messages) == 4
    # Present files are used as they are: no server needed the second time.
    dataloader.ensure_split_files(tmp_path, "ML-100K", list(SPLITS),
                                  base_url=closed_port_url(), log=messages.append)


@needs_shared
def test_download_uses_env_base_url(tmp_path, serve, monkeypatch):
    monkeypatch.setenv(fetch.BASE_URL_ENV, serve(DATASETS_DIR) + "/")
    dataloader.ensure_split_files(tmp_path, "Amazon_Digital_Music", ["validation"],
                                  log=lambda *_: None)
    path = split_path(tmp_path, "Amazon_Digital_Music", "validation")
    assert fetch.git_blob_sha1(path) == "6a942ba0108749460403ca53b5fd7d92dcd57c75"


def test_download_blob_mismatch_deletes_file(tmp_path, serve):
    served = tmp_path / "served" / "ML-100K"
    served.mkdir(parents=True)
    (served / "ML-100K_test.csv").write_text(HEADER + "\n1,2,4\n")
    target = tmp_path / "data"
    with pytest.raises(DataError) as err:
        dataloader.ensure_split_files(target, "ML-100K", ["test"], base_url=serve(served.parent),
                                      log=lambda *_: None)
    message = str(err.value)
    assert "rejected: git blob SHA-1" in message
    assert "published f3cbe95698f3cd22627cf92045ff0eb5a0e951f5" in message
    assert "\n" not in message
    assert not split_path(target, "ML-100K", "test").exists()
    assert leftovers(target) == []


@needs_shared
def test_download_404_names_url_and_folder(tmp_path, serve):
    base = serve(DATASETS_DIR)  # ML-1M_train_augment is published but not in the data folder
    with pytest.raises(DataError) as err:
        dataloader.ensure_split_files(tmp_path, "ML-1M", ["train_augment"], base_url=base,
                                      log=lambda *_: None)
    message = str(err.value)
    assert "HTTP 404" in message and f"{base}/ML-1M/ML-1M_train_augment.csv" in message
    assert str(tmp_path / "ML-1M") in message
    assert not split_path(tmp_path, "ML-1M", "train_augment").exists() and leftovers(tmp_path) == []


def test_download_offline_is_one_clear_line(tmp_path):
    url = closed_port_url()
    with pytest.raises(DataError, match=r"cannot reach http://127\.0\.0\.1:\d+/ML-100K/"
                                        r"ML-100K_validation\.csv .*place ML-100K_validation\.csv"):
        dataloader.ensure_split_files(tmp_path, "ML-100K", ["validation"], base_url=url,
                                      log=lambda *_: None)


def test_no_download_and_unpublished_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match=r"ML-100K_test\.csv: allow downloading \(drop "
                                        r"--no_download\) or run python dataloader.py download"):
        dataloader.ensure_split_files(tmp_path, "ML-100K", ["test"], download=False)
    with pytest.raises(DataError, match="not a published file; run refine_llm.py"):
        dataloader.ensure_split_files(tmp_path, "Mine", ["train_augment"])
    with pytest.raises(DataError, match="not a published file; prepare it"):
        dataloader.ensure_split_files(tmp_path, "Mine", ["validation"])


@needs_shared
def test_download_cli_exit_codes(tmp_path, serve, capsys):
    base = serve(DATASETS_DIR)
    args = ["download", "--dataset", "ML-100K", "--splits", "validation", "--data_dir",
            str(tmp_path), "--base_url", base]
    assert dataloader.main(args) == 0
    assert dataloader.main(args) == 0  # present and verified: nothing fetched
    assert "OK       ML-100K_validation.csv" in capsys.readouterr().out
    assert dataloader.main(["download", "--dataset", "ML-1M", "--splits", "train_augment",
                            "--data_dir", str(tmp_path), "--base_url", base]) == 2
    assert capsys.readouterr().err.startswith("error: download failed: HTTP 404")


@pytest.mark.skipif(not (RAW_DIR / "ml-100k" / "ml-100k.inter").is_file(),
                    reason="$REFINE_RAW_DIR/ml-100k is not present")
def test_download_raw_zip_verifies_members(tmp_path, serve):
    served = tmp_path / "bucket" / "MovieLens"
    served.mkdir(parents=True)
    with zipfile.ZipFile(served / "ml-100k.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("ml-100k.inter", "ml-100k.item"):
            zf.write(RAW_DIR / "ml-100k" / name, f"ml-100k/{name}")
    base = serve(tmp_path / "bucket")
    out = fetch.download_raw("ML-100K", tmp_path / "raw", base_url=base, log=lambda *_: None)
    for name in ("ml-100k.inter", "ml-100k.item"):
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == fetch.RAW_SHA256[name]
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item"]

    with zipfile.ZipFile(served / "ml-100k.zip", "w") as zf:  # a tampered item file
        zf.write(RAW_DIR / "ml-100k" / "ml-100k.inter", "ml-100k/ml-100k.inter")
        zf.writestr("ml-100k/ml-100k.item", "item_id:token\n1\n")
    with pytest.raises(DataError, match="ml-100k.item has an unexpected SHA-256"):
        fetch.download_raw("ML-100K", tmp_path / "raw2", base_url=base, log=lambda *_: None)
    assert not (tmp_path / "raw2" / "ml-100k" / "ml-100k.item").exists()
    assert leftovers(tmp_path / "raw2") == []


# ----------------------------------------------------------------------------- validation on load

def write_split_files(folder: Path, name: str, train: str, valid: str, test: str,
                      augment: str = "augment"):
    for split, text in ((f"train_{augment}", train), ("validation", valid), ("test", test)):
        path = split_path(folder, name, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


GOOD_TRAIN = HEADER + "\n1,10,5\n1,11,4.5\n2,10,4\n2,12,0.5\n3,11,3\n"


@pytest.mark.parametrize("text, message", [
    ("user_id:token,rating:float\n1,4\n", r"missing column\(s\) item_id:token"),
    (HEADER + "\n1,10,good\n", r"1 non-numeric or empty rating\(s\), first at data row 1"),
    (HEADER + "\n1,10,\n", r"non-numeric or empty rating"),
    (HEADER + "\n1,10,7\n1,11,4\n", r"1 rating\(s\) outside \[0.5, 1.0"),
    (HEADER + "\n", r"the split is empty"),
    (HEADER + "\n,10,4\n", r"empty user or item id in 1 row"),
    ("", r"cannot be read as CSV"),
])
def test_read_split_rejects_bad_train_files(tmp_path, text, message):
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_split(path, is_train=True)


def test_read_split_rejects_refined_ratings_in_eval_splits(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text(HEADER + "\n1,10,4.5\n")
    with pytest.raises(DataError, match=r"outside \[1.0, 2.0, 3.0, 4.0, 5.0\], e.g. \[4.5\]"):
        read_split(path, is_train=False)


def test_read_split_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="python dataloader.py download --dataset ML-1M"):
        read_split(split_path(tmp_path, "ML-1M", "test"), is_train=False)


def test_duplicates_are_counted_and_first_kept(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(HEADER + "\n1,10,5\n1,10,1\n2,3,4\n1,10,2\n")
    warnings = []
    df = read_split(path, is_train=True, warn=warnings.append)
    assert warnings == ["warning: x.csv: 2 duplicate (user, item) row(s); kept the first of each"]
    assert df.values.tolist() == [["1", "10", 5.0], ["2", "3", 4.0]]


def test_unseen_eval_rows_are_dropped_with_a_count(tmp_path):
    write_split_files(tmp_path, "Tiny", GOOD_TRAIN,
                      HEADER + "\n1,12,5\n9,10,4\n2,99,5\n",  # user 9 and item 99 unseen
                      HEADER + "\n2,11,4\n3,12,2\n")           # rating 2: dropped (positives only)
    warnings = []
    data = load_dataset(tmp_path, "Tiny", warn=warnings.append)
    assert "warning: Tiny_validation.csv: dropped 2 row(s) whose user or item is not in the " \
           "training data" in warnings
    assert "warning: Tiny_test.csv: dropped 1 row(s) with rating < 4" in warnings
    assert (len(data.validation), len(data.test)) == (1, 1)
    assert (data.num_users, data.num_items) == (2, 3)  # T: users 1, 2; items 10, 11, 12


def test_eval_split_with_only_unseen_rows_is_rejected(tmp_path):
    write_split_files(tmp_path, "Tiny", GOOD_TRAIN, HEADER + "\n9,10,4\n", HEADER + "\n1,12,5\n")
    with pytest.raises(DataError, match="Tiny_validation.csv: no row left"):
        load_dataset(tmp_path, "Tiny", warn=lambda *_: None)


def test_cli_stats_table_and_exit_code_2(tmp_path, capsys):
    write_split_files(tmp_path, "Tiny", GOOD_TRAIN, HEADER + "\n1,12,5\n", HEADER + "\n3,10,4\n")
    assert dataloader.main(["stats", "--dataset", "Tiny", "--data_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("refined rows in train_augment: 2 of 5 (40.0%); -> 4.5: 1, -> 0.5: 1; "
            "still 2/3: 1") in out
    row = next(line.split() for line in out.splitlines() if line.startswith("train_augment"))
    assert row[:4] == ["train_augment", "3", "3", "5"]  # users, items, rows
    split_path(tmp_path, "Tiny", "test").write_text(HEADER + "\n1,10,x\n")
    assert dataloader.main(["stats", "--dataset", "Tiny", "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "non-numeric" in err and err.count("\n") == 1


@needs_shared
def test_stats_of_published_ml100k_match_the_spec():
    stats = prep.dataset_stats(DATASETS_DIR, "ML-100K")
    aug = stats.loc["train_augment"]
    assert (aug["r=4.5"], aug["r=0.5"]) == (14103, 7957)  # docs/llm.md: 22,060 refined
    assert stats.loc["train_original", "rows"] == 79683
