"""bench/scale.py: its verdicts on the issue's targets, and one real (short) measurement."""
from __future__ import annotations

import json

from bench import scale
from conftest import SHARED_DATASETS, shared_dataset


def result(shape: str, device: str, s_per_epoch: float, rss_mib: float, timed: int,
           total: int) -> dict:
    return {"shape": shape, "device": device, "dataset": shape, "train_file": "augment",
            "users": 1, "items": 1, "t": 1, "layers": 4, "batches_timed": timed,
            "batches_per_epoch": total, "s_per_batch": 0.1, "train_s_per_epoch": s_per_epoch,
            "valid_s": 0.0, "s_per_epoch": s_per_epoch, "peak_rss_mib": rss_mib,
            "peak_rss_after": {"train": rss_mib}, "load_s": 0.0, "cuda_peak_mib": None}


def test_targets_depend_on_the_device():
    # CPU: ML-1M <= 33 s; the Amazon_Books RSS bar on every device; GPU: Books <= 822/20 s
    assert scale.target_text(result("ML-1M", "cpu", 32.9, 800, 100, 451)) == \
        "<= 33 s/epoch: met"
    assert scale.target_text(result("ML-1M", "cpu", 33.1, 800, 100, 451)) == \
        "<= 33 s/epoch: NOT met"
    assert scale.target_text(result("ML-1M", "cuda", 45.1, 800, 100, 451)) == "-"
    assert scale.target_text(result("Amazon_Books", "cpu", 700, 4100, 30, 1143)) == \
        "RSS < 4 GiB: NOT met"
    assert scale.target_text(result("Amazon_Books", "cuda:0", 41.0, 1900, 30, 1143)) == \
        "<= 41 s/epoch: met; RSS < 4 GiB: met"
    assert scale.target_text(result("Amazon_Books", "cuda", 41.2, 1900, 30, 1143)).startswith(
        "<= 41 s/epoch: NOT met")


def test_footnote_says_whether_the_epoch_was_extrapolated():
    partial = scale.table([result("ML-1M", "cpu", 44.0, 800, 100, 451)])
    full = scale.table([result("ML-1M", "cpu", 44.0, 800, 451, 451)])
    assert any("EXTRAPOLATED" in line for line in partial)
    assert not any("EXTRAPOLATED" in line for line in full)
    assert any("every batch of one full epoch timed" in line for line in full)


@shared_dataset("ML-1M")
def test_short_ml1m_measurement(tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert scale.main(["--shapes", "ML-1M", "--batches", "2", "--threads", "1",
                       "--data_dir", str(SHARED_DATASETS), "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    # ML-1M train_original: 6,034 users, 3,125 items, 461,348 rows of T in 451 batches
    assert (r["users"], r["items"], r["t"]) == (6034, 3125, 461348)
    assert (r["batches_timed"], r["batches_per_epoch"]) == (2, 451)
    assert r["s_per_epoch"] > r["train_s_per_epoch"] > 0
    assert r["peak_rss_mib"] >= max(r["peak_rss_after"].values()) > 0
    assert "ML-1M" in capsys.readouterr().out
