"""environment.jsonl: one line per process that trained in a run folder, appended on resume."""
from __future__ import annotations

import json
import subprocess

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
        assert line["code"] == environment.code_version()  # this checkout's commit, or None
    raw = (run / environment.FILE).read_text().splitlines()
    assert [json.loads(text) for text in raw] == lines and len(raw) == 2


def test_runs_made_before_the_file_read_as_none(tmp_path):
    assert environment.read(tmp_path) == []


def test_the_code_version_is_the_checkouts_commit(tmp_path):
    def git(*args, cwd=tmp_path):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
    assert environment.code_version(tmp_path) is None  # no checkout
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "a")
    (tmp_path / ".gitignore").write_text("result/\n")
    git("add", ".gitignore")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "ignore")
    (tmp_path / "result").mkdir()
    (tmp_path / "result" / "run.log").write_text("ignored\n")
    assert environment.code_version(tmp_path) == git("rev-parse", "HEAD")  # ignored: clean
    (tmp_path / "f.py").write_text("x = 1\n")  # a new module: not the commit's code
    assert environment.code_version(tmp_path) == git("rev-parse", "HEAD") + "+dirty"
    git("add", "f.py")
    assert environment.code_version(tmp_path) == git("rev-parse", "HEAD") + "+dirty"
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "b")
    head = git("rev-parse", "HEAD")
    assert environment.code_version(tmp_path) == head and len(head) == 40
    inner = tmp_path / "sub"
    inner.mkdir()
    assert environment.code_version(inner) is None  # inside a checkout is not the checkout
