"""compare.py --plot: validation Recall@20, NDCG@20 and the loss per epoch of every compared
log, drawn into one image file, written atomically (a full or read-only disk is one line
and leaves no half-written image)."""
from __future__ import annotations

import os
from pathlib import Path

from data.errors import UserError
from runs.files import WriteError, atomic_write
from runs.metrics import key


class PlotError(UserError, ValueError):
    """An image file that cannot be written."""


def plot(entries: list, out: str | Path) -> None:
    """Validation Recall@20, NDCG@20 and the loss per epoch of every log on shared axes;
    a dot marks each log's best epoch. Seeds of one multi-seed run share a colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    # a run on a folder without validation logs its test metrics per epoch instead
    fixed = {log["best_valid"] is None for entry in entries for log in entry.logs}
    split = {frozenset({False}): "validation", frozenset({True}): "test (no validation)"}.get(
        frozenset(fixed), "validation, or test where a run has none")
    panels = ((f"{split} Recall@20", key("recall", 20)), (f"{split} NDCG@20", key("ndcg", 20)),
              ("loss", None))
    for c, entry in enumerate(entries):
        colour = f"C{c % 10}"
        for s, log in enumerate(entry.logs):
            epochs = [e["epoch"] for e in log["epochs"]]
            label = entry.label if s == 0 else None
            alpha = 1.0 if len(entry.logs) == 1 else 0.6
            for ax, (title, name) in zip(axes, panels):
                if name is None:
                    ys = [e["loss"] for e in log["epochs"]]
                else:
                    ys = [e["metrics"].get(name, float("nan")) for e in log["epochs"]]
                ax.plot(epochs, ys, color=colour, lw=1, alpha=alpha, label=label)
                best = log["best_epoch"]
                if best is not None and best in epochs:
                    ax.plot([best], [ys[epochs.index(best)]], "o", color=colour, ms=5)
    for ax, (title, _) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    try:  # a full or read-only disk: one line naming the file, no half-written image
        atomic_write(Path(out), lambda f: fig.savefig(f, format=Path(out).suffix[1:].lower(),
                                                      dpi=110))
    except WriteError as err:
        raise PlotError(f"--plot {err}") from None
    finally:
        plt.close(fig)


def plot_problem(out: str) -> str | None:
    """Why the plot cannot be written to ``out``, or None."""
    path = Path(out)
    if path.is_dir():
        return "is a folder; name a file (e.g. curves.png)"
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist"
    if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
        return f"the folder {path.parent} is on a read-only file system"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"the folder {path.parent} is not writable"
    if path.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg"):
        return "name a .png, .pdf, .svg or .jpg file"
    return None
