"""Reading the published split files and building the graphs ReFINe++ trains on.

File layout (docs/datasets.md): ``<data_dir>/<DATASET>/<DATASET>_{train_augment,train_original,
validation,test}.csv`` with the RecBole-style columns ``user_id:token``, ``item_id:token``,
``rating:float``.

Rating classes in the train file (docs/method.md): positive r >= 4, confirmed negative r <= 1,
neutral r in {2, 3}. T = positive ∪ confirmed negative. Users and items are re-indexed by
the sorted unique ids occurring in T; graph node ids are users 0..U-1, items U..U+I-1.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data import dislikes, loading, protocols
from data.registry import DATASETS, PROTOCOLS, SPLITS
from data.schema import DataError
from data.splits import DATA_DIR_ENV, read_split, resolve_data_dir, split_path  # noqa: F401 (API)
from data.table import out_of_memory
from data.transfer import DEFAULT_MAX_MB, DEFAULT_TIMEOUT_S

@dataclass
class Interactions:
    """Index pairs of one relation; ``users`` in 0..U-1, ``items`` in 0..I-1 (LongTensors)."""

    users: torch.Tensor
    items: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.numel())

    def to(self, device) -> "Interactions":
        return Interactions(self.users.to(device), self.items.to(device))


@dataclass
class RecData:
    """Everything the models and the evaluation need, in index space.

    ``train`` is T in file order with ``train_is_pos`` telling positives from confirmed
    negatives; ``neutral`` are the 2/3 rows (masked in evaluation, weight 1 in sampling).
    """

    dataset: str
    num_users: int
    num_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    train: Interactions
    train_is_pos: torch.Tensor
    neutral: Interactions
    validation: Interactions
    test: Interactions
    files: list[tuple[str, Path]] = field(default_factory=list)  # (role, path) of every file read
    augmented: object = None  # an LLM augmentation's triples (recommenders/llm_augmentation.py)
    test_dislikes: Interactions | None = None  # a dislikes variant's held-out low ratings
    protocol: dict | None = None  # a baseline's protocol folder (data/protocols.py)

    @property
    def has_validation(self) -> bool:
        return self.protocol is None or bool(self.protocol.get("validation", True))

    @property
    def positives(self) -> Interactions:
        keep = self.train_is_pos
        return Interactions(self.train.users[keep], self.train.items[keep])

    @property
    def negatives(self) -> Interactions:
        keep = ~self.train_is_pos
        return Interactions(self.train.users[keep], self.train.items[keep])


def read_checked_splits(data_dir: str | Path, dataset: str, dataset_augment: str = "augment",
                        warn=print, allow_overlap: bool = False):
    """The train file, validation and test of ``dataset`` as ``data.table.CodedSplit``s,
    checked to fit together, and the (role, path) of every file read (data/loading.py)."""
    return loading.read_checked_splits(data_dir, dataset, dataset_augment, warn, allow_overlap)


def load_dataset(data_dir: str | Path, dataset: str, dataset_augment: str = "augment",
                 warn=print, allow_overlap: bool = False) -> RecData:
    """Load the split files of ``dataset`` (``read_checked_splits``) and encode them
    (docs/method.md, "Data"), in bounded memory; a MemoryError is one line saying roughly
    how much memory the files need.

    Validation/test rows whose user or item does not occur in T are dropped with a counted
    warning; rows with rating < 4 there are dropped too (they hold positives only).
    """
    try:
        return _load(data_dir, dataset, dataset_augment, warn, allow_overlap)
    except MemoryError:
        raise out_of_memory([split_path(data_dir, dataset, role) for role in
                             (f"train_{dataset_augment}", "validation", "test")]) from None


def _long(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64), dtype=torch.long)


def _load(data_dir, dataset: str, dataset_augment: str, warn, allow_overlap: bool) -> RecData:
    train, valid, test, files = read_checked_splits(data_dir, dataset, dataset_augment, warn,
                                                    allow_overlap)
    spec = protocols.read_protocol(data_dir, dataset)
    in_t = (train.ratings >= 4) | (train.ratings <= 1)
    if not in_t.any() or not (train.ratings[in_t] >= 4).any():
        raise DataError(f"{files[0][1]}: no positive (rating >= 4) training rows")
    user_ids, item_ids = loading.catalogue_ids(train, test, in_t, spec)
    user_map = loading.index_map(user_ids, train.user_vocab)
    item_map = loading.index_map(item_ids, train.item_vocab)
    t_users, t_items = user_map[train.users[in_t]], item_map[train.items[in_t]]
    n_users, n_items = user_map[train.users[~in_t]], item_map[train.items[~in_t]]
    known = (n_users >= 0) & (n_items >= 0)  # a neutral row of a user/item absent from T
    if not known.all():
        warn(f"warning: {int((~known).sum())} neutral training row(s) of users/items absent "
             f"from T ignored")

    def eval_split(split) -> Interactions:
        users, items = loading.eval_rows(split, user_map, item_map, user_ids, item_ids, spec,
                                         warn)
        return Interactions(_long(users), _long(items))
    held_out = split_path(data_dir, dataset, dislikes.DISLIKES)  # a dislikes variant's
    dislikes_rows = None
    if held_out.is_file():
        files.append((dislikes.DISLIKES, held_out))
        dislikes_rows = Interactions(*map(_long, loading.held_out(
            held_out, user_map, item_map, train.user_vocab, train.item_vocab, warn)))
    return RecData(
        dataset=dataset, num_users=len(user_ids), num_items=len(item_ids),
        user_ids=user_ids, item_ids=item_ids,
        train=Interactions(_long(t_users), _long(t_items)),
        train_is_pos=torch.as_tensor(train.ratings[in_t] >= 4),
        neutral=Interactions(_long(n_users[known]), _long(n_items[known])),
        validation=eval_split(valid), test=eval_split(test), test_dislikes=dislikes_rows,
        protocol=spec, files=[(role, path) for role, path in files if path is not None])


# ----------------------------------------------------------------------------- graphs

def build_norm_adj(train: Interactions, num_users: int, num_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph of T as a (U+I) x (U+I) sparse CSR tensor.

    Every (u, i) in T is an edge in both directions (confirmed negatives included, as in
    the reference); no self loops; degrees are taken from this graph.
    """
    n = num_users + num_items
    row = torch.cat([train.users, train.items + num_users])
    col = torch.cat([train.items + num_users, train.users])
    deg = torch.bincount(row, minlength=n).to(torch.float32)
    inv_sqrt = deg.pow(-0.5)
    inv_sqrt[deg == 0] = 0.0
    values = inv_sqrt[row] * inv_sqrt[col]
    # "sparse CSR support is in beta" and (torch 2.11 on CUDA machines, even with
    # check_invariants=False) "sparse invariant checks are implicitly disabled" are noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(torch.stack([row, col]), values, (n, n),
                                      check_invariants=False).coalesce()
        csr = coo.to_sparse_csr()
        if csr.values().numel() < 2 ** 31:
            # int32 indices: the CPU product then skips an index conversion per call
            # (ML-1M: 4.0 instead of 4.7-8.4 ms per propagation layer; same values)
            csr = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(),
                                          csr.values(), csr.shape)
        return csr


@dataclass
class RowIndex:
    """CSR layout of a relation grouped by row: the columns of row r are
    ``indices[indptr[r]:indptr[r+1]]`` (sorted)."""

    indptr: torch.Tensor
    indices: torch.Tensor

    @staticmethod
    def build(rows: torch.Tensor, cols: torch.Tensor, num_rows: int) -> "RowIndex":
        order = torch.argsort(rows * (int(cols.max()) + 1 if cols.numel() else 1) + cols)
        counts = torch.bincount(rows, minlength=num_rows)
        indptr = torch.zeros(num_rows + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(counts, 0)
        return RowIndex(indptr, cols[order].contiguous())

    def to(self, device) -> "RowIndex":
        return RowIndex(self.indptr.to(device), self.indices.to(device))

    def degree(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Entries of the given rows: (position of the row in ``rows``, column), flattened."""
        start, count = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        owner = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
        offset = torch.arange(owner.numel(), device=rows.device) - torch.repeat_interleave(
            torch.cumsum(count, 0) - count, count)
        return owner, self.indices[torch.repeat_interleave(start, count) + offset]


# ----------------------------------------------------------------------------- getting the files

def ensure_split_files(data_dir, dataset: str, splits: list[str], download: bool = True,
                       base_url: str | None = None, log=print, limits=None) -> None:
    """Download missing published split files (verified by git blob SHA-1) unless
    ``download`` is False; raise DataError naming a missing file and how to get it.
    The base URL defaults to the pinned upstream commit; ``$REFINE_BASE_URL`` overrides it.
    ``limits``: each download's deadline and size cap (data/transfer.py; None: defaults)."""
    from data.fetch import ensure_split_files as ensure  # urllib/zip only when needed
    ensure(data_dir, dataset, splits, download=download, base_url=base_url, log=log,
           limits=limits)


def build_parser():
    """``python dataloader.py prepare|download|stats|dislikes``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python dataloader.py",
                                     description="Get, prepare and inspect the split files.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data_dir", help=f"split folder (default ${DATA_DIR_ENV} or dataset/)")

    p = sub.add_parser("download", parents=[common], help="fetch published splits (verified)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    p.add_argument("--base_url", help="instead of $REFINE_BASE_URL or the pinned commit "
                   "(with --raw: instead of $REFINE_RAW_BASE_URL or RecBole's bucket)")
    p.add_argument("--raw", action="store_true",
                   help="fetch RecBole's raw zip into --raw_dir instead of the splits")
    p.add_argument("--raw_dir", help="raw folder (default <data_dir>/raw)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds a whole file may take, from the request to the last byte")
    p.add_argument("--max_mb", type=float, default=DEFAULT_MAX_MB,
                   help="refuse a response larger than this many MiB")

    p = sub.add_parser("prepare", parents=[common], help="write train_original/validation/test "
                       "from raw RecBole files (docs/datasets.md)")
    p.add_argument("--dataset", choices=DATASETS, help="a published dataset")
    p.add_argument("--raw_dir", help="folder of its raw files (default <data_dir>/raw/<stem>)")
    p.add_argument("--inter", help="your own .inter file (user_id:token, item_id:token, "
                   "rating:float; tab separated)")
    p.add_argument("--item", help="optional .item file of your own dataset")
    p.add_argument("--text_cols", nargs="+", help="item columns a row must have "
                   "(default: every column of --item)")
    p.add_argument("--name", help="name of your own dataset (the output folder)")
    p.add_argument("--positive", type=float, default=4.0, help="positive: rating >= this")
    p.add_argument("--core", type=int, default=5, help="k-core of users and items")
    p.add_argument("--valid_ratio", type=float, default=0.1)
    p.add_argument("--test_ratio", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--sample_users", type=int, default=0, help="own data: draw this many users")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing split files (a train_augment that does not relabel "
                   "the new train_original is renamed *.stale)")
    p.add_argument("--check", action="store_true",
                   help="compare the output with the published git blob SHA-1s "
                   "(exit 1 if one differs)")
    p.add_argument("--protocol", choices=PROTOCOLS, help="a baseline's own protocol: "
                   "ml1m_random_split (SiReN, LLM-PNGNN) writes <data_dir>/ML-1M_split<K>/ "
                   "from ml-1m.inter and the published test split K (docs/datasets.md)")
    p.add_argument("--split", type=int, help="--protocol: the split K (1-5)")
    p.add_argument("--test_file", help="--protocol: a local copy of the published test file "
                   "(default: <raw_dir>/test_1m<K>.dat, downloaded there when missing; "
                   "verified by git blob SHA-1 either way)")
    p.add_argument("--augment_edges", help="--protocol: the LLM-PNGNN authors' "
                   "augmented_edges.pt (or a userId,movieId,rating CSV of it), added to "
                   "train as their main.py does; the folder is then ML-1M_split<K>_llm")
    p.add_argument("--no_download", action="store_true", help="--protocol: never download")
    p.add_argument("--base_url", help="--protocol: instead of the pinned repository URL")

    p = sub.add_parser("stats", parents=[common], help="users, items, ratings per split")
    p.add_argument("--dataset", required=True)
    dislikes.add_parser(sub, common)
    return parser


def main(argv=None) -> int:
    """``python dataloader.py prepare|download|stats|dislikes``; bad input: one line, exit 2."""
    from data import commands
    from runs.cli import run_cli
    args = build_parser().parse_args(argv)
    command = {"download": commands.download, "prepare": commands.prepare,
               "stats": commands.stats, "dislikes": dislikes.command}[args.command]
    return run_cli(lambda: command(args, resolve_data_dir(args.data_dir)),
                   interrupted=commands.INTERRUPTED)


if __name__ == "__main__":
    raise SystemExit(main())
