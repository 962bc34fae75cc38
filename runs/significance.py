"""Paired significance tests of runs against a baseline: ``python compare.py --test BASE RUN ...``.

The first run is the baseline; each other run is compared with it on the test split, for
each chosen ``<metric>@<k>``, the users paired by their original id (runs/paired_runs.py reads
per_user.npz and refuses runs on different data or users):

* each user's value is the mean over the run's seeds (a single run: its one value);
* over users: Wilcoxon signed-rank (``scipy.stats.wilcoxon``, its defaults: users whose
  difference is 0 are left out) and the paired t-test (``scipy.stats.ttest_rel``) on the
  per-user values, and a 95 % interval of the difference of the means by the paired
  bootstrap (``scipy.stats.bootstrap``: users resampled with both runs' values, percentile
  interval, RESAMPLES resamples from ``--seed``);
* over seeds: the paired t-test on the seeds' test means, only when both runs have the same
  seed list of two seeds or more;
* Holm–Bonferroni (``statsmodels.stats.multitest.multipletests(method="holm")``) within each
  of the three tests, over every (run, metric) row with a p-value; ``*`` marks a difference
  that is significant at ``--alpha`` after it.

scipy and statsmodels are imported here only, when the tests run: plain compare.py stays fast.
"""
from __future__ import annotations

import inspect
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.errors import UserError
from runs.paired_runs import RunScores, blob, file_text, paired

RESAMPLES = 10_000
CONFIDENCE = 0.95
DEFAULT_SEED = 0  # of the bootstrap: the same seed, the same intervals
DEFAULT_ALPHA = 0.05
# at k = 20, else at the largest k every run has; on held-out dislikes, the share inside top-k
DEFAULT_METRICS = {"test": ("recall", "ndcg"), "test_dislikes": ("disliked",)}
TESTS = {"wilcoxon": "Wilcoxon p (Holm)", "t_users": "t users p (Holm)",
         "t_seeds": "t seeds p (Holm)"}


class SignificanceError(UserError, ValueError):
    """Options of ``--test`` that cannot be honoured (one line)."""


@dataclass
class Outcome:
    """One test of one row: its p-value (None with the reason when there is none), then the
    Holm-adjusted p-value within its test and whether it is significant after it."""

    p: float | None = None
    reason: str | None = None
    holm: float | None = None
    significant: bool = False


@dataclass
class Row:
    """One run against the baseline at one metric."""

    run: RunScores
    metric: str
    base_mean: float
    mean: float
    ci: tuple[float, float] | None
    tests: dict[str, Outcome] = field(default_factory=dict)

    @property
    def diff(self) -> float:
        return self.mean - self.base_mean


# ------------------------------------------------------------------------- the tests

def _quietly(fn, *args, **kwargs):
    """fn's result with scipy's warnings on degenerate data (no variance, all zero) silenced:
    the outcome says so instead."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def p_value(test, after, before) -> Outcome:
    """A paired scipy test of ``after`` against ``before``: its p-value, or why none."""
    try:
        p = float(_quietly(test, after, before).pvalue)
    except ValueError as err:  # e.g. older scipy's wilcoxon when every difference is 0
        return Outcome(reason=f"scipy: {str(err).rstrip('.')}")
    if math.isnan(p):
        same = np.array_equal(after, before)
        return Outcome(reason="no user's value differs" if same else "the differences do not vary")
    return Outcome(p)


def mean_difference(after, before, axis=-1):
    return np.mean(after, axis=axis) - np.mean(before, axis=axis)


def bootstrap_ci(after: np.ndarray, before: np.ndarray, seed: int) -> tuple[float, float] | None:
    """Paired bootstrap percentile interval of mean(after) - mean(before); None under two users."""
    from scipy import stats
    if len(after) < 2:
        return None
    # scipy >= 1.15 names the generator rng=, older ones random_state=
    rng = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    result = _quietly(stats.bootstrap, (after, before), mean_difference, paired=True,
                      vectorized=True, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                      method="percentile", batch=max(1, 4_000_000 // len(after)),
                      **{rng: np.random.default_rng(seed)})
    low, high = result.confidence_interval
    return float(low), float(high)


def over_seeds(base: RunScores, run: RunScores, metric: str) -> Outcome:
    """Paired t-test on the seeds' test means; none unless both have the same >= 2 seeds."""
    from scipy import stats
    if base.seeds != run.seeds:
        return Outcome(reason=f"other seeds than the baseline ({seeds_text(run.seeds)} vs "
                              f"{seeds_text(base.seeds)})")
    if len(base.seeds) < 2:
        return Outcome(reason="a single seed")
    return p_value(stats.ttest_rel, run.per_seed(metric), base.per_seed(metric))


def seeds_text(seeds) -> str:
    return " ".join(map(str, seeds))


def compare_metric(base: RunScores, run: RunScores, metric: str, seed: int) -> Row:
    """Every test of ``run`` against ``base`` at ``metric`` (users already paired)."""
    from scipy import stats
    before, after = base.per_user(metric), run.per_user(metric)
    row = Row(run, metric, float(before.mean()), float(after.mean()),
              bootstrap_ci(after, before, seed))
    row.tests = {"wilcoxon": p_value(stats.wilcoxon, after, before),
                 "t_users": p_value(stats.ttest_rel, after, before),
                 "t_seeds": over_seeds(base, run, metric)}
    return row


def holm(rows: list[Row], alpha: float) -> None:
    """Holm–Bonferroni within each test, over the rows that have a p-value."""
    from statsmodels.stats.multitest import multipletests
    for test in TESTS:
        family = [row.tests[test] for row in rows if row.tests[test].p is not None]
        if not family:
            continue
        reject, adjusted, _, _ = multipletests([o.p for o in family], alpha=alpha,
                                               method="holm")
        for outcome, significant, p in zip(family, reject, adjusted):
            outcome.holm, outcome.significant = float(p), bool(significant)


# ---------------------------------------------------------------------- the command

def choose_metrics(runs: list[RunScores], asked) -> list[str]:
    """``asked`` (checked: every run must have each), or the split's default metrics (recall
    and ndcg; on test_dislikes disliked) at k = 20, else at the largest k every run has."""
    common = set.intersection(*(set(run.values) for run in runs))
    if asked:
        missing = [m for m in asked if m not in common]
        if missing:
            raise SignificanceError(f"--metrics {missing[0]}: not in every run's per-user "
                                    f"file (all have: {', '.join(sorted_names(common))})")
        return list(dict.fromkeys(asked))
    defaults = DEFAULT_METRICS[runs[0].split]
    ks = {int(k) for name, _, k in (m.rpartition("@") for m in common)
          if name in defaults and k.isdigit()}
    if not ks:
        raise SignificanceError(f"no {' or '.join(defaults)} in every run; name them "
                                f"with --metrics (all have: {', '.join(sorted_names(common))})")
    k = 20 if 20 in ks else max(ks)
    return [f"{name}@{k}" for name in defaults if f"{name}@{k}" in common]


def sorted_names(names) -> list[str]:
    """By k, then by name: precision@5, recall@5, ..., ndcg@20."""
    def k(name):
        tail = name.rpartition("@")[2]
        return int(tail) if tail.isdigit() else 0
    return sorted(names, key=lambda m: (k(m), m))


def tested_rows(runs: list[RunScores], metrics=None, alpha: float = DEFAULT_ALPHA,
                seed: int = DEFAULT_SEED, other_train: bool = False) -> list[Row]:
    """Every (run, metric) row against ``runs[0]``, Holm-adjusted."""
    if len(runs) < 2:
        raise SignificanceError("--test needs two runs or more: the first is the baseline")
    check_options(alpha, None)
    base = runs[0]
    others = [paired(base, run, other_train) for run in runs[1:]]
    metrics = choose_metrics(runs, metrics)
    rows = [compare_metric(base, run, metric, seed) for run in others for metric in metrics]
    holm(rows, alpha)
    return rows


# ---------------------------------------------------------------------------- output

def p_cell(outcome: Outcome) -> str:
    if outcome.p is None:
        return "n/a"
    return f"{outcome.p:.2g} ({outcome.holm:.2g}){'*' if outcome.significant else ''}"


def table_lines(rows: list[Row]) -> list[str]:
    """One line per (run, metric), aligned as compare.py's table."""
    cells = [["", "metric", "baseline", "run", "diff", f"{CONFIDENCE:.0%} CI of diff",
              *TESTS.values()]]
    for row in rows:
        ci = f"[{row.ci[0]:+.4f}, {row.ci[1]:+.4f}]" if row.ci else "n/a"
        cells.append([row.run.label, row.metric, f"{row.base_mean:.4f}", f"{row.mean:.4f}",
                      f"{row.diff:+.4f}", ci, *(p_cell(row.tests[t]) for t in TESTS)])
    widths = [max(len(r[c]) for r in cells) for c in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in cells]


def note_lines(base: RunScores, rows: list[Row], alpha: float, seed: int) -> list[str]:
    """What the numbers are, then why a test has no p-value and what differs between runs."""
    lines = [("diff = run - baseline of the mean over users of each user's mean over seeds; "
              f"CI: paired bootstrap over users ({RESAMPLES} resamples, percentile, seed {seed})"),
             ("p (Holm): p-value (Holm-adjusted within its test, over the rows that have one); "
              f"* = significant at alpha {alpha:g} after the adjustment")]
    seen = set()
    for row in rows:
        for test, outcome in row.tests.items():
            line = f"{TESTS[test].split(' p ')[0]} n/a for {row.run.label}: {outcome.reason}"
            if outcome.p is None and line not in seen:
                seen.add(line)
                lines.append(line)
    for run in dict.fromkeys(row.run.label for row in rows):
        other = next(row.run for row in rows if row.run.label == run)
        if other.seeds != base.seeds:
            lines.append(f"note: {run} has other seeds than the baseline: each user's value is "
                         f"the mean over the run's own seeds")
        if blob(other.data.get("train")) != blob(base.data.get("train")):
            lines.append(f"note: {run} trained on other data (--other_train): "
                         f"{file_text(other.data.get('train'))} vs baseline "
                         f"{file_text(base.data.get('train'))}")
    return lines


def run_json(run: RunScores) -> dict:
    return {"label": run.label, "path": str(run.path), "model": run.model, "seeds": run.seeds,
            "data": {role: {"file": f[0], "git_blob": f[1]} if f else None
                     for role, f in run.data.items()}}


def as_json(base: RunScores, rows: list[Row], alpha: float, seed: int) -> dict:
    """Every number of the table, unrounded; a test without p-value has p null and a reason."""
    return {"split": base.split, "baseline": run_json(base), "users": len(base.user_ids),
            "alpha": alpha, "correction": "holm within each test, over the rows with a p-value",
            "bootstrap": {"method": "percentile", "paired": True, "resamples": RESAMPLES,
                          "confidence": CONFIDENCE, "seed": seed},
            "rows": [{"run": row.run.label, "metric": row.metric, "baseline_mean": row.base_mean,
                      "mean": row.mean, "diff": row.diff,
                      "ci": list(row.ci) if row.ci else None,
                      **{test: vars(outcome) for test, outcome in row.tests.items()}}
                     for row in rows],
            "runs": [run_json(run) for run in {row.run.label: row.run for row in rows}.values()]}


def check_options(alpha: float, json_to: str | None) -> None:
    """SignificanceError for an --alpha outside (0, 1) or a --json file that cannot be
    written (checked before any run is read)."""
    if not 0 < alpha < 1:
        raise SignificanceError(f"--alpha {alpha}: must lie between 0 and 1")
    path = Path(json_to) if json_to else None
    if path is not None and path.is_dir():
        raise SignificanceError(f"--json {json_to}: is a folder; name a file (e.g. tests.json)")
    if path is not None and not path.parent.is_dir():
        raise SignificanceError(f"--json {json_to}: the folder {path.parent} does not exist")


def report_lines(runs: list[RunScores], metrics=None, alpha: float = DEFAULT_ALPHA,
                 seed: int = DEFAULT_SEED, other_train: bool = False,
                 json_to: str | None = None) -> list[str]:
    """The table of ``compare.py --test`` and its notes; with ``json_to``, every number
    written to that file too and a last line naming it."""
    check_options(alpha, json_to)
    rows = tested_rows(runs, metrics, alpha, seed, other_train)
    base = runs[0]
    heading = (f"baseline: {base.label}, {len(base.user_ids)} {base.split} users paired by user id, "
               f"seeds {seeds_text(base.seeds)}")
    lines = [heading, *table_lines(rows), *note_lines(base, rows, alpha, seed)]
    if json_to:
        Path(json_to).write_text(json.dumps(as_json(runs[0], rows, alpha, seed), indent=2) + "\n")
        lines.append(f"json: {json_to}")
    return lines
