"""The training log's layout as the reference wrote it (the rule lines, one metric line per
k) and the one parser that reads our train.log files and the reference's logs alike."""
from __future__ import annotations

import re
from pathlib import Path

from runs.metrics import BY_LABEL, LOGGED, Results, key

RULE = "#" * 77


def format_metrics(ks, results: Results, metrics=LOGGED) -> list[str]:
    """One line per k, ``<label>@<k>: <value>`` of each logged metric in table order, values with
    four decimals, k < 10 padded to width 7 (the reference's layout). A metric that
    ``results`` lacks (a run from before it was added) is left out."""
    lines = []
    for k in ks:
        w = 7 if k < 10 else 0
        lines.append(", ".join(f"{m.label}@{k}: {results[key(m.name, k)]:{w}.4f}"
                               for m in metrics if key(m.name, k) in results))
    return lines


_PAIR = re.compile(r"([A-Za-z][\w-]*)@(\d+):\s*([-\d.naif]+)")
_EPOCH = re.compile(r"^Epoch:\s*(\d+),\s*Loss:\s*([-\d.naif]+)")
_KV = re.compile(r"^([A-Za-z_][\w ]*?):\s+(.*)$")


def metric_values(line: str) -> Results | None:
    """{name@k: value} of a metric line (one with a ``<label>@<k>: <value>`` of the table;
    a label the table does not know is kept under its lower-cased self), else None."""
    pairs = _PAIR.findall(line)
    if not any(label in BY_LABEL for label, _, _ in pairs):
        return None
    return {key(BY_LABEL[label].name if label in BY_LABEL else label.lower(), int(k)):
            float(value) for label, k, value in pairs}


def parse_log(path: str | Path) -> dict:
    """Read a ReFINe/ReFINe++ training log, ours or the reference's, into a dict:

    ``hparams`` (header name: value strings), ``stats`` (user, item, train/valid/test
    counts), ``epochs`` (list of {epoch, loss, metrics}), ``best_epoch``, ``best_valid``,
    ``train_seconds``, ``test`` (None when the log has no final test block); metrics,
    best_valid and test are {name@k: value} (runs.metrics: ``"recall@20"``).
    """
    out = {"hparams": {}, "stats": {}, "epochs": [], "best_epoch": None, "best_valid": None,
           "train_seconds": None, "test": None}
    section, header_blocks = "header", 0
    sink = None  # the {name@k: value} dict the next metric lines belong to
    for raw in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if line == RULE:
            header_blocks += 1
            continue
        m = _EPOCH.match(line)
        if m:
            section = "epoch"
            epoch = {"epoch": int(m.group(1)), "loss": float(m.group(2)), "metrics": {}}
            out["epochs"].append(epoch)
            sink = epoch["metrics"]
            continue
        values = metric_values(line) if sink is not None else None
        if values:
            sink.update(values)
            continue
        if "Best Validation Results" in line:
            m = re.search(r"epoch (\d+)", line)
            out["best_epoch"] = int(m.group(1)) if m else None
            out["best_valid"] = sink = {}
            continue
        if line.startswith("Final Test Results"):
            out["test"] = sink = {}
            continue
        m = re.match(r"Training completed in ([\d.]+) seconds", line)
        if m:
            out["train_seconds"] = float(m.group(1))
            continue
        if section == "header":
            header_line(out, line, header_blocks)
    return out


def header_line(out: dict, line: str, header_blocks: int) -> None:
    """A line before the first epoch: the data counts, or (first block) ``name: value``."""
    m = re.match(r"^user:\s*(\d+),\s*item:\s*(\d+)", line)
    if m:
        out["stats"]["user"], out["stats"]["item"] = int(m.group(1)), int(m.group(2))
        return
    m = re.match(r"^(train|valid|test) interations:\s*(\d+)", line)
    if m:
        out["stats"][m.group(1)] = int(m.group(2))
        return
    m = _KV.match(line)
    if m and header_blocks <= 1:
        out["hparams"][m.group(1)] = m.group(2)
