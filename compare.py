"""Training logs side by side: ``python compare.py LOG_OR_RUN [LOG_OR_RUN ...] [--plot out.png]``.

Reads the reference logs (refine_plus/*.log, refine/*.out), our train.log files, run folders
and multi-seed run folders (summary.json, mean ± std) with one parser, runs.log_format.
Prints best epoch, best validation and final test metrics at each k, seconds, and each
column's difference to the first; ``--plot`` draws validation Recall@20, NDCG@20 and the
loss per epoch. Columns are ``<model>:<folder or file name>`` (``--labels`` replaces them;
a repeated label gets ``#2``...). The ``data`` row names the input files each run read
("published", or "MODIFIED" when a published dataset's file has other bytes); a warning
follows when two runs of one dataset read different files.

``--test``: paired significance tests of each run folder against the first, users paired by
id (runs/significance.py, runs/paired_runs.py; ``--split test_dislikes`` for held-out
dislikes); ``--by``: test breakdowns (runs/breakdown_rows.py). docs/baselines.md.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from data import provenance
from data.errors import UserError
from runs.cli import run_cli
from runs.curves import plot, plot_problem
from runs.log_format import parse_log
from runs.breakdown_rows import BY, breakdown_rows
from runs.metrics import LOGGED, short_key
from runs.summary import SEEDS_FILE, summary_problem


class CompareError(UserError, ValueError):
    """A path that is not a training log, run folder or multi-seed run folder."""


@dataclass
class Entry:
    """One column of the table: row name -> (value, std or None), and the parsed logs
    behind it (one per seed) for the curves."""

    label: str
    rows: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    logs: list[dict] = field(default_factory=list)

    @property
    def dataset(self) -> str | None:
        return self.logs[0]["hparams"].get("dataset") if self.logs else None

    @property
    def inputs(self) -> dict[str, dict]:
        """role -> {git_blob (12 hex digits), status} from the first log's input lines."""
        return log_inputs(self.logs[0]) if self.logs else {}


_INPUT = re.compile(r"^\S+ \(\d+ bytes, git blob ([0-9a-f]+), (.*)\)$")


def log_inputs(log: dict) -> dict[str, dict]:
    out = {}
    for key, value in log["hparams"].items():
        m = _INPUT.match(value) if key.startswith("input ") else None
        if m:
            out[key[len("input "):]] = {"git_blob": m.group(1), "status": m.group(2)}
    return out


def data_cell(entry: Entry) -> str:
    inputs = entry.inputs
    if not inputs:
        return "-"
    short = provenance.fingerprint([{"role": k, **v} for k, v in inputs.items()])[:7]
    statuses = [v["status"] for v in inputs.values()]
    if any(s.startswith("NOT") for s in statuses):
        return f"MODIFIED {short}"
    return f"published {short}" if all(s == "published" for s in statuses) else short


def input_warnings(entries: list[Entry]) -> list[str]:
    """One line per run that read other files than the first run of the same dataset."""
    lines, first = [], {}
    for entry in entries:
        if not entry.inputs or entry.dataset is None:
            continue
        base = first.setdefault(entry.dataset, entry)
        differ = [f"{role} ({base.inputs[role]['git_blob'][:7]} vs {v['git_blob'][:7]})"
                  for role, v in entry.inputs.items()
                  if role in base.inputs and base.inputs[role]["git_blob"] != v["git_blob"]]
        if differ:
            lines.append(f"warning: {base.label} and {entry.label} read different files for "
                         f"{entry.dataset}: {', '.join(differ)}")
    return lines


def row_names(ks=(5, 10, 15, 20)) -> list[str]:
    names = ["best epoch", "epochs run"]
    for split in ("valid", "test"):
        names += [f"{split} {m.short}@{k}" for k in ks for m in LOGGED]
    return names + ["train seconds", "seconds/epoch"]


def entry_from_log(log: dict, label: str) -> Entry:
    """Table rows of one parsed log (values as printed: 4 decimals)."""
    if not log["epochs"]:
        raise CompareError(f"{label}: no 'Epoch: N, Loss: x' lines (not a training log)")
    entry = Entry(label, logs=[log])
    rows = entry.rows
    if log["best_epoch"] is not None:
        rows["best epoch"] = (log["best_epoch"], None)
    rows["epochs run"] = (len(log["epochs"]), None)
    for split, results in (("valid", log["best_valid"]), ("test", log["test"])):
        for name_at_k, value in (results or {}).items():
            rows[f"{split} {short_key(name_at_k)}"] = (value, None)
    if log["train_seconds"] is not None:
        rows["train seconds"] = (log["train_seconds"], None)
        rows["seconds/epoch"] = (log["train_seconds"] / len(log["epochs"]), None)
    return entry


def number(value, path: Path, key: str, missing_ok: bool = False) -> float | None:
    """``value`` of ``key`` in the JSON file ``path`` when it is a number (None too with
    ``missing_ok``); else CompareError naming the file and the key."""
    if (value is None and missing_ok) or \
            (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise CompareError(f"{path}: {key} is {json.dumps(value)[:40]}, not a number (the file "
                       f"was edited or damaged)")


def entry_from_summary(folder: Path, label: str | None) -> Entry:
    """Mean ± std rows of a multi-seed run (runs/seeds.py's summary.json) and its seeds' logs."""
    if problem := summary_problem(folder):  # never a mean the seeds no longer have
        raise CompareError(f"{folder}: {problem}")
    path = folder / "summary.json"
    summary = json.loads(path.read_text())
    entry = Entry("")
    rows = entry.rows

    def put(name, stat, key=None):
        key = key or name
        rows[name] = (number(stat["mean"], path, f"{key} mean"),
                      number(stat["std"], path, f"{key} std", missing_ok=True))

    put("best epoch", summary["best_epoch"], "best_epoch")
    put("epochs run", summary["last_epoch"], "last_epoch")
    for split, block in (("valid", "best_validation"), ("test", "test")):
        for name_at_k, stat in summary[block].items():
            put(f"{split} {short_key(name_at_k)}", stat, f"{block} {name_at_k}")
    put("train seconds", summary["train_seconds"], "train_seconds")
    put("seconds/epoch", summary["seconds_per_epoch"], "seconds_per_epoch")
    for run in summary.get("runs", []):
        if (folder / run / "train.log").is_file():
            entry.logs.append(parse_log(folder / run / "train.log"))
    label = label or model_label(folder.name, model_name(folder, entry.logs))
    entry.label = f"{label} ({summary['num_seeds']} seeds)"
    return entry


def model_name(folder: Path | None, logs: list[dict]) -> str | None:
    """A run's --model: from its config.json (a multi-seed run: seeds.json), else from the
    first log's header; None when neither names one (the reference's logs)."""
    for name in ("config.json", "seeds.json"):
        if folder is not None and (folder / name).is_file():
            model = json.loads((folder / name).read_text()).get("model")
            if model:
                return model
    return logs[0]["hparams"].get("model") if logs else None


def model_label(name: str, model: str | None) -> str:
    return f"{model}:{name}" if model else name


def unique_labels(entries: list[Entry]) -> list[Entry]:
    """Entries whose labels are all different: the second ``x`` becomes ``x#2``, ..."""
    seen: set[str] = set()
    for entry in entries:
        label, n = entry.label, 1
        while label in seen:
            n += 1
            label = f"{entry.label}#{n}"
        entry.label = label
        seen.add(label)
    return entries


def load(path: str | Path, label: str | None = None) -> Entry:
    """A log file, a run folder (its train.log) or a multi-seed run folder (summary.json);
    CompareError (one line) for anything that cannot be read as one."""
    try:
        return _load(Path(path), label)
    except OSError as err:
        raise CompareError(f"{path}: cannot be read ({err.strerror or err})") from None
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # JSONDecodeError too
        if isinstance(err, CompareError):
            raise
        raise CompareError(f"{path}: cannot be read as a training log or run folder "
                           f"({type(err).__name__}: {str(err)[:80]})") from None


def _load(path: Path, label: str | None) -> Entry:
    if path.is_dir():
        if (path / "summary.json").is_file() or (path / SEEDS_FILE).is_file():
            return entry_from_summary(path, label)
        if (path / "train.log").is_file():
            log = parse_log(path / "train.log")
            label = label or model_label(path.name, model_name(path, [log]))
            return with_run_counts(entry_from_log(log, label), path)
        raise CompareError(f"{path}: neither train.log nor summary.json there")
    if not path.is_file():
        raise CompareError(f"{path}: no such file or folder")
    log, folder = parse_log(path), path.parent if path.name == "train.log" else None
    name = path.parent.name if folder else path.stem
    return entry_from_log(log, label or model_label(name, model_name(folder, [log])))


def with_run_counts(entry: Entry, run_dir: Path) -> Entry:
    """A finished run's epoch count and seconds per epoch from its metrics.json (the log
    shows only the validated epochs, every --evaluation_step-th), and its disliked@k on a
    dislikes variant (the log shows them rounded)."""
    path = run_dir / "metrics.json"
    if path.is_file():
        metrics = json.loads(path.read_text())
        for row, key in (("epochs run", "last_epoch"), ("seconds/epoch", "seconds_per_epoch")):
            entry.rows[row] = (number(metrics[key], path, key), None)
        for name, value in metrics["test"].items():
            if name.startswith("disliked@"):
                entry.rows[f"test {short_key(name)}"] = (number(value, path, f"test {name}"),
                                                         None)
    return entry


def _cell(name: str, value, std, base) -> str:
    """Epoch counts as integers, seconds with one decimal, metrics with four (as logged)."""
    if value is None:  # a group no user falls into
        return "-"
    digits = {"best epoch": 0, "epochs run": 0, "train seconds": 1, "seconds/epoch": 3}.get(
        name, 0 if name.endswith(" users") else 4)
    text = f"{value:.{digits}f}"
    if std is not None:
        text += f"±{std:.{digits}f}" if digits else f"±{std:.1f}"
    if base is not None:
        text += f" ({value - base:+.{digits}f})"
    return text


def table_lines(entries: list[Entry]) -> list[str]:
    """One row per quantity, one column per entry; columns after the first show their
    difference to the first in parentheses. Quantities no entry has are left out."""
    names = [n for n in row_names() if any(n in e.rows for e in entries)]
    names += [n for n in dict.fromkeys(n for e in entries for n in e.rows) if n not in names]
    first = entries[0].rows
    cells = [["", *(e.label for e in entries)]]
    for name in names:
        row = [name]
        for j, e in enumerate(entries):
            if name not in e.rows:
                row.append("-")
                continue
            value, std = e.rows[name]
            base = first[name][0] if j > 0 and name in first else None
            row.append(_cell(name, value, std, base))
        cells.append(row)
    if any(e.inputs for e in entries):
        cells.append(["data", *(data_cell(e) for e in entries)])
    widths = [max(len(r[c]) for r in cells) for c in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in cells] + input_warnings(entries)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="LOG_OR_RUN",
                        help="training logs, run folders or multi-seed run folders")
    parser.add_argument("--labels", nargs="+",
                        help="column names (default: <model>:<file or folder name>)")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw the curves into this file")
    parser.add_argument("--by", choices=BY, help="test recall/NDCG per item-popularity group "
                        "or user-activity quartile (run folders; metrics.json's breakdowns)")
    add_test_flags(parser)
    args = parser.parse_args(argv)
    options = {name: getattr(args, name) for name in TEST_OPTIONS}

    def run():
        if args.test:
            lines = significance_lines(args.paths, args.labels, args.plot, **options)
        else:
            given = [name for name, value in options.items() if value not in (None, False)]
            if given:
                raise CompareError(f"--{given[0].replace('json_to', 'json')} is an option "
                                   f"of --test")
            lines = compare_lines(args.paths, args.labels, args.plot, args.by)
        print("\n".join(lines))
    return run_cli(run)


TEST_OPTIONS = ("metrics", "alpha", "seed", "other_train", "json_to", "split")


def add_test_flags(parser) -> None:
    group = parser.add_argument_group("significance tests (--test)")
    group.add_argument("--test", action="store_true",
                       help="paired tests of each run folder against the first (the baseline) "
                            "on the test users; needs per_user.npz in every run folder")
    group.add_argument("--metrics", nargs="+", metavar="NAME@K",
                       help="metrics to test (default: recall@20 ndcg@20)")
    group.add_argument("--alpha", type=float, help="significance level after the Holm "
                                                   "adjustment (default 0.05)")
    group.add_argument("--seed", type=int, help="seed of the bootstrap intervals (default 0)")
    group.add_argument("--other_train", action="store_true",
                       help="allow runs trained on other files (e.g. augmented vs original "
                            "training data); validation and test files must still be the same")
    group.add_argument("--split", choices=("test", "test_dislikes"),
                       help="the users and values to pair: test (default) or, for runs on a "
                            "dislikes variant, test_dislikes (the users with held-out "
                            "dislikes; default metric disliked@20, lower is better)")
    group.add_argument("--json", dest="json_to", metavar="FILE",
                       help="also write every number of the tests to this file")


def significance_lines(paths, labels=None, plot_to=None, **options) -> list[str]:
    """``--test``: the significance table of the run folders at ``paths`` (the first is the
    baseline; ``labels`` name the first columns); see runs/significance.py."""
    from runs import paired_runs, significance
    if plot_to:
        raise CompareError("--plot draws the side-by-side table's curves; run it without --test")
    options = {k: v for k, v in options.items() if v is not None}
    split = options.pop("split", "test")
    significance.check_options(options.get("alpha", significance.DEFAULT_ALPHA),
                               options.get("json_to"))
    labels, runs = list(labels or []), []
    for i, path in enumerate(paths):
        run = paired_runs.load_run(path, split)
        name = labels[i] if i < len(labels) else model_label(Path(path).name, run.model)
        run.label = f"{name} ({len(run.seeds)} seeds)" if run.multi_seed else name
        runs.append(run)
    return significance.report_lines(unique_labels(runs), **options)


def lines_after_run(paths) -> list[str]:
    """main.py --compare_to, after the run finished and wrote metrics.json: the table, or one
    warning line when a compared file can no longer be read (it was checked before training;
    the run's own results stand and the run still ends with exit code 0)."""
    try:
        return compare_lines(paths)
    except UserError as err:
        return [f"warning: --compare_to: no table ({err}); the run itself finished"]


def compare_lines(paths, labels=None, plot_to: str | None = None, by: str | None = None
                  ) -> list[str]:
    """The table of the logs / runs at ``paths`` (``labels`` name the first columns); with
    ``plot_to``, the curves drawn into that file too and a last line naming it; ``by``: the
    rows are the runs' test breakdowns (runs/breakdown_rows.py) instead."""
    problem = plot_problem(plot_to) if plot_to else None
    if problem:
        raise CompareError(f"--plot {plot_to}: {problem}")
    labels = list(labels or [])
    entries = unique_labels([load(p, labels[i] if i < len(labels) else None)
                             for i, p in enumerate(paths)])
    for entry, path in zip(entries, paths) if by else ():
        entry.rows = breakdown_rows(path, by)
    lines = table_lines(entries)
    if plot_to:
        plot(entries, plot_to)
        lines.append(f"plot: {plot_to}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
