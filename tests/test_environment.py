"""environment.jsonl: one line per process that trained in a run folder, appended on resume."""
from __future__ import annotations

import json

import numpy as np
import torch

import main as M
from conftest import interrupt_second_epoch, run_main, synthetic_rows, write_split_folder
from runs import environment


def test_a_start_and_a_resume_each_leave_a_line(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_split_folder(data, "Synth", *synthetic_rows())
    args = ["--dataset", "Synth", "--data_dir", str(data), "--batch_size", "64", "--epochs", "3"]
    interrupt_second_epoch(monkeypatch)
    assert run_main(args, tmp_path, "split")[0] == 130
    monkeypatch.undo()
    run = tmp_path / "result" / "Synth" / "split"
    assert [line["after_epoch"] for line in environment.read(run)] == [0]
    assert M.main(["--resume", str(run), "--quiet", "--threads", "1"]) == 0
    lines = environment.read(run)
    assert [line["after_epoch"] for line in lines] == [0, 1]  # epoch 1's last.pt resumed
    for line in lines:
        assert line["torch"] == torch.__version__ and line["numpy"] == np.__version__
        assert line["threads"] == 1 and line["device"] == "cpu"
        assert line["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert line["cpu"]
    raw = (run / environment.FILE).read_text().splitlines()
    assert [json.loads(text) for text in raw] == lines and len(raw) == 2


def test_runs_made_before_the_file_read_as_none(tmp_path):
    assert environment.read(tmp_path) == []
