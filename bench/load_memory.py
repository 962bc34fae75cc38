"""Peak memory of reading a large train split file: the loader before chunking (OLD, a copy
kept below) against the chunked, integer-coded one (NEW, data.splits.read_split_coded).

    nice python bench/load_memory.py --gb 0.5 2 [--cap_gb 12] [--out FILE]

For each size a synthetic train file (random integer ids, the seven train ratings, about
17 bytes a row) is written to a temp folder; each loader then reads it in a child process
whose address space is capped at ``--cap_gb`` (RLIMIT_AS), and the child's peak resident
memory (its VmHWM; wait4's ru_maxrss if it crashed) is reported, or that it ran out of memory under the cap. One line per
loader and size, and the ratio OLD/NEW where both finished.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HEADER = "user_id:token,item_id:token,rating:float"

# ---------------------------------------------------------------- OLD: the loader before r27
# (data/splits.py read_split and read_table as they were: the whole file as strings)
OLD_LOADER = '''
import numpy as np
import pandas as pd
from data.schema import EVAL_RATINGS, ITEM_COL, RATING_COL, TRAIN_RATINGS, USER_COL, DataError

def old_read_split(path, *, is_train, warn=print):
    df = pd.read_csv(path, dtype={USER_COL: str, ITEM_COL: str})
    df = df[[USER_COL, ITEM_COL, RATING_COL]]
    ratings = pd.to_numeric(df[RATING_COL], errors="coerce")
    bad = ratings.isna()
    if bad.any():
        raise DataError("non-numeric rating")
    if df[USER_COL].isna().any() or df[ITEM_COL].isna().any():
        raise DataError("empty id")
    df = df.assign(**{RATING_COL: ratings.astype(np.float64)})
    expected = TRAIN_RATINGS if is_train else EVAL_RATINGS
    unexpected = ~df[RATING_COL].isin(expected)
    if unexpected.any():
        raise DataError("unexpected rating")
    dup = df.duplicated([USER_COL, ITEM_COL], keep="first")
    if dup.any():
        warn(f"warning: {path.name}: {int(dup.sum())} duplicate (user, item) row(s)")
        df = df[~dup]
    if len(df) == 0:
        raise DataError("empty")
    return df.reset_index(drop=True)
'''

CHILD = '''
import json, resource, sys, time
from pathlib import Path
cap = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
path, which = Path(sys.argv[1]), sys.argv[2]
start = time.time()
try:
    if which == "OLD":
        exec(OLD_LOADER)
        rows = len(old_read_split(path, is_train=True, warn=lambda line: None))
    else:
        from data.splits import read_split_coded
        rows = len(read_split_coded(path, is_train=True, warn=lambda line: None))
    outcome = f"{rows:,} rows kept"
except MemoryError:
    outcome = "MemoryError"
except Exception as err:  # the new loader's one line (out of memory) lands here
    outcome = f"{type(err).__name__}: {err}"
# VmHWM: this process's own peak (ru_maxrss would include the parent's at the fork)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM"))
print(json.dumps({"maxrss_kb": peak_kb,
                  "seconds": time.time() - start, "outcome": outcome}))
'''


def write_train(path: Path, gb: float, seed: int = 0) -> int:
    """A train file of about ``gb`` GiB: random users (1..2M), items (1..200k), ratings."""
    rng = np.random.default_rng(seed)
    target, rows, block = int(gb * 2 ** 30), 0, 2_000_000
    ratings = np.array(["1", "2", "3", "4", "5", "4.5", "0.5"])
    with open(path, "w") as f:
        f.write(HEADER + "\n")
        while f.tell() < target:
            users = rng.integers(1, 2_000_000, block).astype(str)
            items = rng.integers(1, 200_000, block).astype(str)
            rate = ratings[rng.integers(0, 7, block)]
            f.write("\n".join(np.char.add(np.char.add(np.char.add(users, ","),
                                                      np.char.add(items, ",")), rate)) + "\n")
            rows += block
    return rows


def measure(path: Path, which: str, cap: int) -> dict:
    """Run one loader in a child; its peak RSS from wait4, so a child killed or crashed
    under the cap is still measured."""
    code = f"OLD_LOADER = {OLD_LOADER!r}\n" + CHILD
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-c", code, str(path), which, str(cap)],
                                cwd=REPO, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.time() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        tail = (stderr.strip().splitlines() or ["no message"])[-1]
        return {"maxrss_kb": usage.ru_maxrss, "seconds": seconds,  # (upper bound: wait4)
                "outcome": f"child ended with exit code {proc.returncode} ({tail})"}
    return json.loads(stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--write"]:
        print(write_train(Path(sys.argv[2]), float(sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, nargs="+", default=[0.5])
    parser.add_argument("--cap_gb", type=float, default=12.0)
    parser.add_argument("--out", help="also append the lines to this file")
    parser.add_argument("--only", choices=("OLD", "NEW"), help="measure one loader only")
    args = parser.parse_args(argv)
    if args.cap_gb > 12:
        parser.error("--cap_gb must be at most 12")
    cap = int(args.cap_gb * 2 ** 30)
    lines = []
    for gb in args.gb:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "Big_train_original.csv"
            start = time.time()
            rows = int(subprocess.run(  # in a child, so this process stays small
                [sys.executable, __file__, "--write", str(path), str(gb)], check=True,
                capture_output=True, text=True).stdout)
            size = path.stat().st_size
            print(f"# wrote {size / 2 ** 30:.2f} GiB, {rows:,} rows in "
                  f"{time.time() - start:.0f} s", flush=True)
            got = {}
            for which in [args.only] if args.only else ("OLD", "NEW"):
                got[which] = m = measure(path, which, cap)
                line = (f"{which} file {size / 2 ** 30:.2f} GiB ({rows:,} rows), cap "
                        f"{args.cap_gb:g} GiB: peak RSS {m['maxrss_kb'] / 2 ** 20:.2f} GiB, "
                        f"{m['seconds']:.0f} s, {m['outcome']}")
                print(line, flush=True)
                lines.append(line)
            if len(got) == 2 and all("rows kept" in got[w]["outcome"] for w in got):
                line = (f"ratio OLD/NEW peak RSS at {size / 2 ** 30:.2f} GiB: "
                        f"{got['OLD']['maxrss_kb'] / got['NEW']['maxrss_kb']:.2f}")
                print(line, flush=True)
                lines.append(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
