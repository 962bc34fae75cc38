"""A protocol that measures dislikes, the data side: ``python dataloader.py dislikes``
(docs/datasets.md, "A dislikes variant").

From a dataset folder ``<D>/`` (published or prepared) it derives a new folder
``<out>/`` (default ``<D>_dislikes``) in which a share of every user's low-rated training
rows is held out of training:
  1. selectable rows: the rows of train_original rated <= ``max_rating`` (the ORIGINAL
     rating: train_augment's 0.5/4.5 are the LLM's guesses about 2/3 rows);
  2. per user with n selectable rows, k = round half up of ``share`` * n (exact decimal
     arithmetic; 0.2: n = 1, 2 -> 0; 3..7 -> 1; 8..12 -> 2): a user's one or two dislikes
     stay in training rather than all of them leaving it;
  3. one ``numpy.random.default_rng(seed)``; users in the project's id order
     (data.schema.sorted_ids), each draws ``permutation(n)`` once and holds out the rows at
     its first k positions — so with one seed a larger share holds out a superset;
  4. the held-out rows leave BOTH train files (train_original and the row-aligned
     train_augment: the same rows in the same order, refused otherwise), so that no model,
     whichever file it trains on, sees them; they are written, with their original ratings,
     to ``<out>_test_dislikes.csv``; validation and test are copied unchanged.
Every file is written line for line from its source (kept lines byte-identical, file
order), so the output is byte-identical for the same sources and parameters.

``variant.json`` says what the folder is: the recipe, its parameters and seed, the source
files (path, SHA-1, git blob, whether each is the published file), counts, and the git blob
of every file written; a run reads it as an input (role ``variant``) and refuses the
folder when a file no longer matches it. The folder's name is never a published dataset's,
so no file of it can be taken for a published one (data/provenance.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from data import checks
from data.protocols import read_json_spec, read_protocol
from data.provenance import file_sha1, git_blob_sha1
from data.registry import DATASETS, PUBLISHED_BLOBS, published_key
from data.schema import ITEM_COL, RATING_COL, USER_COL, DataError, sorted_ids
from data.splits import read_split, split_path

VARIANT_FILE = "variant.json"
KIND = "dislikes_holdout"
TRAIN_FILES = ("train_original", "train_augment")
COPIED = ("validation", "test")
DISLIKES = "test_dislikes"


@dataclass(frozen=True)
class DislikeRecipe:
    """Which rows are held out: per user, ``share`` of the rows of train_original rated
    <= ``max_rating``, drawn with ``seed``."""

    max_rating: float = 2.0
    share: float = 0.2
    seed: int = 2024

    def __post_init__(self):
        if not 1 <= self.max_rating < 4:
            raise DataError(f"--max_rating must be in [1, 4) (rows rated 4 or more are "
                            f"positives, the ground truth), got {self.max_rating:g}")
        if not 0 < self.share <= 1:
            raise DataError(f"--share must be in (0, 1], got {self.share:g}")
        if not 0 <= self.seed < 2 ** 32:
            raise DataError(f"--seed must be in 0..{2 ** 32 - 1}, got {self.seed}")

    def held_out(self, n: int) -> int:
        """How many of a user's ``n`` selectable rows are held out: round half up of
        share * n, in exact decimal arithmetic (no float or banker's rounding surprises)."""
        return int(Fraction(str(self.share)) * n + Fraction(1, 2))


@dataclass
class Source:
    """One source split file: its header line, its data lines (with their line ends) and
    the validated frame whose row k is data line k."""

    role: str
    path: Path
    header: bytes
    lines: list[bytes]
    frame: pd.DataFrame

    def record(self, dataset: str) -> dict:
        key = published_key(dataset, self.role)
        blob = git_blob_sha1(self.path)
        return {"path": key, "bytes": self.path.stat().st_size,
                "sha1": file_sha1(self.path), "git_blob": blob,
                "published": PUBLISHED_BLOBS.get(key) == blob}


def read_source(data_dir, dataset: str, role: str) -> Source:
    """A split file as lines and as a validated frame (data.splits.read_split); refused
    when a line is not one row (duplicate pairs, blank lines, quoted line breaks)."""
    path = split_path(data_dir, dataset, role)
    frame = read_split(path, is_train=role.startswith("train"), warn=lambda line: None)
    raw = path.read_bytes().splitlines(keepends=True)
    header, lines = raw[0], raw[1:]
    if len(lines) != len(frame):
        raise DataError(f"{path}: {len(lines):,} data lines but {len(frame):,} distinct "
                        f"(user, item) rows (duplicate pairs, blank lines or quoted line "
                        f"breaks); the variant copies lines as they are and needs one per pair")
    return Source(role, path, header, lines, frame)


def read_sources(data_dir, dataset: str, with_augment: bool = True) -> dict[str, Source]:
    """train_original, validation, test and (when present and ``with_augment``)
    train_augment of ``dataset``; the two train files must be row-aligned (one-line
    DataError otherwise)."""
    folder = Path(data_dir) / dataset
    if not folder.is_dir():
        raise DataError(f"no dataset folder {folder}: download or prepare {dataset} first "
                        f"(docs/datasets.md)")
    if read_variant(data_dir, dataset) is not None:
        raise DataError(f"{dataset} is already a variant ({VARIANT_FILE}); derive from the "
                        f"dataset it was made from")
    if read_protocol(data_dir, dataset) is not None:
        raise DataError(f"{dataset} is a protocol folder (no validation split, one train "
                        f"file); derive from a dataset with the four split files")
    roles = ["train_original", *COPIED]
    if with_augment and split_path(data_dir, dataset, "train_augment").is_file():
        roles.append("train_augment")
    sources = {role: read_source(data_dir, dataset, role) for role in roles}
    if "train_augment" in sources:
        original, augment = sources["train_original"], sources["train_augment"]
        try:
            checks.check_relabeling(original.frame, augment.frame, original.path, augment.path)
        except DataError as err:
            raise DataError(f"cannot hold the same rows out of both train files, they are not "
                            f"row-aligned; nothing written: {err}") from None
    return sources


def select(original: pd.DataFrame, recipe: DislikeRecipe) -> tuple[np.ndarray, dict]:
    """Positions (ascending, i.e. file order) of the rows of ``original`` held out, and the
    per-user counts (module docstring, steps 1-3)."""
    low = np.flatnonzero(original[RATING_COL].to_numpy() <= recipe.max_rating)
    groups = original.iloc[low].groupby(USER_COL, sort=False).indices
    rng = np.random.default_rng(recipe.seed)
    held, users_held = [], 0
    for user in sorted_ids(list(groups)):
        rows = low[groups[user]]
        order = rng.permutation(len(rows))
        k = recipe.held_out(len(rows))
        held.append(rows[np.sort(order[:k])])
        users_held += k > 0
    picked = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    return picked, {"selectable_rows": len(low), "users_with_selectable_rows": len(groups),
                    "users_with_held_out_rows": int(users_held), "held_out_rows": len(picked)}


def split_lines(source: Source, held: np.ndarray) -> tuple[bytes, bytes]:
    """(the file minus the held-out lines, the header plus the held-out lines)."""
    out = np.ones(len(source.lines), dtype=bool)
    out[held] = False
    kept = b"".join(line for line, keep in zip(source.lines, out) if keep)
    gone = b"".join(source.lines[i] for i in held)
    if gone and not gone.endswith(b"\n"):  # the source's last line had no line end
        gone += b"\n"
    return source.header + kept, source.header + gone


def check_variant(sources: dict[str, Source], held: np.ndarray, out: str) -> dict:
    """No held-out pair stays in a train file or is in validation/test (DataError); the
    counts of the held-out rows by rating and of those whose item has left T."""
    original = sources["train_original"].frame
    keep = np.ones(len(original), dtype=bool)
    keep[held] = False
    gone = original.iloc[held]
    for role in TRAIN_FILES:
        if role in sources and checks.pair_keys(
                sources[role].frame[keep]).isin(checks.pair_keys(gone)).any():
            raise DataError(f"{sources[role].path.name}: a held-out pair remains in it")
    checks.check_overlap([(f"{out}_{DISLIKES}.csv", gone),
                          *((sources[r].path.name, sources[r].frame) for r in COPIED)])
    counts = {"held_out_by_original_rating": _by_rating(gone)}
    if "train_augment" in sources:
        counts["held_out_by_train_augment_rating"] = _by_rating(
            sources["train_augment"].frame.iloc[held])
    for role in (r for r in TRAIN_FILES if r in sources):
        rest = sources[role].frame[keep]
        in_t = rest[(rest[RATING_COL] >= 4) | (rest[RATING_COL] <= 1)]
        counts[f"held_out_items_outside_T_of_{role}"] = int(
            (~gone[ITEM_COL].isin(in_t[ITEM_COL])).sum())
    return counts


def _by_rating(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame[RATING_COL].value_counts().sort_index()
    return {f"{rating:g}": int(n) for rating, n in counts.items()}


def blob_of(data: bytes) -> str:
    """The git blob SHA-1 of bytes (data.provenance.git_blob_sha1 of a file)."""
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def build_variant(sources: dict[str, Source], dataset: str, out: str,
                  recipe: DislikeRecipe) -> tuple[dict[str, bytes], dict]:
    """The variant folder's files (name -> bytes, variant.json last) and its counts."""
    held, counts = select(sources["train_original"].frame, recipe)
    files = {}
    for role in (r for r in TRAIN_FILES if r in sources):
        files[f"{out}_{role}.csv"], gone = split_lines(sources[role], held)
        if role == "train_original":
            dislikes = gone  # the original ratings
    for role in COPIED:
        files[f"{out}_{role}.csv"] = sources[role].header + b"".join(sources[role].lines)
    files[f"{out}_{DISLIKES}.csv"] = dislikes
    counts.update(check_variant(sources, held, out))
    counts["rows"] = {role: {"source": len(sources[role].lines),
                             "variant": len(sources[role].lines) - (
                                 len(held) if role in TRAIN_FILES else 0)}
                      for role in (*TRAIN_FILES, *COPIED) if role in sources}
    spec = variant_spec(sources, dataset, out, recipe, counts)
    spec["files"] = {name: blob_of(data) for name, data in files.items()}
    files[VARIANT_FILE] = (json.dumps(spec, indent=2) + "\n").encode("utf-8")
    return files, counts


def variant_spec(sources: dict[str, Source], dataset: str, out: str,
                 recipe: DislikeRecipe, counts: dict) -> dict:
    """What variant.json says, but the written files' blobs: no time, no absolute path,
    so that the same inputs give the same bytes."""
    made_by = (f"python dataloader.py dislikes --dataset {dataset} --out_name {out} "
               f"--max_rating {recipe.max_rating:g} --share {recipe.share:g} "
               f"--seed {recipe.seed}")
    return {
        "variant": KIND, "dataset": out, "derived_from": dataset, "published": False,
        "what": (f"NOT the published {dataset}: per user, a share of the train rows rated "
                 f"<= {recipe.max_rating:g} is held out of both train files into "
                 f"{out}_{DISLIKES}.csv (their original ratings); validation and test are "
                 f"{dataset}'s, unchanged"),
        "made_by": made_by,
        "recipe": {
            "selectable": "rows of train_original rated <= max_rating (the original "
                          "rating)",
            "per_user": "k = floor(share * n + 1/2) of the user's n selectable rows "
                        "(round half up, exact decimal share)",
            "draw": "one numpy.random.default_rng(seed); users in ascending id order "
                    "(numeric when every id is an integer); each draws permutation(n) "
                    "and holds out the rows at its first k positions",
            "held_out_of": [r for r in TRAIN_FILES if r in sources],
            "copied_unchanged": list(COPIED)},
        "parameters": {"max_rating": recipe.max_rating, "share": recipe.share,
                       "seed": recipe.seed},
        "sources": {role: (sources[role].record(dataset) if role in sources else None)
                    for role in (*TRAIN_FILES, *COPIED)},
        "counts": counts}


def write_folder(folder: Path, files: dict[str, bytes], log=print) -> bool:
    """Write ``files`` into the new ``folder`` (built under a temp name, then renamed: never
    half a folder). A folder already holding these bytes is left alone (False); one holding
    anything else is refused."""
    if folder.exists():
        if not folder.is_dir():
            raise DataError(f"{folder} exists and is not a folder; choose another --out_name")
        differ = next((name for name, data in files.items() if not (folder / name).is_file()
                       or (folder / name).read_bytes() != data), None)
        if differ is None:
            log(f"{folder} already holds this variant, byte for byte; nothing written")
            return False
        if any(folder.iterdir()):
            raise DataError(f"{folder} exists and is not this variant ({differ} is missing or "
                            f"differs: other sources or parameters?); delete it or choose "
                            f"another --out_name")
        folder.rmdir()
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir(parents=True)
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return True


def check_out_name(dataset: str, out: str) -> None:
    if out == dataset or out in DATASETS:
        raise DataError(f"--out_name {out}: the variant needs a name of its own, not a "
                        f"published dataset's nor its source's (default {dataset}_dislikes)")
    if Path(out).name != out or out.startswith(".") or not out:
        raise DataError(f"--out_name {out!r}: a plain folder name, please")


def derive(data_dir, dataset: str, out: str | None = None, recipe: DislikeRecipe =
           DislikeRecipe(), out_dir=None, with_augment: bool = True, log=print) -> Path:
    """Derive the dislikes variant of ``<data_dir>/<dataset>`` as ``<out_dir>/<out>/``
    (``out_dir`` defaults to ``data_dir``, ``out`` to ``<dataset>_dislikes``; without
    ``with_augment`` no train_augment, for a new LLM step on the variant) and print a
    stats line; returns the folder."""
    out = out or f"{dataset}_dislikes"
    check_out_name(dataset, out)
    sources = read_sources(data_dir, dataset, with_augment)
    files, counts = build_variant(sources, dataset, out, recipe)
    folder = Path(out_dir or data_dir) / out
    if write_folder(folder, files, log):
        log(f"wrote {folder}/: {', '.join(files)}")
    log(stats_line(out, dataset, recipe, counts))
    return folder


def stats_line(out: str, dataset: str, recipe: DislikeRecipe, counts: dict) -> str:
    rows = counts["rows"]["train_original"]
    return (f"{out}: held out {counts['held_out_rows']:,} of {counts['selectable_rows']:,} "
            f"train rows rated <= {recipe.max_rating:g} ({recipe.share:g} per user, seed "
            f"{recipe.seed}); {counts['users_with_held_out_rows']:,} of "
            f"{counts['users_with_selectable_rows']:,} users with such rows have held-out "
            f"dislikes; train files {rows['source']:,} -> {rows['variant']:,} rows; 0 "
            f"held-out pairs in train, validation or test of {dataset}")


# ----------------------------------------------------------------------------- reading a variant

def read_variant(data_dir, dataset: str) -> dict | None:
    """The folder's variant.json, or None for a folder that is no variant."""
    path = Path(data_dir) / dataset / VARIANT_FILE
    spec = read_json_spec(path)
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("files"), dict) \
            or not isinstance(spec.get("derived_from"), str):
        raise DataError(f"{path}: not a variant file of python dataloader.py dislikes (no "
                        f"\"files\" or \"derived_from\")")
    return spec


def variant_inputs(data_dir, dataset: str) -> list[tuple[str, Path]]:
    """[("variant", variant.json)] for a variant folder whose files are still the ones it
    records (DataError naming the first that is not), else []."""
    spec = read_variant(data_dir, dataset)
    if spec is None:
        return []
    folder = Path(data_dir) / dataset
    for name, blob in spec["files"].items():
        path = folder / name
        if path.is_file() and git_blob_sha1(path) != blob:
            raise DataError(f"{path} is not the file {VARIANT_FILE} records (git blob "
                            f"{str(blob)[:12]}): it changed after the variant was derived; "
                            f"derive it again ({spec.get('made_by', 'dataloader.py dislikes')})")
    return [("variant", folder / VARIANT_FILE)]


def base_dataset(data_dir, dataset: str) -> str:
    """The dataset a variant folder was derived from (its defaults and item texts are
    that dataset's), else ``dataset`` itself."""
    spec = read_variant(data_dir, dataset)
    return spec["derived_from"] if spec is not None else dataset


# ----------------------------------------------------------------------------- command line

def add_parser(sub, common) -> None:
    """``python dataloader.py dislikes``."""
    p = sub.add_parser("dislikes", parents=[common], help="derive <D>_dislikes: a share of "
                       "each user's low-rated train rows held out into <D>_test_dislikes.csv "
                       "(docs/datasets.md)")
    p.add_argument("--dataset", required=True,
                   help="the source folder under --data_dir (published or prepared)")
    p.add_argument("--out_name", help="the variant's folder name (default <dataset>_dislikes)")
    p.add_argument("--out_dir", help="where to write it (default --data_dir)")
    p.add_argument("--max_rating", type=float, default=2.0,
                   help="selectable: train_original rows rated <= this (default 2)")
    p.add_argument("--share", type=float, default=0.2,
                   help="held out per user: round half up of share * n (default 0.2)")
    p.add_argument("--seed", type=int, default=2024, help="numpy default_rng seed")
    p.add_argument("--without_augment", action="store_true", help="write no train_augment "
                   "(then relabel the variant's own train_original with refine_llm.py)")


def command(args, data_dir: Path) -> int:
    derive(data_dir, args.dataset, args.out_name,
           DislikeRecipe(args.max_rating, args.share, args.seed), args.out_dir,
           with_augment=not args.without_augment)
    return 0
