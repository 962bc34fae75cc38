"""The baselines' own evaluation protocols, prepared as dataset folders a run can train on.

``ml1m_random_split`` (SiReN's and the LLM-PNGNN report's ML-1M protocol; docs/datasets.md):
- split K: the published test file K (``userId,movieId,rating``, no header; 20 % of the
  ML-1M ratings), downloaded from SiReN's repository at a pinned commit and verified by its
  git blob SHA-1; train = every ML-1M rating whose (user, movie) pair is not in test K;
- threshold 3.5: train ratings > 3.5 are positive, the others negative (with
  ``--dataset_augment original``: 4/5 positive, 1/2/3 the negative graph);
- ground truth = test rows rated > 3.5; no validation split: a run trains a fixed number of
  epochs (60) and logs the test metrics every ``--evaluation_step`` (5) epochs;
- the catalogue is every user and item of train and test (both codes index all ML-1M ids
  and never recommend an item that appears in neither split): a test-only item can be
  recommended, and every test positive counts in |GT_u|.

The folder ``<name>/`` holds ``<name>_train_original.csv``, ``<name>_test.csv`` (all test
rows; the loader keeps those > 3.5 as ground truth) and ``protocol.json``, which records
the sources and the git blob of both written files: a run refuses a folder whose files no
longer match it.

``--augment_edges`` adds the LLM-PNGNN authors' LLM edges (``augmented_edges.pt`` of their
repository, verified by git blob, or the same rows as CSV ``userId,movieId,rating``): their
``main.py`` concatenates them to train split 1. An edge whose pair already has a train row
replaces that row's rating (their concatenation keeps both rows; here one row per pair);
an edge whose pair is in the test split stays, as in their code — recorded and said in
every run's log (the pair is masked at evaluation, so a positive there cannot be hit).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from data.provenance import file_sha1, git_blob_sha1
from data.registry import PROTOCOLS, RandomSplitProtocol
from data.schema import ITEM_COL, RATING_COL, USER_COL, DataError
from data import checks
from data.splits import read_split, split_path
from runs.files import atomic_write, atomic_write_text

PROTOCOL_FILE = "protocol.json"
RAW_COLUMNS = ["userId", "movieId", "rating"]


def protocol_path(data_dir, dataset: str) -> Path:
    return Path(data_dir) / dataset / PROTOCOL_FILE


def read_json_spec(path: Path):
    """A folder's description file (protocol.json, a variant's variant.json) parsed, None
    when there is none; DataError when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not readable as JSON ({err})") from None


def read_protocol(data_dir, dataset: str) -> dict | None:
    """The folder's protocol.json, or None for an ordinary dataset folder."""
    path = protocol_path(data_dir, dataset)
    spec = read_json_spec(path)
    if spec is None:
        return None
    needed = {"protocol", "split", "files", "threshold", "epochs", "evaluation_step"}
    if not isinstance(spec, dict) or not needed <= set(spec):
        raise DataError(f"{path}: not a protocol file of python dataloader.py prepare "
                        f"--protocol (missing {sorted(needed - set(spec or {}))})")
    return spec


def check_protocol_files(data_dir, dataset: str, spec: dict) -> None:
    """The train and test files are the ones protocol.json was written with."""
    files = spec["files"] if isinstance(spec["files"], dict) else {}
    if set(files) != {"train_original", "test"}:
        raise DataError(f"{protocol_path(data_dir, dataset)}: its \"files\" must record "
                        f"train_original and test; prepare the folder again (--overwrite)")
    for split, blob in files.items():
        path = split_path(data_dir, dataset, split)
        if not path.is_file():
            raise DataError(f"missing data file {path}: prepare the folder again with "
                            f"python dataloader.py prepare --protocol {spec['protocol']}")
        if git_blob_sha1(path) != blob:
            raise DataError(f"{path} is not the file {PROTOCOL_FILE} records (git blob "
                            f"{blob[:12]}): it changed after preparing; prepare the folder "
                            f"again (--overwrite)")


def read_protocol_splits(data_dir, dataset: str, dataset_augment: str, spec: dict, warn,
                          allow_overlap: bool):
    """A protocol folder's train and test (no validation: an empty frame), checked against
    protocol.json; the test pairs its LLM edges put into train are the recorded ones."""
    if dataset_augment != "original":
        raise DataError(f"{dataset} is a {spec['protocol']} folder: it has train_original only "
                        f"(use --dataset_augment original)")
    check_protocol_files(data_dir, dataset, spec)
    paths = {role: split_path(data_dir, dataset, role) for role in ("train_original", "test")}
    train = read_split(paths["train_original"], is_train=True, warn=warn)
    test = read_split(paths["test"], is_train=False, warn=warn)
    allowed = int(spec.get("allowed_test_overlap", 0))
    overlap = int(checks.pair_keys(test).isin(checks.pair_keys(train)).sum())
    if overlap != allowed and not allow_overlap:
        checks.check_overlap([(p.name, df) for p, df in ((paths["train_original"], train),
                                                         (paths["test"], test))], warn=warn)
    if overlap:
        warn(f"warning: {overlap} test pair(s) are also train rows ({PROTOCOL_FILE}: "
             f"the LLM edges the authors added to train name them; masked at evaluation)")
    empty = test.iloc[0:0]
    files = [("train_original", paths["train_original"]), ("validation", None),
             ("test", paths["test"]), ("protocol", protocol_path(data_dir, dataset))]
    return train, empty, test, files


def folder_name(protocol: RandomSplitProtocol, split: int, with_edges: bool) -> str:
    return f"{protocol.base}_split{split}" + ("_llm" if with_edges else "")


def read_ratings_file(path: Path) -> pd.DataFrame:
    """A ``userId,movieId,rating`` file without header (the splits' .dat format)."""
    try:
        df = pd.read_csv(path, names=RAW_COLUMNS, header=None, dtype=np.int64)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: not a userId,movieId,rating file without header "
                        f"({str(err).splitlines()[0]})") from None
    return df


def read_edges(path: Path, protocol: RandomSplitProtocol, log=print) -> tuple[pd.DataFrame, dict]:
    """The authors' LLM edges: their pickled ``augmented_edges.pt`` (unpickled only after its
    git blob matched the pinned one) or a CSV with a ``userId,movieId,rating`` header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--augment_edges {path}: no such file")
    blob = git_blob_sha1(path)
    if path.suffix == ".pt":
        if blob != protocol.edges_blob:
            raise DataError(f"--augment_edges {path}: git blob {blob} is not the authors' "
                            f"{protocol.edges_path} ({protocol.edges_blob}); refusing to "
                            f"unpickle it")
        import torch  # a pickled pandas DataFrame: only the verified file is unpickled
        df = torch.load(path, weights_only=False)
        df = pd.DataFrame(df)[RAW_COLUMNS]
    else:
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise DataError(f"--augment_edges {path}: cannot be read as CSV ({err})") from None
        if list(df.columns[:3]) != RAW_COLUMNS:
            raise DataError(f"--augment_edges {path}: expected the header "
                            f"{','.join(RAW_COLUMNS)}, found {','.join(map(str, df.columns))}")
    df = df[RAW_COLUMNS].apply(pd.to_numeric, errors="coerce")
    if df.isna().any().any() or not df["rating"].isin((1, 2, 3, 4, 5)).all() \
            or (df[["userId", "movieId"]] % 1 != 0).any().any():
        raise DataError(f"--augment_edges {path}: empty or non-integer cells, or ratings "
                        f"outside 1..5")
    df = df.astype(np.int64)
    duplicated = df.duplicated(["userId", "movieId"], keep="first")
    if duplicated.any():
        log(f"warning: --augment_edges {path}: {int(duplicated.sum())} duplicate (user, movie) "
            f"edge(s); kept the first of each")
        df = df[~duplicated].reset_index(drop=True)
    source = {"path": path.name, "git_blob": blob, "sha1": file_sha1(path),
              "authors_file": blob == protocol.edges_blob}
    log(f"read {len(df):,} LLM edges from {path}"
        + (" (the authors' file, git blob verified)" if source["authors_file"] else
           " (not the authors' .pt; its rows are used as given)"))
    return df, source


def fetch_test_file(protocol: RandomSplitProtocol, split: int, raw_dir: Path,
                    test_file=None, download: bool = True, base_url: str | None = None,
                    log=print) -> Path:
    """Test file K: ``test_file`` if given, else ``<raw_dir>/<its name>``, else downloaded
    there; always verified by its git blob SHA-1."""
    from data.fetch import download_verified  # urllib only when needed
    expected = protocol.test_blobs[split]
    name = Path(protocol.test_path.format(k=split)).name
    path = Path(test_file) if test_file else Path(raw_dir) / name
    if not path.is_file():
        if test_file:
            raise DataError(f"--test_file {path}: no such file")
        if not download:
            raise DataError(f"missing {path}: allow downloading (drop --no_download) or place "
                            f"{name} there by hand (from {protocol.repo} at "
                            f"{protocol.commit[:12]})")
        base = base_url or f"https://raw.githubusercontent.com/{protocol.repo}/{protocol.commit}"
        download_verified(f"{base.rstrip('/')}/{protocol.test_path.format(k=split)}", path,
                          expected, log)
    got = git_blob_sha1(path)
    if got != expected:
        raise DataError(f"{path}: git blob {got} is not the published test split {split} "
                        f"({expected}); use the file of {protocol.repo}")
    return path


def random_split_frames(ratings: pd.DataFrame, test: pd.DataFrame, edges: pd.DataFrame | None):
    """(train, test, counts): train = the ratings whose pair is not in test (in file order),
    then the edges (an edge on a train pair replaces its rating)."""
    key = lambda df: df["userId"].to_numpy() * (1 << 32) + df["movieId"].to_numpy()  # noqa
    if pd.Series(key(ratings)).duplicated().any():
        raise DataError("the ratings file holds a (user, movie) pair twice")
    in_ratings = pd.Series(key(test)).isin(key(ratings))
    if not in_ratings.all():
        raise DataError(f"{int((~in_ratings).sum())} test row(s) are not ML-1M ratings: the "
                        f"ratings file is not the full ML-1M")
    merged = test.merge(ratings, on=["userId", "movieId"], suffixes=("", "_all"))
    if (merged["rating"] != merged["rating_all"]).any():
        raise DataError("the test split's ratings differ from the ratings file's")
    train = ratings[~pd.Series(key(ratings)).isin(key(test)).to_numpy()]
    counts = {"train_rows": len(train), "test_rows": len(test)}
    if edges is not None:
        # an edge naming a user or movie with no rating at all: dropped (their code skips
        # movie ids beyond ML-1M's; none of the authors' edges is one)
        known = edges["userId"].isin(ratings["userId"]) & edges["movieId"].isin(ratings["movieId"])
        dropped = int((~known).sum())
        edges = edges[known.to_numpy()]
        on_train = pd.Series(key(edges)).isin(key(train)).to_numpy()
        in_test = pd.Series(key(edges)).isin(key(test)).to_numpy()
        test_pos = pd.Series(key(edges)).isin(key(test[test["rating"] > 3.5])).to_numpy()
        edge_rating = pd.Series(edges["rating"].to_numpy(), index=key(edges))
        train_keys = pd.Series(key(train), index=train.index)
        train = train.assign(rating=train_keys.map(edge_rating).fillna(train["rating"])
                             .astype(np.int64))
        train = pd.concat([train, edges[~on_train]], ignore_index=True)
        counts.update(edges=len(edges), edges_dropped_unknown_ids=dropped,
                      edges_replacing_a_train_rating=int(on_train.sum()),
                      edges_on_test_pairs=int(in_test.sum()),
                      edges_on_test_positives=int(test_pos.sum()))
    return train.reset_index(drop=True), test.reset_index(drop=True), counts


def _as_split(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({USER_COL: df["userId"], ITEM_COL: df["movieId"],
                         RATING_COL: df["rating"].astype(np.float64)})


def prepare_random_split(protocol_name: str, split: int, raw_dir, out_dir, test_file=None,
                         augment_edges=None, name: str | None = None, download: bool = True,
                         base_url: str | None = None, overwrite: bool = False,
                         log=print) -> list[Path]:
    """Write the folder of split ``split`` of a random-split protocol (module docstring)."""
    from data.prepare import read_raw_ratings
    protocol = PROTOCOLS[protocol_name]
    if split not in protocol.test_blobs:
        raise DataError(f"--split {split}: {protocol_name} has splits "
                        f"{', '.join(map(str, sorted(protocol.test_blobs)))}")
    name = name or folder_name(protocol, split, augment_edges is not None)
    out = Path(out_dir) / name
    written = [split_path(out_dir, name, s) for s in ("train_original", "test")]
    if any(p.exists() for p in written + [out / PROTOCOL_FILE]) and not overwrite:
        raise DataError(f"{out} holds split files; pass --overwrite to replace them")
    test_path = fetch_test_file(protocol, split, Path(raw_dir), test_file, download,
                                base_url, log)
    inter_path = Path(raw_dir) / f"{protocol.raw_stem}.inter"
    ratings = read_raw_ratings(inter_path)
    test = read_ratings_file(test_path)
    edges, edge_source = (read_edges(augment_edges, protocol, log) if augment_edges
                          else (None, None))
    if edges is not None and split != protocol.edges_split:
        log(f"warning: the authors' LLM edges were made for split {protocol.edges_split} "
            f"(their LightGCN saw its train file); on split {split} they may name its test "
            f"pairs")
    train, test, counts = random_split_frames(ratings, test, edges)
    for path, frame in zip(written, (train, test)):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f, frame=frame: _as_split(frame).to_csv(
            f, index=False, lineterminator="\n"))
        log(f"wrote {path}: {len(frame):,} rows")
    spec = {"protocol": protocol_name, "split": split, "threshold": protocol.threshold,
            "validation": False, "catalog": "train_and_test", "epochs": protocol.epochs,
            "evaluation_step": protocol.evaluation_step,
            "sources": {"ratings": {"path": inter_path.name, "sha1": file_sha1(inter_path)},
                        "test": {"path": test_path.name, "git_blob": protocol.test_blobs[split],
                                 "from": f"{protocol.repo}@{protocol.commit}"},
                        **({"augment_edges": edge_source} if edge_source else {})},
            "counts": counts,
            "allowed_test_overlap": counts.get("edges_on_test_pairs", 0),
            "files": {"train_original": git_blob_sha1(written[0]),
                      "test": git_blob_sha1(written[1])}}
    atomic_write_text(out / PROTOCOL_FILE, json.dumps(spec, indent=2) + "\n")
    if counts.get("edges"):
        log(f"LLM edges: {counts['edges']:,}; {counts['edges_replacing_a_train_rating']:,} "
            f"replace a train rating; {counts['edges_on_test_pairs']:,} are test pairs "
            f"({counts['edges_on_test_positives']} test positives, masked at evaluation)")
    log(f"wrote {out / PROTOCOL_FILE}")
    return written


def command(args, data_dir: Path) -> int:
    """``python dataloader.py prepare --protocol ...``."""
    others = [f"--{k}" for k in ("dataset", "inter", "item", "text_cols", "sample_users")
              if getattr(args, k)]
    if others:
        raise DataError(f"{others[0]}: not with --protocol (it prepares ML-1M's published "
                        f"random splits)")
    if args.split is None:
        raise DataError("--protocol needs --split K")
    protocol = PROTOCOLS[args.protocol]
    raw_dir = Path(args.raw_dir or data_dir / "raw" / protocol.raw_stem)
    prepare_random_split(args.protocol, args.split, raw_dir, data_dir,
                                   test_file=args.test_file, augment_edges=args.augment_edges,
                                   name=args.name, download=not args.no_download,
                                   base_url=args.base_url, overwrite=args.overwrite)
    return 0
