"""Seconds of degree-based negative sampling per epoch, the per-user CDF (``--sampler cdf``,
the earlier sampler and the tests' oracle) against the rejection sampler (the default),
in one process; and, with --train, one whole PN-GNN epoch with each.

    python bench/degree_sampler.py --data_dir DIR --dataset ML-1M_split1 --threads 2
    python bench/degree_sampler.py --data_dir DIR --dataset ML-1M_split1 --train

An epoch's sampling is what the training loop asks for: --num_negatives (40) draws for
every row of the epoch (positive and negative-graph rows), in shuffled batches of
--batch_size. Both samplers draw from the same distribution (tests/test_negative_models.py);
the draws differ, so the whole-epoch times are of two different (equally valid) epochs.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloader  # noqa: E402
from recommenders import base, make_config, pngnn, signed  # noqa: E402
from utils import seed_everything  # noqa: E402


def sampling_seconds(state: signed.SignedRows, how: str, batch_size: int, n: int) -> float:
    state = dataclasses.replace(state, sampler=how)
    seed_everything(2024)
    perm = torch.randperm(state.users.numel())
    tic = time.perf_counter()
    for start in range(0, perm.numel(), batch_size):
        state.negatives(state.users[perm[start:start + batch_size]], n)
    return time.perf_counter() - tic


def epoch_seconds(data, dataset_augment: str, how: str, batch_size: int) -> float:
    config = make_config(model="pngnn", dataset=data.dataset, dataset_augment=dataset_augment,
                         sampler=how, batch_size=batch_size)
    seed_everything(config.random_seed)
    graphs = base.build_graphs(data, "cpu", positives_graph=True)
    state = pngnn.RECOMMENDER.prepare(graphs, config)
    model = pngnn.build(graphs, config)
    optimizer = pngnn.RECOMMENDER.make_optimizer(model, config)
    tic = time.perf_counter()
    pngnn.RECOMMENDER.train_epoch(model, optimizer, graphs, config, 1, state)
    return time.perf_counter() - tic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--dataset", default="ML-1M_split1")
    p.add_argument("--dataset_augment", default="original")
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--num_negatives", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train", action="store_true", help="also time one PN-GNN epoch each")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = dataloader.load_dataset(args.data_dir, args.dataset, args.dataset_augment,
                                   warn=lambda line: None)
    config = make_config(model="pngnn", dataset=args.dataset,
                         dataset_augment=args.dataset_augment)
    graphs = base.build_graphs(data, "cpu", positives_graph=True)
    state = signed.signed_prepare(graphs, config)
    rows = state.users.numel()
    print(f"{args.dataset} ({args.dataset_augment}): {rows:,} rows, {args.num_negatives} "
          f"negatives each, batch {args.batch_size}, {args.threads} thread(s)")
    cdf = sampling_seconds(state, "cdf", args.batch_size, args.num_negatives)
    rejection = sampling_seconds(state, "rejection", args.batch_size, args.num_negatives)
    print(f"sampling per epoch: cdf {cdf:.1f} s, rejection {rejection:.1f} s "
          f"({cdf / rejection:.1f}x)")
    if args.train:
        old = epoch_seconds(data, args.dataset_augment, "cdf", args.batch_size)
        new = epoch_seconds(data, args.dataset_augment, "rejection", args.batch_size)
        print(f"PN-GNN epoch (training only): cdf {old:.1f} s, rejection {new:.1f} s "
              f"({old / new:.2f}x)")


if __name__ == "__main__":
    main()
