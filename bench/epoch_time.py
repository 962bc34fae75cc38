"""Seconds per epoch (one training pass + one validation) of the fast path and of the
reference-equivalent slow path (dense U x I autoencoder, two propagations per step,
torch.multinomial sampling, torch's generic sparse backward, L2 through autograd), in the
same process, and their ratio; then the fast path on ML-1M (train_original).

    python bench/epoch_time.py                       # ML-100K, Amazon_Digital_Music, ML-1M
    python bench/epoch_time.py --datasets ML-100K --epochs 3 --threads 2
    python bench/epoch_time.py --negatives per_user --large   # the per_user variant

The first epoch is a warm-up and is not counted when --epochs > 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloader  # noqa: E402
from recommenders import base, make_config, refine_plus  # noqa: E402
from model import ReFINePlus  # noqa: E402
from utils import evaluate, resolve_device, seed_everything  # noqa: E402


def seconds_per_epoch(data, impl: str, epochs: int, device,
                      negatives: str = "shared") -> tuple[float, float]:
    """(mean seconds per epoch, last epoch's loss) for one implementation."""
    config = make_config(dataset=data.dataset, impl=impl, negatives=negatives)
    seed_everything(config.random_seed)
    graphs = base.build_graphs(data, device)
    sampling = refine_plus.prepare(graphs, config)
    model = ReFINePlus(graphs.num_users, graphs.num_items, 64, config.layers,
                       symmetric_backward=impl == "fast").to(device)
    optimizer = refine_plus.make_optimizer(model, config)
    times, loss = [], float("nan")
    for epoch in range(1, epochs + 1):
        tic = time.perf_counter()
        loss = refine_plus.train_epoch(model, optimizer, graphs, config, epoch, sampling)
        with torch.no_grad():
            e_users, e_items = model(graphs.norm_adj)
            evaluate(e_users, e_items, graphs.seen_by_user, graphs.valid_by_user, config.top_k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    counted = times[1:] if len(times) > 1 else times
    return sum(counted) / len(counted), loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=None, help="split folder (default $REFINE_DATA_DIR, "
                                                    "then dataset/)")
    p.add_argument("--datasets", nargs="+", default=["ML-100K", "Amazon_Digital_Music"])
    p.add_argument("--large", nargs="*", default=["ML-1M"],
                   help="fast path only, train_original (default ML-1M)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per measurement (first = warm-up)")
    p.add_argument("--slow_epochs", type=int, default=2,
                   help="epochs for the slow path (0: skip it)")
    p.add_argument("--negatives", choices=["shared", "per_user"], default="shared")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as main.py does on CPU
        if args.threads:
            torch.set_num_threads(args.threads)
    data_dir = dataloader.resolve_data_dir(args.data_dir)
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"data {os.path.relpath(data_dir)}, --negatives {args.negatives}")
    print(f"{'dataset':<22}{'train file':<16}{'fast s/epoch':>13}{'slow s/epoch':>14}{'speed-up':>10}")
    for name in args.datasets:
        data = dataloader.load_dataset(data_dir, name, "augment", warn=lambda line: None)
        fast, _ = seconds_per_epoch(data, "fast", args.epochs, device, args.negatives)
        slow = seconds_per_epoch(data, "reference", args.slow_epochs, device,
                                 args.negatives)[0] if args.slow_epochs else None
        print_row(name, "train_augment", fast, slow)
    for name in args.large:
        data = dataloader.load_dataset(data_dir, name, "original", warn=lambda line: None)
        fast, _ = seconds_per_epoch(data, "fast", max(1, args.epochs - 1), device, args.negatives)
        print_row(name, "train_original", fast, None)


def print_row(name: str, train_file: str, fast: float, slow: float | None) -> None:
    """One table row; '-' in the slow and speed-up columns when the slow path did not run."""
    tail = f"{'-':>14}{'-':>10}" if slow is None else f"{slow:>14.2f}{slow / fast:>9.1f}x"
    print(f"{name:<22}{train_file:<16}{fast:>13.2f}{tail}", flush=True)

if __name__ == "__main__":
    main()
