"""Seconds per epoch (one training pass + one validation) of the fast path and of the
reference-equivalent slow path (dense U x I autoencoder, two propagations per step,
torch.multinomial sampling, torch's generic sparse backward, L2 through autograd), in the
same process, and their ratio; then the fast path on ML-1M (train_original).

    python bench/epoch_time.py                       # ML-100K, Amazon_Digital_Music, ML-1M
    python bench/epoch_time.py --datasets ML-100K --epochs 3 --threads 2
    python bench/epoch_time.py --negatives per_user --large   # the per_user variant
    python bench/epoch_time.py --compile --threads 2  # eager vs --compile on, vs an A6000

The first epoch is a warm-up and is not counted when --epochs > 1 (with --compile it holds
the compilation, printed as its excess over a counted epoch).
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
from runs.metrics import evaluate  # noqa: E402
from utils import resolve_device, seed_everything  # noqa: E402


# The reference's seconds per epoch on its RTX A6000 (its logs: total time / epochs)
A6000_SECONDS = {"ML-100K": 1.04, "Amazon_Digital_Music": 0.76, "ML-1M": 33.4}


def seconds_per_epoch(data, impl: str, epochs: int, device, negatives: str = "shared",
                      compile_on: bool = False, timings: dict | None = None
                      ) -> tuple[float, float]:
    """(mean seconds per epoch, last epoch's loss) for one implementation; ``timings``
    receives the seconds of prepare (with --compile: the probe compile) and of each epoch."""
    config = make_config(dataset=data.dataset, impl=impl, negatives=negatives,
                         compile="on" if compile_on else "off")
    seed_everything(config.random_seed)
    graphs, splits = base.build_graphs(data, device), base.build_eval_index(data, device)
    tic = time.perf_counter()
    sampling = refine_plus.prepare(graphs, config)
    if compile_on and not sampling.kernels.compiled:
        raise SystemExit(f"--compile: {' '.join(sampling.warnings)}")
    prepare_s = time.perf_counter() - tic
    model = ReFINePlus(graphs.num_users, graphs.num_items, 64, config.layers,
                       symmetric_backward=impl == "fast").to(device)
    optimizer = refine_plus.make_optimizer(model, config)
    times, loss = [], float("nan")
    for epoch in range(1, epochs + 1):
        tic = time.perf_counter()
        loss = refine_plus.train_epoch(model, optimizer, graphs, config, epoch, sampling)
        with torch.no_grad():
            e_users, e_items = model(graphs.norm_adj)
            evaluate(e_users, e_items, splits.seen_by_user, splits.valid_by_user, config.top_k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    counted = times[1:] if len(times) > 1 else times
    if timings is not None:
        timings.update(prepare=prepare_s, epochs=times)
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
    p.add_argument("--compile", action="store_true",
                   help="instead: the fast path eager and with --compile on, on --datasets "
                        "and --large, beside the reference's A6000 seconds per epoch")
    args = p.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as main.py does on CPU
        if args.threads:
            torch.set_num_threads(args.threads)
    data_dir = dataloader.resolve_data_dir(args.data_dir)
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"data {os.path.relpath(data_dir)}, --negatives {args.negatives}")
    if args.compile:
        return compare_compile(args, data_dir, device)
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


def compare_compile(args, data_dir, device) -> None:
    """Eager fast path (--compile off) and --compile on, each in full epochs of this
    process; the ratio, and each beside the reference's A6000 seconds per epoch."""
    print(f"{'dataset':<22}{'train file':<16}{'batches':>8}{'eager s/ep':>11}{'compiled':>10}"
          f"{'speed-up':>10}{'A6000 s/ep':>12}{'vs A6000':>10}{'compile s':>11}")
    runs = [(name, "augment", args.epochs) for name in args.datasets] \
        + [(name, "original", max(2, args.epochs - 1)) for name in args.large]
    for name, train_file, epochs in runs:
        data = dataloader.load_dataset(data_dir, name, train_file, warn=lambda line: None)
        eager, _ = seconds_per_epoch(data, "fast", epochs, device, args.negatives)
        timings: dict = {}
        fused, _ = seconds_per_epoch(data, "fast", epochs, device, args.negatives,
                                     compile_on=True, timings=timings)
        compile_s = timings["prepare"] + timings["epochs"][0] - fused
        a6000 = A6000_SECONDS.get(name)
        versus = f"{a6000:>12.2f}{a6000 / fused:>9.2f}x" if a6000 else f"{'-':>12}{'-':>10}"
        batches = -(-len(data.train) // 1024)
        print(f"{name:<22}{'train_' + train_file:<16}{batches:>8}{eager:>11.2f}{fused:>10.2f}"
              f"{eager / fused:>9.2f}x{versus}{compile_s:>11.1f}", flush=True)
    print("s/epoch: a training pass over every batch + one full validation, mean of the "
          "epochs after the first; speed-up = eager / compiled; vs A6000 = its s/epoch / "
          "ours (> 1: faster than the reference on its GPU); compile s = the first compiled "
          "epoch's excess over a later one, plus the compile probe.")


def print_row(name: str, train_file: str, fast: float, slow: float | None) -> None:
    """One table row; '-' in the slow and speed-up columns when the slow path did not run."""
    tail = f"{'-':>14}{'-':>10}" if slow is None else f"{slow:>14.2f}{slow / fast:>9.1f}x"
    print(f"{name:<22}{train_file:<16}{fast:>13.2f}{tail}", flush=True)

if __name__ == "__main__":
    main()
