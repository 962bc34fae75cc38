"""Is a new path within the noise of the old one? Trains ReFINe++ on ML-100K for N epochs
three times from the same seed — eager with 1 thread, eager with 2 threads (a change of
summation order alone), ``--compile on`` with 2 threads — and prints the largest
differences of the epoch losses and of validation Recall@20 between the runs.

    python bench/noise.py [--epochs 20] [--dataset ML-100K] [--data_dir DIR]

Each run is the fast path of main.py's epoch loop (same batches, same draws: every run
re-seeds the generators), without early stopping or checkpoints.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloader  # noqa: E402
from model import ReFINePlus  # noqa: E402
from recommenders import base, make_config, refine_plus  # noqa: E402
from runs.metrics import evaluate  # noqa: E402
from utils import seed_everything  # noqa: E402


def curves(data, epochs: int, threads: int, compile_on: bool) -> dict:
    """Per-epoch loss and validation Recall@20 of one run, and its seconds."""
    torch.set_num_threads(threads)
    config = make_config(dataset=data.dataset, compile="on" if compile_on else "off")
    seed_everything(config.random_seed)
    graphs, splits = base.build_graphs(data, "cpu"), base.build_eval_index(data, "cpu")
    sampling = refine_plus.prepare(graphs, config)
    if compile_on and not sampling.kernels.compiled:
        raise SystemExit(f"--compile on did not compile: {' '.join(sampling.warnings)}")
    model = ReFINePlus(graphs.num_users, graphs.num_items, config.embedding_dim, config.layers)
    optimizer = refine_plus.make_optimizer(model, config)
    losses, recalls, tic = [], [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        losses.append(refine_plus.train_epoch(model, optimizer, graphs, config, epoch,
                                              sampling))
        with torch.no_grad():
            metrics = evaluate(*model(graphs.norm_adj), splits.seen_by_user,
                               splits.valid_by_user, config.top_k)
        recalls.append(metrics["recall@20"])
    return {"loss": losses, "recall": recalls, "seconds": time.perf_counter() - tic}


def largest_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ML-100K")
    p.add_argument("--data_dir", default=None, help="default $REFINE_DATA_DIR, then dataset/")
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args()
    torch.set_flush_denormal(True)  # as main.py does on CPU
    data = dataloader.load_dataset(dataloader.resolve_data_dir(args.data_dir), args.dataset,
                                   "augment", warn=lambda line: None)
    runs = {"eager 1 thread": curves(data, args.epochs, 1, False),
            "eager 2 threads": curves(data, args.epochs, 2, False),
            "compiled 2 threads": curves(data, args.epochs, 2, True)}
    for name, r in runs.items():
        print(f"{name:<20} {r['seconds']:6.1f} s  last loss {r['loss'][-1]:.6f}  "
              f"last valid R@20 {r['recall'][-1]:.4f}")
    pairs = [("eager 1 thread", "eager 2 threads"), ("eager 2 threads", "compiled 2 threads"),
             ("eager 1 thread", "compiled 2 threads")]
    print(f"{args.epochs} epochs of {args.dataset}: largest difference over the epochs")
    for a, b in pairs:
        print(f"  {a + ' vs ' + b:<42} loss {largest_gap(runs[a]['loss'], runs[b]['loss']):.2e}"
              f"  valid R@20 {largest_gap(runs[a]['recall'], runs[b]['recall']):.2e}")


if __name__ == "__main__":
    main()
