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

from data.registry import PUBLISHED_BLOBS


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
    inside it or beside it (``in_data_dir``, ../raw/...; so a moved data folder still
    matches), else as given (an item file, a text cache); ``published`` is True only when
    its name is a published file's and its bytes are that file's."""

    role: str
    path: str
    bytes: int
    git_blob: str
    published: bool
    in_data_dir: bool = True

    @property
    def published_blob(self) -> str | None:
        return PUBLISHED_BLOBS.get(self.path)

    def header_line(self) -> str:
        """``input <role>: <path> (<bytes> bytes, git blob <sha1[:12]>, <status>)``."""
        if self.published:
            status = "published"
        elif self.role == "variant":
            status = "the recipe of a derived variant: NOT published data"
        elif self.published_blob:
            status = f"NOT the published file, which is git blob {self.published_blob[:12]}"
        else:
            status = "not a published file"
        return (f"input {self.role}: {self.path} ({self.bytes} bytes, git blob "
                f"{self.git_blob[:12]}, {status})")


def record_file(role: str, path: Path, data_dir: Path | None = None) -> FileRecord:
    path = Path(path)
    shown = relative_to_data(path, Path(data_dir)) if data_dir is not None else None
    blob = git_blob_sha1(path)
    return FileRecord(role, shown or path.as_posix(), path.stat().st_size, blob,
                      PUBLISHED_BLOBS.get(shown) == blob, shown is not None or data_dir is None)


def relative_to_data(path: Path, data_dir: Path) -> str | None:
    """``path`` relative to the data folder when it lies inside it, or as ../<name>/...
    when an absolute ``path`` lies beside it (a raw folder next to the split folder); else
    None (a relative path outside it stays as given). Tried lexically first, so a
    symlinked data folder or file keeps its name inside it."""
    for inside, root in ((path, data_dir), (path.resolve(), data_dir.resolve())):
        beside = ((root.parent, "../"),) if path.is_absolute() and len(root.parts) > 2 \
            else ()  # a relative path stays as given; nothing is "beside" /data
        for base, prefix in ((root, ""), *beside):
            try:
                rel = inside.relative_to(base)
            except ValueError:
                continue
            if prefix and (not rel.parts or rel.parts[0] == root.name):
                continue  # the data folder itself, seen from its parent: not "beside"
            return prefix + rel.as_posix()
    return None


def located(record: dict, data_dir: Path) -> Path:
    """Where a recorded input is now: under ``data_dir`` when it was inside the data
    folder, else at its recorded path."""
    inside = record.get("in_data_dir", True)
    return Path(data_dir) / record["path"] if inside else Path(record["path"])


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
    if any(r.role == "variant" for r in records):
        return ("inputs: a variant derived by python dataloader.py dislikes, NOT the published "
                "data (variant.json records its recipe, seed and source files) — these numbers "
                "are not comparable with the published ones")
    if any(r.role == "protocol" for r in records):
        return ("inputs: a protocol folder made by python dataloader.py prepare --protocol "
                "(protocol.json names its published sources and their git blobs)")
    return "inputs: files of an unpublished dataset (see the input lines of the header)"


CHECK_ONLY_ROLES = ("train_original",)  # read to check train_augment, never trained on


def first_change(saved: list[dict], now: list[FileRecord]) -> str | None:
    """What differs between the records a run started with and the files now, or None.
    A file read only to check another (train_original) may come, go or change: what the
    run trains on is the same as long as the others are."""
    current = {r.role: r for r in now if r.role not in CHECK_ONLY_ROLES}
    if not isinstance(saved, list) or not all(
            isinstance(r, dict) and {"role", "path", "bytes", "git_blob"} <= set(r) for r in saved):
        return "the run's recorded inputs are damaged (config.json was edited?)"
    saved = [r for r in saved if r["role"] not in CHECK_ONLY_ROLES]
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
