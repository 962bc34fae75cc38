"""--compile on: the compiled elementwise parts of a ReFINe++ step against the eager ones
(values and gradients to float32 rounding), and the eager fallback when compiling fails."""
from __future__ import annotations

import copy
import shutil

import pytest
import torch

from conftest import step_rows
from model import ReFINePlus
from recommenders import compiled, make_config, refine_plus

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                    reason="torch.compile on CPU needs a C++ compiler")


@needs_compiler
@pytest.mark.parametrize("negatives", ["shared", "per_user"])
def test_compiled_step_equals_eager_step(step_graphs, negatives):
    """step_graphs: synthetic rows (conftest.varied_rows) and, where present, ML-100K."""
    graphs, config = step_graphs, make_config(negatives=negatives)
    kernels = compiled.make_kernels(True, torch.device("cpu"), warn=pytest.fail)
    assert kernels.compiled
    torch.manual_seed(4)
    eager = ReFINePlus(graphs.num_users, graphs.num_items)
    fused = copy.deepcopy(eager)
    n = refine_plus.num_negatives(graphs.num_items)
    rows = step_rows(len(graphs.train))
    for step in range(3):  # batches of other sizes: the dynamic shapes are exercised
        batch = torch.randperm(len(graphs.train))[:rows - rows // 10 * step]
        pos_users = graphs.train.users[batch][graphs.is_pos[batch]]
        negs = refine_plus.draw_negatives(pos_users, graphs, n,
                                          config.settings.real_neg_samp_prob,
                                          negatives == "shared")
        results = []
        for model, k in ((eager, compiled.EAGER), (fused, kernels)):
            model.zero_grad(set_to_none=True)
            loss, value, num_pos = refine_plus.loss_of(model, graphs, batch, negs, config,
                                                       kernels=k)
            loss.backward()
            results.append((value, num_pos))
        (v_e, p_e), (v_c, p_c) = results
        assert p_e == p_c
        torch.testing.assert_close(v_c, v_e, rtol=1e-6, atol=0)
        for (name, a), b in zip(eager.named_parameters(), fused.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-9, msg=name)


def test_a_failing_compile_falls_back_to_eager_and_says_so(monkeypatch):
    def broken(fn):
        def run(*args, **kwargs):
            raise RuntimeError("InductorError: no C++ compiler found\nmore detail")
        return run
    monkeypatch.setattr(compiled, "_compile", broken)
    said = []
    kernels = compiled.make_kernels(True, torch.device("cpu"), warn=said.append)
    assert kernels is compiled.EAGER
    assert said == ["warning: --compile on: torch.compile failed (InductorError: no C++ "
                    "compiler found); the step runs eagerly"]
    assert compiled.make_kernels(False, torch.device("cpu"), warn=pytest.fail) is compiled.EAGER


@needs_compiler
def test_a_compiled_run_through_main(tmp_path, capsys):
    from conftest import run_main, synthetic_rows, write_split_folder
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    common = ["--dataset", "Synth", "--data_dir", str(tmp_path / "data"), "--epochs", "2",
              "--batch_size", "64"]
    rc, result = run_main([*common, "--compile", "on"], tmp_path, "compiled")
    assert rc == 0
    log = (result / "Synth" / "compiled" / "train.log").read_text()
    assert "compile: on" in log and "torch.compile failed" not in log
    rc, _ = run_main([*common, "--compile", "on", "--impl", "reference"], tmp_path, "ref")
    assert rc == 2 and "--impl reference runs eagerly" in capsys.readouterr().err
