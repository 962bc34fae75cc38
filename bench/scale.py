"""Seconds per epoch and peak memory of the fast path at ML-1M, Netflix-1M, Amazon_Books scale.

Each shape runs in its own child process (so the peak RSS is that shape's).

    python bench/scale.py --threads 1                          # all three shapes
    python bench/scale.py --shapes Amazon_Books --batches 5 --threads 1

ML-1M is the real train_original (--data_dir, else $REFINE_DATA_DIR);
Netflix-1M and Amazon_Books are synthetic datasets of their shape (bench/synthetic.py),
written into dataset/synthetic/ when missing. Each child loads the data, builds graphs,
model and optimizer as bench/epoch_time.py does for the fast path (K = 2 for
Amazon_Books, else 4), runs a 2-batch warm-up, times the first B batches of an epoch and
extrapolates them to the ceil(|T| / 1024) batches of a full epoch, then times one full
validation evaluation. Peak RSS is the child's ru_maxrss, also read after each stage.
A child's ru_maxrss starts at its parent's (Linux carries it over fork and exec), so the
parent imports neither numpy nor torch; its own figure is printed beside the table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("ML-1M", "Netflix-1M", "Amazon_Books")
SYNTHETIC = ("Netflix-1M", "Amazon_Books")
DEFAULT_BATCHES = {"ML-1M": 100, "Netflix-1M": 100, "Amazon_Books": 30}
WARMUP_BATCHES = 2
# Targets: on a 2-core CPU, ML-1M as fast as the reference on its RTX A6000 (33.4 s per
# epoch, rounded down); on one GPU 20x the reference's 822 s per Amazon_Books epoch.
MAX_SECONDS_PER_EPOCH = {"cpu": {"ML-1M": 33.0}, "cuda": {"Amazon_Books": 822.0 / 20}}
MAX_RSS_MIB = {"Amazon_Books": 4096.0}
RESULT_TAG = "RESULT "


def real_data_dir(data_dir: str | None) -> Path:
    """--data_dir, else $REFINE_DATA_DIR, else dataset/ (data.splits.resolve_data_dir)."""
    from data.splits import resolve_data_dir
    return resolve_data_dir(data_dir)


def ensure_synthetic(shape: str, out_dir: Path, seed: int) -> str:
    """Name of the synthetic dataset of ``shape`` under out_dir, generated (in a child
    process) when one of its files is missing."""
    name = shape + "-synthetic"  # synthetic.dataset_name, not imported: no numpy in the parent
    files = [out_dir / name / f"{name}_{split}.csv"
             for split in ("train_augment", "train_original", "validation", "test")]
    if all(f.is_file() for f in files):
        print(f"{shape}: using the existing {os.path.relpath(out_dir / name)}", flush=True)
    else:
        subprocess.run([sys.executable, str(REPO / "bench" / "synthetic.py"), "--shape", shape,
                        "--out", str(out_dir), "--seed", str(seed)], check=True)
    return name


# ----------------------------------------------------------------------------- child

def measure(shape: str, data_dir: str, dataset: str, train_file: str, batches: int,
            threads: int, device_name: str, negatives: str = "shared") -> dict:
    """Everything one table row needs; runs in the child process."""
    import time

    import torch

    sys.path.insert(0, str(REPO))
    import dataloader
    from recommenders import base, make_config, refine_plus
    from model import ReFINePlus
    from runs.metrics import evaluate
    from utils import resolve_device, seed_everything

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    device = resolve_device(device_name)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as main.py does on CPU
        if threads:
            torch.set_num_threads(threads)
    peaks = {"imports": peak_mib()}
    if train_file == "original":  # the real ML-1M
        data_dir = real_data_dir(data_dir)
    tic = time.perf_counter()
    data = dataloader.load_dataset(data_dir, dataset, train_file, warn=lambda line: None)
    load_s = time.perf_counter() - tic
    peaks["load"] = peak_mib()
    # make_config gives K = 2 only for the name "Amazon_Books"; the synthetic folder has a suffix
    config = make_config(dataset=dataset, impl="fast", layers=2 if shape == "Amazon_Books" else 4,
                      negatives=negatives)
    seed_everything(config.random_seed)
    graphs, splits = base.build_graphs(data, device), base.build_eval_index(data, device)
    n = refine_plus.num_negatives(graphs.num_items)
    model = ReFINePlus(graphs.num_users, graphs.num_items, config.embedding_dim, config.layers,
                       symmetric_backward=True).to(device)
    optimizer = refine_plus.make_optimizer(model, config)
    peaks["graphs+model"] = peak_mib()

    sampling = refine_plus.Sampling(n, config.settings.real_neg_samp_prob, None)

    def some_batches(count: int) -> None:  # part of an epoch: the first ``count`` batches
        rows = itertools.islice(base.batches(len(graphs.train), config.batch_size, device), count)
        refine_plus.train_steps(model, optimizer, graphs, config, sampling, rows)

    some_batches(WARMUP_BATCHES)
    sync()
    total_batches = math.ceil(len(graphs.train) / config.batch_size)
    timed = min(batches, total_batches)
    tic = time.perf_counter()
    some_batches(timed)
    sync()
    train_s = time.perf_counter() - tic
    peaks["train"] = peak_mib()

    tic = time.perf_counter()
    with torch.no_grad():
        e_users, e_items = model(graphs.norm_adj)
        evaluate(e_users, e_items, splits.seen_by_user, splits.valid_by_user, config.top_k)
    sync()
    valid_s = time.perf_counter() - tic
    peaks["validation"] = peak_mib()
    per_batch = train_s / timed
    return {"shape": shape, "dataset": dataset, "train_file": train_file,
            "users": data.num_users, "items": data.num_items, "t": len(data.train),
            "layers": config.layers, "negatives": negatives, "batches_timed": timed,
            "batches_per_epoch": total_batches,
            "s_per_batch": per_batch, "train_s_per_epoch": per_batch * total_batches,
            "valid_s": valid_s, "s_per_epoch": per_batch * total_batches + valid_s,
            "load_s": load_s, "peak_rss_mib": peak_mib(), "peak_rss_after": peaks,
            "device": str(device), "threads": torch.get_num_threads(),
            "cuda_peak_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                              if device.type == "cuda" else None)}


# ----------------------------------------------------------------------------- parent

def run_child(shape: str, args) -> dict:
    if shape in SYNTHETIC:
        data_dir, train_file = args.synthetic_dir, "augment"
        dataset = ensure_synthetic(shape, Path(data_dir), args.seed)
    else:
        data_dir, dataset, train_file = args.data_dir or "", shape, "original"
    batches = args.batches or DEFAULT_BATCHES[shape]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", shape,
           "--child_data", str(data_dir), "--child_dataset", dataset,
           "--child_train_file", train_file, "--batches", str(batches),
           "--threads", str(args.threads), "--device", args.device, "--negatives", args.negatives]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    line = [x for x in out.splitlines() if x.startswith(RESULT_TAG)][-1]
    return json.loads(line[len(RESULT_TAG):])


def target_text(r: dict) -> str:
    notes = []
    seconds_targets = MAX_SECONDS_PER_EPOCH.get(r["device"].split(":")[0], {})
    if r["shape"] in seconds_targets:
        limit = seconds_targets[r["shape"]]
        notes.append(f"<= {limit:.0f} s/epoch: {'met' if r['s_per_epoch'] <= limit else 'NOT met'}")
    if r["shape"] in MAX_RSS_MIB:
        limit = MAX_RSS_MIB[r["shape"]]
        notes.append(f"RSS < {limit / 1024:.0f} GiB: "
                     f"{'met' if r['peak_rss_mib'] < limit else 'NOT met'}")
    return "; ".join(notes) or "-"


def table(results: list[dict]) -> list[str]:
    head = (f"{'shape':<14}{'train file':<32}{'U':>8}{'I':>8}{'|T|':>11}{'K':>3}"
            f"{'batches timed':>15}{'s/batch':>9}{'train s':>9}{'valid s':>9}{'s/epoch':>9}"
            f"{'peak RSS MiB':>14}  target")
    lines = [head]
    for r in results:
        timed = f"{r['batches_timed']}/{r['batches_per_epoch']}"
        lines.append(f"{r['shape']:<14}{r['dataset'] + ' ' + r['train_file']:<32}{r['users']:>8,}"
                     f"{r['items']:>8,}{r['t']:>11,}{r['layers']:>3}{timed:>15}"
                     f"{r['s_per_batch']:>9.3f}{r['train_s_per_epoch']:>9.1f}{r['valid_s']:>9.2f}"
                     f"{r['s_per_epoch']:>9.1f}{r['peak_rss_mib']:>14,.0f}  {target_text(r)}")
    if all(r["batches_timed"] == r["batches_per_epoch"] for r in results):
        lines.append(f"train s = every batch of one full epoch timed (after a {WARMUP_BATCHES}-"
                     "batch warm-up); s/epoch = train s + one full validation.")
    else:
        lines.append("train s = s/batch x batches per epoch: EXTRAPOLATED from the first "
                     f"'batches' timed (after a {WARMUP_BATCHES}-batch warm-up), not a full "
                     "epoch; s/epoch = train s + one full validation.")
    for r in results:
        stages = ", ".join(f"{k} {v:,.0f}" for k, v in r["peak_rss_after"].items())
        cuda = f"; CUDA peak {r['cuda_peak_mib']:,.0f} MiB" if r["cuda_peak_mib"] else ""
        lines.append(f"{r['shape']}: peak RSS MiB after {stages}; load {r['load_s']:.1f} s{cuda}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    p.add_argument("--batches", type=int, default=0,
                   help="batches timed per shape (default: 100 ML-1M/Netflix-1M, 30 Amazon_Books)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--negatives", choices=("shared", "per_user"), default="shared",
                   help="main.py's --negatives (default shared, the reference's)")
    p.add_argument("--data_dir", help="folder holding ML-1M/ (default $REFINE_DATA_DIR or "
                                      "dataset/)")
    p.add_argument("--synthetic_dir", default=str(REPO / "dataset" / "synthetic"),
                   help="folder of the synthetic datasets (default dataset/synthetic)")
    p.add_argument("--seed", type=int, default=0, help="seed of newly generated synthetic data")
    p.add_argument("--json", help="also write the results (one dict per shape) to this file")
    p.add_argument("--child", choices=SHAPES, help=argparse.SUPPRESS)
    p.add_argument("--child_data", help=argparse.SUPPRESS)
    p.add_argument("--child_dataset", help=argparse.SUPPRESS)
    p.add_argument("--child_train_file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = measure(args.child, args.child_data, args.child_dataset,
                         args.child_train_file, args.batches, args.threads, args.device,
                         args.negatives)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    results = []
    for shape in args.shapes:
        results.append(run_child(shape, args))
        print(f"{shape}: done ({results[-1]['s_per_epoch']:.1f} s/epoch estimated, "
              f"peak RSS {results[-1]['peak_rss_mib']:,.0f} MiB)", flush=True)
    r0 = results[0]
    parent_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ndevice {r0['device']}, threads {r0['threads']}, --negatives {r0['negatives']}; "
          f"one child process per shape "
          f"(this parent's peak RSS, a floor of each child's: {parent_mib:.0f} MiB)")
    for line in table(results):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
