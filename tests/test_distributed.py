"""Distributed training (torchrun, gloo on CPU) computes the single-process updates.

The split of a batch into per-rank loss parts (distributed.Shard) is checked in-process
against the whole-batch loss and gradients in float64; then real ``torchrun`` launches with
2 gloo processes: one step's all-reduced gradients, and a 2-epoch main.py run against the
single-process run. Each on synthetic rows (conftest.varied_rows) and, where present, on
ML-100K (conftest.STEP_SOURCES).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main as M
from recommenders import make_config
from recommenders import refine_plus
from recommenders.base import build_eval_index
from runs import distributed
from runs.evaluation import write_per_user
from runs.trained import load_trained
from conftest import STEP_SOURCES, step_rows, step_source
from model import DispreferenceAE, ae_terms_sparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddp_step_worker  # noqa: E402


def torchrun(*args: str, nproc: int = 2, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_shard_bounds_cover_everything_once():
    for n in (0, 1, 5, 1024):
        for world in (1, 2, 3, 7):
            parts = [distributed.Shard(r, world).bounds(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert distributed.Shard(1, 3).bounds(10) == (3, 6)


def test_rows_in_range_by_hand():
    rows = torch.tensor([2, 5, 7])  # rows of X with ones, entries (owner -> rows[owner])
    owner = torch.tensor([0, 1, 1, 2, 0])
    cols = torch.tensor([10, 11, 12, 13, 14])
    kept_rows, kept_owner, kept_cols = refine_plus.rows_in_range(rows, owner, cols, 4, 8)
    assert kept_rows.tolist() == [5, 7]
    assert kept_owner.tolist() == [0, 0, 1]  # positions within kept_rows
    assert kept_cols.tolist() == [11, 12, 13]


def test_autoencoder_row_ranges_add_up_to_the_whole():
    torch.manual_seed(0)
    ae = DispreferenceAE(9, hidden_dim=6, code_dim=4).double()
    rows, owner = torch.tensor([0, 3, 4, 10]), torch.tensor([0, 0, 1, 2, 3, 3])
    cols = torch.tensor([1, 5, 2, 8, 0, 3])
    whole, z_whole = ae_terms_sparse(ae, rows, owner, cols, 12)
    whole.backward()
    expected = [p.grad.clone() for p in ae.parameters()]
    ae.zero_grad()
    total, codes = 0, []
    for lo, hi in ((0, 4), (4, 5), (5, 12)):
        part, z = ae_terms_sparse(ae, *refine_plus.rows_in_range(rows, owner, cols, lo, hi), 12,
                                  row_range=(lo, hi))
        part.backward()
        total, codes = total + part.detach(), codes + [z.detach()]
    torch.testing.assert_close(total, whole.detach(), rtol=1e-13, atol=0)
    torch.testing.assert_close(torch.cat(codes), z_whole.detach(), rtol=1e-13, atol=0)
    for p, g in zip(ae.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-18)


@pytest.fixture(scope="module", params=STEP_SOURCES)
def source(request, tmp_path_factory):
    """(data folder, dataset, its float64 graphs) of each conftest.STEP_SOURCES entry."""
    data_dir, dataset = step_source(request.param, tmp_path_factory)
    return data_dir, dataset, ddp_step_worker.load_graphs(data_dir, dataset)


def test_the_checked_batches_split_unevenly(source):
    """The step below: 5 ranks split its positives (ML-100K: 828), users and items unevenly."""
    graphs = source[2]
    torch.manual_seed(7)  # as ddp_step_worker.step draws its batch
    batch = torch.randperm(len(graphs.train))[:step_rows(len(graphs.train))]
    sizes = (int(graphs.is_pos[batch].sum()), graphs.num_users, graphs.num_items)
    assert all(size % 5 for size in sizes), sizes


@pytest.mark.parametrize("negatives,ae_input", ddp_step_worker.MODES)
@pytest.mark.parametrize("world", [2, 5])
def test_shard_losses_sum_to_the_batch_loss(source, negatives, ae_input, world):
    graphs = source[2]
    config = make_config(negatives=negatives, ae_input=ae_input)
    value, whole = ddp_step_worker.step(graphs, config)
    total, grads = 0, None
    for rank in range(world):
        part_value, part = ddp_step_worker.step(graphs, config, distributed.Shard(rank, world))
        total = total + part_value
        part_grads = [p.grad for p in part.parameters()]
        grads = part_grads if grads is None else [a + b for a, b in zip(grads, part_grads)]
    torch.testing.assert_close(total, value, rtol=1e-13, atol=0)
    for (name, p), g in zip(whole.named_parameters(), grads):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-15, msg=name)


def test_torchrun_gloo_step_gradients_equal_single_process(source, tmp_path):
    data_dir, dataset, graphs = source
    out = tmp_path / "grads.pt"
    proc = torchrun("tests/ddp_step_worker.py", str(data_dir), dataset, str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out, weights_only=False)
    assert saved["world"] == 2
    for (negatives, ae_input), got in saved["result"].items():
        config = make_config(negatives=negatives, ae_input=ae_input)
        value, model = ddp_step_worker.step(graphs, config)
        torch.testing.assert_close(got["value"], value, rtol=1e-13, atol=0)
        for name, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-10, atol=1e-15,
                                       msg=f"{negatives}/{ae_input}: {name}")


def test_torchrun_training_run_matches_single_process(source, tmp_path):
    data_dir, dataset, _ = source
    batch = 1024 if dataset == "ML-100K" else 64  # synthetic: 10 batches an epoch
    common = ["--dataset", dataset, "--data_dir", str(data_dir), "--no_download", "--epochs",
              "2", "--batch_size", str(batch), "--threads", "1", "--result_dir", str(tmp_path),
              "--quiet"]
    proc = torchrun("main.py", *common, "--path_name", "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert M.main([*common, "--path_name", "single"]) == 0
    ddp, single = tmp_path / dataset / "ddp", tmp_path / dataset / "single"
    assert f"distributed: 2 processes (gloo), global batch {batch}" in \
        (ddp / "train.log").read_text()
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    epochs = [[json.loads(line) for line in open(run / "epochs.jsonl")] for run in (ddp, single)]
    assert [e["epoch"] for e in epochs[0]] == [1, 2]  # written once (rank 0), not per rank
    for a, b in zip(*epochs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert list(a["valid"]) == list(b["valid"])
        assert a["valid"] == pytest.approx(b["valid"], abs=2e-3)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (ddp, single)]
    for key, value in metrics[1]["test"].items():
        assert metrics[0]["test"][key] == pytest.approx(value, abs=2e-3), key
    # rank 0's per_user.npz is what one process writes from the same best.pt
    trained = load_trained(ddp, dataset, str(data_dir))
    again = tmp_path / "again"
    again.mkdir()
    write_per_user(again, trained.model, trained.graphs, build_eval_index(trained.data, "cpu"),
                   trained.config, metrics[0]["best_epoch"], with_validation=True)
    assert (again / "per_user.npz").read_bytes() == (ddp / "per_user.npz").read_bytes()


def test_torchrun_rejects_the_bpr_baselines(tmp_path):
    proc = torchrun("main.py", "--model", "lightgcn", "--result_dir", str(tmp_path),
                    "--no_download", "--epochs", "1")
    assert proc.returncode != 0
    assert "does not train under torchrun (distributed); models that do: refine_plus" in proc.stderr
    assert not any(tmp_path.iterdir())  # no run folder was made
