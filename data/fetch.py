"""Fetching data files over HTTP with verification: the published split files (git blob
SHA-1s in data/registry.py) and RecBole's raw zips.

Every download streams into a temp file next to its destination and is renamed into place
only after it verified; a failed check deletes it. Errors are one line naming the URL and
the folder where the file can be placed by hand.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

from tqdm import tqdm

from data.prepare import RAW_FORMATS, raw_format
from data.provenance import git_blob_sha1
from data.registry import (NETFLIX_GENRES, NETFLIX_TITLES, PUBLISHED_BLOBS, PUBLISHED_COMMIT,
                           PUBLISHED_REPO, RawFormat, published_key)
from data.schema import DataError
from data.splits import split_path
from data.transfer import Limits, copy_url, remove_stale_parts

DEFAULT_BASE_URL = (f"https://raw.githubusercontent.com/{PUBLISHED_REPO}/{PUBLISHED_COMMIT}/"
                    f"dataset")
BASE_URL_ENV = "REFINE_BASE_URL"
RAW_BASE_URL = "https://recbole.s3-accelerate.amazonaws.com/ProcessedDatasets"
RAW_BASE_URL_ENV = "REFINE_RAW_BASE_URL"

# SHA-256 of raw files whose official bytes we know (RecBole's ml-100k.zip members).
RAW_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


def _fetch(url: str, dest: Path, verify, hand_hint: str, limits: Limits | None = None) -> None:
    """Stream ``url`` into a temp file next to ``dest`` within ``limits`` (data/transfer.py);
    ``verify(tmp)`` returns an error text or None; only a verified file is renamed to
    ``dest``. The temp file goes on every way out (an error, the deadline, the size cap,
    Ctrl-C); one left by a killed earlier download of ``dest`` goes at the next."""
    limits = limits or Limits()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"cannot write {dest}: a part of {dest.parent} is a file, not a "
                        f"folder (check --data_dir / --raw_dir)") from None
    remove_stale_parts(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")  # same folder: rename is atomic
    try:
        with open(tmp, "wb") as out:
            copy_url(url, out, limits, hand_hint, progress=lambda total: tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                mininterval=0.5))
        problem = verify(tmp)
        if problem:
            raise DataError(f"download of {url} rejected: {problem}; deleted it, nothing "
                            f"written to {dest}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_base_url(base_url: str | None = None) -> str:
    """``--base_url`` if given, else ``$REFINE_BASE_URL``, else the pinned upstream commit."""
    return (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def download_split(data_dir, dataset: str, split: str, base_url: str | None = None,
                   log=print, limits: Limits | None = None) -> Path:
    """Download one published split file into ``data_dir`` and verify its git blob SHA-1."""
    key = published_key(dataset, split)
    if key not in PUBLISHED_BLOBS:
        raise DataError(f"{key} is not a published file (published datasets: "
                        f"{', '.join(RAW_FORMATS)}); prepare it with python dataloader.py prepare")
    dest = split_path(data_dir, dataset, split)
    return download_verified(f"{resolve_base_url(base_url)}/{key}", dest, PUBLISHED_BLOBS[key],
                             log, limits)


def download_verified(url: str, dest: Path, expected_blob: str, log=print,
                      limits: Limits | None = None) -> Path:
    """Download ``url`` to ``dest``, kept only when its git blob SHA-1 is ``expected_blob``."""
    def verify(tmp: Path) -> str | None:
        got = git_blob_sha1(tmp)
        if got != expected_blob:
            return f"git blob SHA-1 {got} != published {expected_blob}"
        with open(tmp, "rb") as f:  # raw.githubusercontent serves LFS pointers as-is
            if f.read(40).startswith(b"version https://git-lfs"):
                return "the server sent a Git LFS pointer, not the data"
        return None

    log(f"downloading {url}")
    _fetch(url, dest, verify, f"to work offline, place {dest.name} in {dest.parent}/ by hand",
           limits)
    log(f"verified {dest} (git blob {expected_blob})")
    return dest


def ensure_split_files(data_dir, dataset: str, splits: list[str], download: bool = True,
                       base_url: str | None = None, log=print,
                       limits: Limits | None = None) -> None:
    """Make sure every split file of ``dataset`` exists in ``data_dir``: missing published
    files are downloaded and verified (unless ``download`` is False); otherwise DataError
    says which file is missing and how to get it. Existing files are used as they are."""
    for split in splits:
        path = split_path(data_dir, dataset, split)
        if path.is_file():
            continue
        key = published_key(dataset, split)
        if key not in PUBLISHED_BLOBS:
            how = ("run refine_llm.py to write it" if split == "train_augment" else
                   "prepare it with python dataloader.py prepare")
            raise DataError(f"missing data file {path}: not a published file; {how}")
        if not download:
            raise DataError(f"missing data file {path}: allow downloading (drop --no_download) "
                            f"or run python dataloader.py download --dataset {dataset} "
                            f"--data_dir {Path(data_dir)}, or place it there by hand")
        download_split(data_dir, dataset, split, base_url=base_url, log=log, limits=limits)


def download_raw(dataset: str, raw_dir, base_url: str | None = None, log=print,
                 limits: Limits | None = None) -> Path:
    """Fetch RecBole's zip of ``dataset`` and extract its .inter/.item files into
    ``raw_dir/<stem>/``; files with a known SHA-256 are verified."""
    fmt = raw_format(dataset)
    out_dir = Path(raw_dir) / fmt.stem
    base = (base_url or os.environ.get(RAW_BASE_URL_ENV) or RAW_BASE_URL).rstrip("/")
    url = f"{base}/{fmt.zip_name}"
    zip_path = out_dir / Path(fmt.zip_name).name

    def verify(tmp: Path) -> str | None:
        if not zipfile.is_zipfile(tmp):
            return "not a zip file"
        with zipfile.ZipFile(tmp) as zf:
            names = [n for n in zf.namelist() if Path(n).name in _raw_names(fmt)
                     and not n.endswith("/")]
            damaged = zf.testzip()  # every member's CRC
            if damaged:
                return f"{damaged} in the zip is damaged (CRC mismatch)"
            if f"{fmt.stem}.inter" not in {Path(n).name for n in names}:
                return f"the zip holds no {fmt.stem}.inter"
            for name in names:
                known = RAW_SHA256.get(Path(name).name)
                if known and hashlib.sha256(zf.read(name)).hexdigest() != known:
                    return f"{Path(name).name} has an unexpected SHA-256"
        return None

    log(f"downloading {url}")
    _fetch(url, zip_path, verify, f"to work offline, download it by hand and extract "
                                   f"{fmt.stem}.inter and {fmt.stem}.item into {out_dir}/",
           limits)
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            if Path(name).name in _raw_names(fmt) and not name.endswith("/"):
                dest = out_dir / Path(name).name
                part = dest.with_name(f".{dest.name}.part")
                try:
                    part.write_bytes(zf.read(name))
                    os.replace(part, dest)
                finally:  # Ctrl-C or a full disk while extracting
                    part.unlink(missing_ok=True)
                log(f"extracted {dest}")
    zip_path.unlink()
    if fmt.netflix_items:
        log(f"Netflix also needs {NETFLIX_TITLES} (Kaggle: netflix-inc/netflix-prize-data) and "
            f"{NETFLIX_GENRES} (GitHub: tommasocarraro/netflix-prize-with-genres) in {out_dir}/")
    return out_dir


def _raw_names(fmt: RawFormat) -> set[str]:
    return {f"{fmt.stem}.inter", f"{fmt.stem}.item"}


def check_published(paths, dataset: str, log=print) -> bool:
    """Compare prepared files with the published git blob SHA-1s; True when all match."""
    ok = True
    for path in paths:
        expected = PUBLISHED_BLOBS.get(f"{dataset}/{Path(path).name}")
        got = git_blob_sha1(Path(path))
        same = got == expected
        ok &= same
        log(f"{'OK      ' if same else 'MISMATCH'} {Path(path).name} {got}"
            f"{'' if same else f' (published {expected})'}")
    return ok
