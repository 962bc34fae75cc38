"""``compare.py --by item_popularity|user_activity``: a run's (or a multi-seed run's mean ±
std of its seeds') test recall/NDCG per group, from metrics.json's ``breakdowns``
(runs/evaluation.py says how the groups are made)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from data.errors import UserError
from runs.metrics import short_key

BY = ("item_popularity", "user_activity")


def run_folders(path: Path) -> list[Path]:
    """The seed folders of a multi-seed run, else the folder itself."""
    if (path / "summary.json").is_file():
        runs = json.loads((path / "summary.json").read_text()).get("runs", [])
        return [path / run for run in runs]
    return [path]


def checked_block(block, path: Path, by: str) -> dict:
    """A breakdowns block whose values are numbers or null; else one line naming the file
    and the key (an edited or damaged metrics.json)."""
    if not isinstance(block, dict):
        raise UserError(f"{path}: breakdowns {by} is not a table (the file was edited or "
                        f"damaged)")
    for group, values in block.items():
        for name, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, (int, float))):
                raise UserError(f"{path}: breakdowns {by} {group} {name} is "
                                f"{json.dumps(value)[:40]}, not a number (the file was "
                                f"edited or damaged)")
    return block


def breakdown_rows(path: str | Path, by: str) -> dict[str, tuple[float | None, float | None]]:
    """row name ("popular R@20", "q1 users") -> (mean, std over seeds or None)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--by {by}: {path} is not a run folder (a log holds no breakdowns)")
    blocks = []
    for folder in run_folders(path):
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            raise UserError(f"--by {by}: {folder} has no readable metrics.json") from None
        if by not in metrics.get("breakdowns", {}):
            raise UserError(f"--by {by}: {folder}/metrics.json has no breakdowns (a run from "
                            f"before they were recorded: train it again)")
        blocks.append(checked_block(metrics["breakdowns"][by], folder / "metrics.json", by))
    rows: dict[str, tuple[float | None, float | None]] = {}
    for group, values in blocks[0].items():
        for name in values:
            seen = [b[group][name] for b in blocks if b[group].get(name) is not None]
            label = f"{group} users" if name == "users" else f"{group} {short_key(name)}"
            mean = statistics.fmean(seen) if seen else None
            rows[label] = (mean, statistics.stdev(seen) if len(seen) > 1 else None)
    return rows
