"""The ``download``, ``prepare`` and ``stats`` commands of ``python dataloader.py`` (its
parser and ``main`` stay there; docs/datasets.md)."""
from __future__ import annotations

from pathlib import Path

from data import protocols
from data.schema import DataError
from data.splits import split_path
from data.transfer import Limits

INTERRUPTED = "interrupted: nothing half-written was kept; run the command again"


def download(args, data_dir: Path) -> int:
    """``download``: the published splits (or with ``--raw`` RecBole's zip), each request
    within ``--timeout`` seconds and ``--max_mb`` MiB (checked before the first)."""
    from data import fetch
    limits = Limits(timeout_s=args.timeout, max_mb=args.max_mb)
    if args.raw:
        fetch.download_raw(args.dataset, Path(args.raw_dir or data_dir / "raw"),
                           base_url=args.base_url, limits=limits)
        return 0
    for split in args.splits:
        path = split_path(data_dir, args.dataset, split)
        if not path.is_file():
            fetch.download_split(data_dir, args.dataset, split, base_url=args.base_url,
                                 limits=limits)
        elif not fetch.check_published([path], args.dataset):
            print(f"warning: kept the local {path}; delete it to download the published file")
    return 0


def prepare(args, data_dir: Path) -> int:
    from data import fetch
    from data import prepare as prep
    if args.protocol:
        return protocols.command(args, data_dir)
    mixed = [f"--{k}" for k in ("split", "test_file", "augment_edges", "base_url")
             if getattr(args, k)]
    if mixed:
        raise DataError(f"{mixed[0]}: only with --protocol")
    protocol = prep.SplitProtocol(positive=args.positive, core=args.core,
                                  valid_ratio=args.valid_ratio, test_ratio=args.test_ratio,
                                  seed=args.seed)
    if bool(args.dataset) == bool(args.inter):
        raise DataError("prepare needs either --dataset NAME or --inter FILE --name NAME")
    own = [f"--{k}" for k in ("item", "text_cols", "name", "sample_users") if getattr(args, k)]
    if args.dataset and own:
        raise DataError(f"{', '.join(own)}: only for your own data (--inter FILE), not with "
                        f"--dataset")
    if args.dataset:
        raw_dir = Path(args.raw_dir or data_dir / "raw" / prep.RAW_FORMATS[args.dataset].stem)
        paths = prep.prepare_dataset(args.dataset, raw_dir, data_dir, protocol,
                                     overwrite=args.overwrite)
        return 1 if args.check and not fetch.check_published(paths, args.dataset) else 0
    if not args.name:
        raise DataError("--inter needs --name NAME (the output folder name)")
    prep.prepare_custom(args.inter, args.name, data_dir, item_path=args.item,
                        text_cols=args.text_cols, protocol=protocol,
                        sample_users=args.sample_users, overwrite=args.overwrite)
    return 0


def stats(args, data_dir: Path) -> int:
    from data import prepare as prep
    print(prep.format_stats(prep.dataset_stats(data_dir, args.dataset)))
    return 0
