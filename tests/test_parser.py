"""The one log parser reads the reference logs (ReFINe++ and ReFINe) and ours alike."""
from __future__ import annotations

import pytest

from conftest import SHARED_REFERENCE, needs_reference_logs
from runs.log_format import format_metrics, parse_log
from runs.metrics import METRICS

REFERENCE_KEYS = {f"{m}@{k}" for k in (5, 10, 15, 20) for m in ("precision", "recall", "ndcg")}

# docs/results.md: final test Recall@20 / NDCG@20 and training seconds of the reference runs
REFERENCE_NUMBERS = {
    "ML-100K.log": (0.4420, 0.3783, 470),
    "ML-1M.log": (0.3228, 0.3376, 6916),
    "Netflix-1M.log": (0.2593, 0.2863, 6577),
    "Amazon-Music.log": (0.3673, 0.2041, 186),
    "Amazon-Book.log": (0.1600, 0.1254, 76439),
}


@needs_reference_logs
@pytest.mark.parametrize("name", sorted(REFERENCE_NUMBERS))
def test_reference_refine_plus_logs(name):
    log = parse_log(SHARED_REFERENCE / "refine_plus" / name)
    recall, ndcg, seconds = REFERENCE_NUMBERS[name]
    assert log["test"]["recall@20"] == recall and log["test"]["ndcg@20"] == ndcg
    assert round(log["train_seconds"]) == seconds
    epochs = log["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    assert all(set(e["metrics"]) == REFERENCE_KEYS for e in epochs)
    # "Early stopping at epoch N" names the best epoch, 50 epochs before the last one
    assert log["best_epoch"] == len(epochs) - 50
    assert log["best_valid"] == epochs[log["best_epoch"] - 1]["metrics"]
    assert log["hparams"]["early_stopping_step"] == "50"
    assert set(log["stats"]) == {"user", "item", "train", "valid", "test"}


@needs_reference_logs
def test_reference_log_values_by_hand():
    log = parse_log(SHARED_REFERENCE / "refine_plus" / "ML-100K.log")
    assert log["stats"] == {"user": 938, "item": 1008, "train": 65841, "valid": 5018,
                            "test": 10514}
    first = log["epochs"][0]
    assert first["loss"] == 5.0
    assert [first["metrics"][f"{m}@5"] for m in ("precision", "recall", "ndcg")] == \
        [0.0694, 0.0945, 0.0943]
    assert log["best_epoch"] == 400
    assert [log["best_valid"][f"{m}@20"] for m in ("precision", "recall", "ndcg")] == \
        [0.0959, 0.4395, 0.2814]
    assert log["hparams"]["dataset"] == "ML-100K" and log["hparams"]["layers"] == "4"


@needs_reference_logs
def test_reference_refine_logs():
    log = parse_log(SHARED_REFERENCE / "refine" / "ReFINe_ML-100K.out")
    assert log["stats"]["train"] == 52984
    assert log["hparams"]["r"] == "100" and log["hparams"]["t"] == "50"
    assert log["epochs"][0]["loss"] == pytest.approx(0.6857)
    assert log["test"] is not None and set(log["test"]) == REFERENCE_KEYS


RESULTS = {"precision@5": 0.0694, "recall@5": 0.0945, "ndcg@5": 0.0943,
           "precision@20": 0.0484, "recall@20": 0.2098, "ndcg@20": 0.1310}


def test_format_matches_reference_layout():
    """The reference's three metrics print as its lines, byte for byte; a metric the results
    lack (a run from before it was added) is left out of the line."""
    lines = format_metrics((5, 20), RESULTS, METRICS[:3])
    assert lines == ["Precision@5:  0.0694, Recall@5:  0.0945, NDCG@5:  0.0943",
                     "Precision@20: 0.0484, Recall@20: 0.2098, NDCG@20: 0.1310"]
    assert format_metrics((5, 20), RESULTS) == lines


def test_every_metric_of_the_table_round_trips(tmp_path):
    """What the log prints of each table metric, the parser reads back under its name."""
    results = {f"{m.name}@{k}": round(0.01 * (j + 1) + 0.1 * i, 4)
               for i, k in enumerate((5, 20)) for j, m in enumerate(METRICS)}
    lines = format_metrics((5, 20), results, METRICS)  # the unlogged ones too, if asked
    path = tmp_path / "train.log"
    path.write_text("\n".join(["Epoch: 001, Loss: 5.0000", *lines, "",
                               "Final Test Results", *lines]) + "\n")
    log = parse_log(path)
    assert log["epochs"][0]["metrics"] == results and log["test"] == results
