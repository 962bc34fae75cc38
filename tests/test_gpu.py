"""The CUDA path computes what the CPU path computes (run by bench/gpu_check.sh).

Skipped without a CUDA device. Data: ML-100K from $REFINE_DATA_DIR (the GPU machine gets a
copy, see bench/gpu_check.sh).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

import dataloader
import main as M
from recommenders import base, make_config, refine_plus
from conftest import SHARED_DATASETS, interrupt_second_epoch
from model import ReFINePlus
from runs.metrics import evaluate

DATA = Path(os.environ.get("REFINE_DATA_DIR") or SHARED_DATASETS)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not (DATA / "ML-100K").is_dir(), reason=f"no ML-100K split under {DATA}"),
]


@pytest.fixture(scope="module")
def data():
    return dataloader.load_dataset(DATA, "ML-100K", "augment")


@pytest.mark.parametrize("negatives", ["shared", "per_user"])
def test_cuda_step_equals_cpu_step(data, negatives):
    config = make_config(negatives=negatives)
    graphs = {d: base.build_graphs(data, d) for d in ("cpu", "cuda")}
    for g in graphs.values():
        g.norm_adj = g.norm_adj.double()
    torch.manual_seed(3)
    cpu_model = ReFINePlus(data.num_users, data.num_items).double()
    cuda_model = copy.deepcopy(cpu_model).cuda()
    batch = torch.randperm(len(data.train))[:1024]
    pos_users = graphs["cpu"].train.users[batch][graphs["cpu"].is_pos[batch]]
    negs = refine_plus.draw_negatives(pos_users, graphs["cpu"],
                                      refine_plus.num_negatives(data.num_items),
                                      config.settings.real_neg_samp_prob, config.settings.negatives == "shared")
    loss_c, value_c, _ = refine_plus.loss_of(cpu_model, graphs["cpu"], batch, negs, config)
    loss_g, value_g, _ = refine_plus.loss_of(cuda_model, graphs["cuda"], batch.cuda(),
                                             negs.cuda(), config)
    torch.testing.assert_close(value_g.cpu(), value_c, rtol=1e-10, atol=0)
    loss_c.backward()
    loss_g.backward()
    for (name, pc), pg in zip(cpu_model.named_parameters(), cuda_model.parameters()):
        torch.testing.assert_close(pg.grad.cpu(), pc.grad, rtol=1e-8, atol=1e-14, msg=name)


def test_cuda_evaluation_equals_cpu(data):
    graphs = base.build_eval_index(data, "cpu")
    graphs_gpu = base.build_eval_index(data, "cuda")
    torch.manual_seed(4)
    users, items = torch.randn(data.num_users, 64), torch.randn(data.num_items, 64)
    cpu = evaluate(users, items, graphs.seen_by_user, graphs.valid_by_user, (5, 10, 20))
    gpu = evaluate(users.cuda(), items.cuda(), graphs_gpu.seen_by_user, graphs_gpu.valid_by_user,
                   (5, 10, 20))
    assert list(cpu) == list(gpu)
    for name, value in cpu.items():
        assert gpu[name] == pytest.approx(value, abs=1e-6), name


def test_cuda_training_run(tmp_path):
    common = ["--dataset", "ML-100K", "--data_dir", str(DATA), "--no_download", "--epochs", "3",
              "--result_dir", str(tmp_path), "--quiet"]
    assert M.main([*common, "--device", "cuda", "--path_name", "gpu"]) == 0
    assert M.main([*common, "--device", "cpu", "--path_name", "cpu"]) == 0
    runs = {name: [json.loads(line) for line in open(tmp_path / "ML-100K" / name / "epochs.jsonl")]
            for name in ("gpu", "cpu")}
    losses = [e["loss"] for e in runs["gpu"]]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[0] > losses[1] > losses[2]
    # different random streams on the two devices: close, not equal
    for gpu, cpu in zip(runs["gpu"], runs["cpu"]):
        assert gpu["loss"] == pytest.approx(cpu["loss"], rel=0.02)
    assert runs["gpu"][-1]["valid"]["recall@20"] == pytest.approx(
        runs["cpu"][-1]["valid"]["recall@20"], abs=0.03)


def test_cuda_resume_after_interrupt(tmp_path, monkeypatch):
    """A run resumed on the GPU continues like the uninterrupted one. (It once crashed:
    torch.load(map_location="cuda") moved the saved CPU RNG state onto the GPU.)"""
    common = ["--dataset", "ML-100K", "--data_dir", str(DATA), "--no_download", "--epochs", "3",
              "--batch_size", "4096", "--device", "cuda", "--result_dir", str(tmp_path),
              "--quiet"]
    assert M.main([*common, "--path_name", "straight"]) == 0
    interrupt_second_epoch(monkeypatch)
    assert M.main([*common, "--path_name", "split"]) == 130
    monkeypatch.undo()
    assert M.main(["--resume", str(tmp_path / "ML-100K" / "split"), "--quiet"]) == 0
    runs = {name: [json.loads(line) for line in open(tmp_path / "ML-100K" / name / "epochs.jsonl")]
            for name in ("straight", "split")}
    assert [e["epoch"] for e in runs["split"]] == [1, 2, 3]
    # CUDA sparse products may sum in a different order run to run: equal to rounding
    for a, b in zip(runs["split"], runs["straight"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["valid"] == pytest.approx(b["valid"], abs=1e-3)
