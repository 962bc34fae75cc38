"""Agreement of several refiners with a reference train_augment on the same rows.

    python bench/refine_agreement.py --dataset ML-100K \\
        --rows_of dataset/refine_runs/smollm2-completion/ML-100K_train_augment.csv \\
        dataset/refine_runs/smollm2-completion/ML-100K_train_augment.csv \\
        dataset/refine_runs/ML-100K-embedding/ML-100K_train_augment.csv

Compares only the 2/3 rows that the ``--rows_of`` file refined (e.g. the users a partial
LLM run covered), with llm.procedure.agreement (rows refined by both; accuracy,
precision/recall/F1 of "-> 4.5"), and adds the trivial refiner that sends every such row
to 4.5. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.items import read_train  # noqa: E402
from data.schema import RATING_COL  # noqa: E402
from data.splits import split_path  # noqa: E402
from llm.procedure import NEGATIVE, POSITIVE, agreement  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="train_augment CSVs to score")
    p.add_argument("--dataset", default="ML-100K")
    p.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    p.add_argument("--rows_of", help="score only the 2/3 rows this file refined (default: all)")
    args = p.parse_args()
    original = read_train(split_path(args.data_dir, args.dataset, "train_original"))
    reference = split_path(args.data_dir, args.dataset, "train_augment")
    raw = original[RATING_COL].to_numpy()
    low = np.isin(raw, (2.0, 3.0))
    rows = low
    if args.rows_of:
        rows = low & np.isin(read_train(Path(args.rows_of))[RATING_COL].to_numpy(),
                             (POSITIVE, NEGATIVE))
    print(f"| {args.dataset}, {int(rows.sum())} rows | compared | accuracy | precision → 4.5 "
          f"| recall → 4.5 | F1 |\n|---|---|---|---|---|---|")
    candidates = [(Path(f).parent.name, read_train(Path(f))[RATING_COL].to_numpy())
                  for f in args.files]
    candidates.append(("trivial: all → 4.5", np.full(len(raw), POSITIVE)))
    for name, ratings in candidates:
        ours = np.where(rows, ratings, raw)  # outside the scored rows: as in train_original
        a = agreement(original, ours, reference)
        print(f"| {name} | {a['rows_compared']} | {a['accuracy']:.3f} | {a['precision']:.3f} "
              f"| {a['recall']:.3f} | {a['f1']:.3f} |")


if __name__ == "__main__":
    main()
