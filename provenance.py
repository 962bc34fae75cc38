"""Which files a run read: path, size, git blob SHA-1, and whether it is the published file.

The published ReFINe++ split files are identified by their git blob SHA-1 — the SHA-1 of
``b"blob <size>\\0" + data``, which ``git hash-object FILE`` prints — so a download, a copy
or a file prepared from the raw data can be checked byte for byte. Every run records one
``FileRecord`` per input file (log header, config.json, metrics.json); ``--resume`` and
compare.py compare them.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

# Git blob SHA-1 of every published split file (upstream repository
# Chanwoo-Jeong-2000/ReFINe_plus, folder dataset/, at datasets_fetch.PUBLISHED_COMMIT).
PUBLISHED_BLOBS = {
    "Amazon_Books/Amazon_Books_test.csv": "a3ac9499f5124ddef4d8eba80047736a2fc53a58",
    "Amazon_Books/Amazon_Books_train_augment.csv": "e9b9200d12833f95584cd2279feefe0987ffa1d4",
    "Amazon_Books/Amazon_Books_train_original.csv": "cc9a161e2c5055808411b7d8395ac1f6dfb91c6d",
    "Amazon_Books/Amazon_Books_validation.csv": "3fe96a092f12828ed143f29863fbdde88cd871ee",
    "Amazon_Digital_Music/Amazon_Digital_Music_test.csv":
        "182119cc4c3f601d253cfef62bc89c875b7c4ad8",
    "Amazon_Digital_Music/Amazon_Digital_Music_train_augment.csv":
        "dac24d3d94cf865b015dfbc5e7e16df854b7c0f2",
    "Amazon_Digital_Music/Amazon_Digital_Music_train_original.csv":
        "2fd87cad23f736fddce491ddffbcb057b8ea05ef",
    "Amazon_Digital_Music/Amazon_Digital_Music_validation.csv":
        "6a942ba0108749460403ca53b5fd7d92dcd57c75",
    "ML-100K/ML-100K_test.csv": "f3cbe95698f3cd22627cf92045ff0eb5a0e951f5",
    "ML-100K/ML-100K_train_augment.csv": "0cc04baaf46fcc4ee59a6adbb999d8bf56adb8e9",
    "ML-100K/ML-100K_train_original.csv": "38def0b51e296992900303f611ff2bf85c1a0b73",
    "ML-100K/ML-100K_validation.csv": "dc14ca7fcd367346f249d6aeb23a3e09f20cbef1",
    "ML-1M/ML-1M_test.csv": "c1407e658b3e0815ace9822ea64dbfed13165d6a",
    "ML-1M/ML-1M_train_augment.csv": "40e29bb86d51752fe10a7bc1cd2e3d96c53bbbda",
    "ML-1M/ML-1M_train_original.csv": "e3baf41eef82249f4af08dc0e9e846a84892a7a0",
    "ML-1M/ML-1M_validation.csv": "474b0a7448e43441e02b924b4fc446f5492654f8",
    "Netflix-1M/Netflix-1M_test.csv": "d1b455f977e866fa707819dbb1df54ae1e563390",
    "Netflix-1M/Netflix-1M_train_augment.csv": "771c07bced85dba460ce294a103b2bfa55d1c7ad",
    "Netflix-1M/Netflix-1M_train_original.csv": "f4341eb1be8f1d794297e33f6ef3f022fc138b1e",
    "Netflix-1M/Netflix-1M_validation.csv": "1d16d5157068acc8230ad6b234b5f6992401689d",
}


def _digest(path: Path, digest) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """SHA-1 of ``b"blob <size>\\0" + data`` (what ``git hash-object`` prints)."""
    path = Path(path)
    return _digest(path, hashlib.sha1(f"blob {path.stat().st_size}\0".encode()))


def file_sha1(path: Path) -> str:
    """Plain SHA-1 of the file's bytes (refine_llm.py's manifests, the text cache keys)."""
    return _digest(Path(path), hashlib.sha1())


@dataclass(frozen=True)
class FileRecord:
    """One input file of a run. ``path`` is relative to the data folder when it lies
    inside it (so a moved data folder still matches), else as given; ``published`` is True
    only when its name is a published file's and its bytes are that file's."""

    role: str
    path: str
    bytes: int
    git_blob: str
    published: bool

    @property
    def published_blob(self) -> str | None:
        return PUBLISHED_BLOBS.get(self.path)

    def header_line(self) -> str:
        """``input <role>: <path> (<bytes> bytes, git blob <sha1[:12]>, <status>)``."""
        if self.published:
            status = "published"
        elif self.published_blob:
            status = f"NOT the published file, which is git blob {self.published_blob[:12]}"
        else:
            status = "not a published file"
        return (f"input {self.role}: {self.path} ({self.bytes} bytes, git blob "
                f"{self.git_blob[:12]}, {status})")


def record_file(role: str, path: Path, data_dir: Path | None = None) -> FileRecord:
    path = Path(path)
    shown = path.as_posix()
    if data_dir is not None:
        try:
            shown = path.resolve().relative_to(Path(data_dir).resolve()).as_posix()
        except ValueError:  # outside the data folder (an item file, a text cache)
            pass
    blob = git_blob_sha1(path)
    return FileRecord(role, shown, path.stat().st_size, blob,
                      PUBLISHED_BLOBS.get(shown) == blob)


def as_dicts(records: list[FileRecord]) -> list[dict]:
    return [asdict(r) for r in records]


def not_published(records: list[FileRecord]) -> list[FileRecord]:
    """The records of files that have a published counterpart but other bytes."""
    return [r for r in records if r.published_blob and not r.published]


def final_line(records: list[FileRecord]) -> str:
    """The line of the final block that says whether the numbers are of the published data."""
    changed = not_published(records)
    if changed:
        return ("inputs: NOT the published file(s) "
                + ", ".join(Path(r.path).name for r in changed)
                + " — these numbers are not comparable with the published ones")
    if any(r.published for r in records):
        return "inputs: the published files (git blob SHA-1 verified)"
    return "inputs: files of an unpublished dataset (see the input lines of the header)"


def first_change(saved: list[dict], now: list[FileRecord]) -> str | None:
    """What differs between the records a run started with and the files now, or None."""
    current = {r.role: r for r in now}
    for old in saved:
        new = current.get(old["role"])
        if new is None:
            return f"{old['path']} is no longer read"
        if (new.git_blob, new.bytes) != (old["git_blob"], old["bytes"]):
            return (f"{Path(new.path).name} changed since the run started (git blob "
                    f"{old['git_blob'][:12]}, {old['bytes']} bytes then; "
                    f"{new.git_blob[:12]}, {new.bytes} bytes now)")
    extra = sorted(set(current) - {r["role"] for r in saved})
    if extra:
        return f"{current[extra[0]].path} is read now but was not when the run started"
    return None


def fingerprint(records: list[dict]) -> str:
    """A short name of a set of inputs: 8 hex digits of the SHA-1 of their git blobs."""
    joined = "\n".join(f"{r['role']}={r['git_blob']}" for r in sorted(records,
                                                                         key=lambda r: r["role"]))
    return hashlib.sha1(joined.encode()).hexdigest()[:8]
