"""Reliability of the LLM steps (issue 27, findings 6, 10 and 11): a base run that did not
finish or whose best.pt is unreadable, every flag checked before the first request, and an
OpenAI-compatible client that a dripping, endless or hanging server on 127.0.0.1 cannot
hold: a total deadline per request, a cap on the answer's size, Ctrl-C at once."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import refine_llm as rl
from conftest import fails_with, run_main, write_synthetic_with_items
from data.schema import DataError
from llm import augment, scft
from llm.backends import openai
from llm.backends.openai import OpenAIBackend
from refine_helpers import LoopbackServer, write_toy

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------- finding 6: base run

def stop_in_epoch(monkeypatch, model: str, epoch: int) -> None:
    """Make the next ``model`` run stop with Ctrl-C in its ``epoch`` (after the one before
    was saved)."""
    from recommenders import MODELS
    spec, calls = MODELS[model], []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return spec.train_epoch(*a, **kw)

    monkeypatch.setitem(MODELS, model, replace(spec, train_epoch=interrupted))


def train_base(tmp_path, model="lightgcn", epochs=1, name="base"):
    data = write_synthetic_with_items(tmp_path / "data")
    rc = run_main(["--model", model, "--dataset", "Synth", "--data_dir", str(data),
                   "--epochs", str(epochs), "--batch_size", "64"], tmp_path, name)[0]
    return rc, data, tmp_path / "result" / "Synth" / name


def augment_args(data, run_dir, tmp_path, *extra):
    return ["--dataset", "Synth", "--base_run", str(run_dir), "--data_dir", str(data),
            "--backend", "rank", "--output", str(tmp_path / "aug.csv"), *extra]


def test_a_base_run_killed_after_epoch_1_of_5_is_refused_or_recorded(tmp_path, monkeypatch,
                                                                      capsys):
    stop_in_epoch(monkeypatch, "lightgcn", 2)
    rc, data, run_dir = train_base(tmp_path, epochs=5)
    monkeypatch.undo()
    assert rc == 130 and (run_dir / "best.pt").is_file()
    capsys.readouterr()
    fails_with(capsys, augment.main(augment_args(data, run_dir, tmp_path)),
               "did not finish", "epoch 1", "--allow_unfinished_base")
    assert not (tmp_path / "aug.csv").exists()
    assert augment.main(augment_args(data, run_dir, tmp_path, "--allow_unfinished_base")) == 0
    base = json.loads((tmp_path / "aug.manifest.json").read_text())["base_run"]
    assert base["finished"] is False and base["best_epoch"] == 1 and base["epochs"] == 5
    assert "did not finish" in base["unfinished"]


def test_a_finished_base_run_is_recorded_as_finished(tmp_path):
    rc, data, run_dir = train_base(tmp_path)
    assert rc == 0
    assert augment.main(augment_args(data, run_dir, tmp_path)) == 0
    base = json.loads((tmp_path / "aug.manifest.json").read_text())["base_run"]
    assert base["finished"] is True and base["best_epoch"] == 1
    assert "unfinished" not in base


def test_an_unfinished_mixgcf_run_is_refused_by_scft(tmp_path, monkeypatch, capsys):
    stop_in_epoch(monkeypatch, "mixgcf", 2)
    rc, data, run_dir = train_base(tmp_path, model="mixgcf", epochs=3)
    monkeypatch.undo()
    assert rc == 130
    capsys.readouterr()
    rc = scft.main(["--dataset", "Synth", "--mixgcf_run", str(run_dir), "--data_dir",
                    str(data), "--model", str(tmp_path / "no_model")])
    fails_with(capsys, rc, "--mixgcf_run", "did not finish", "epoch 1")


@pytest.mark.parametrize("cut", ["empty", "one byte", "100 bytes", "half", "random"])
def test_an_unreadable_best_pt_is_one_line(tmp_path, capsys, cut):
    rc, data, run_dir = train_base(tmp_path)
    assert rc == 0
    best = run_dir / "best.pt"
    whole = best.read_bytes()
    best.write_bytes({"empty": b"", "one byte": whole[:1], "100 bytes": whole[:100],
                      "half": whole[:len(whole) // 2], "random": bytes(range(256)) * 4}[cut])
    capsys.readouterr()
    fails_with(capsys, augment.main(augment_args(data, run_dir, tmp_path)), "best.pt",
               "unreadable")


# ----------------------------------------------------------------------- finding 10: flags

def refine_cases(tmp: Path):
    folder = tmp / "a_folder"
    folder.mkdir()
    (tmp / "a_file").write_text("x")
    return [
        (["--timeout", "-1"], "--timeout"), (["--timeout", "0"], "--timeout"),
        (["--timeout", "nan"], "--timeout"), (["--timeout", "inf"], "--timeout"),
        (["--max_retries", "-1"], "--max_retries"), (["--concurrency", "0"], "--concurrency"),
        (["--threads", "0"], "--threads"), (["--dry_run", "-1"], "--dry_run"),
        (["--cache", str(folder)], "--cache"),
        (["--output", str(folder)], "--output"),
        (["--output", str(folder), "--overwrite"], "--output"),
        (["--output", str(tmp / "a_file" / "out.csv")], "--output"),
        (["--cache", str(tmp / "a_file" / "c.jsonl")], "--cache"),
        (["--write_decisions", str(folder)], "--write_decisions"),
        (["--compare_to", str(tmp / "missing.csv")], "--compare_to"),
        (["--compare_to", str(folder)], "--compare_to"),
        (["--base_url", "ftp://127.0.0.1/v1"], "--base_url"),
        (["--base_url", "http://127.0.0.1:99999/v1"], "--base_url"),
    ]


def test_refine_llm_checks_every_flag_before_the_first_request(tmp_path, capsys):
    write_toy(tmp_path)
    for extra, flag in refine_cases(tmp_path):
        with LoopbackServer() as server:
            rc = rl.main(["--dataset", "ML-100K", "--data_dir", str(tmp_path), "--backend",
                          "openai", "--model", "fake", "--base_url", server.url,
                          "--output", str(tmp_path / "out.csv"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (extra, err)
        assert flag in err[0], (extra, err[0])
        assert server.completions == 0, (extra, "asked before refusing")
    assert not (tmp_path / "out.csv").exists()


def test_augment_checks_every_flag_before_the_first_request(tmp_path, capsys):
    rc, data, run_dir = train_base(tmp_path)
    assert rc == 0
    folder = tmp_path / "a_folder"
    folder.mkdir()
    cases = [(["--timeout", "-1"], "--timeout"), (["--timeout", "0"], "--timeout"),
             (["--max_retries", "-1"], "--max_retries"), (["--cache", str(folder)], "--cache"),
             (["--output", str(folder)], "--output"),
             (["--output", str(folder), "--overwrite"], "--output"),
             (["--limit_users", "0"], "--limit_users"), (["--dry_run", "-1"], "--dry_run")]
    capsys.readouterr()
    for extra, flag in cases:
        with LoopbackServer() as server:
            rc = augment.main(["--dataset", "Synth", "--base_run", str(run_dir), "--data_dir",
                               str(data), "--backend", "openai", "--model", "fake",
                               "--base_url", server.url, "--item_file",
                               str(data / "Synth" / "Synth.item"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (extra, err)
        assert flag in err[0], (extra, err[0])
        assert server.completions == 0, (extra, "asked before refusing")


# ----------------------------------------------------------------------- finding 11: clients

class BadServer:
    """A server on 127.0.0.1 that answers every request with ``how``: "drip_body" (headers,
    then a JSON body one byte every 50 ms), "drip_head" (the status line itself one byte at a
    time) or "endless" (a 200 without length, 64 KiB blocks until the client leaves or
    ``limit`` bytes went out). ``sent``: the bytes of body sent in all."""

    def __init__(self, how: str, limit: int = 64 << 20):
        self.sent, self.stop = 0, threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _drip(self, data: bytes):
                for byte in data:
                    if outer.stop.wait(0.05):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    outer.sent += 1

            def _answer(self):
                body = json.dumps({"data": [], "choices": [{"text": " [<Alpha>]"}]}).encode()
                try:
                    if how == "drip_head":
                        self._drip(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                                   + body)
                    elif how == "drip_body":
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(body) * 50))
                        self.end_headers()
                        self._drip(body * 50)
                    else:
                        self.send_response(200)
                        self.send_header("Connection", "close")
                        self.end_headers()
                        block = b"x" * 65536
                        while outer.sent < limit and not outer.stop.is_set():
                            self.wfile.write(block)
                            outer.sent += len(block)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                self._answer()

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Cfg:
    def __init__(self, url, **kw):
        self.base_url, self.model, self.chat, self.timeout = url, "fake", False, 1.0
        self.max_retries, self.max_new_tokens, self.api_key_env = 0, 32, "NO_SUCH_KEY_VAR"
        self.concurrency = 1
        self.__dict__.update(kw)


def outcome_within(fn, seconds: float):
    """What ``fn()`` raised or returned, asked on a thread given ``seconds`` to end (a hung
    client fails the test instead of hanging it)."""
    box = []

    def target():
        try:
            box.append(("returned", fn()))
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box.append(("raised", err))
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"still waiting after {seconds} s"
    return box[0]


@pytest.mark.parametrize("how", ["drip_head", "drip_body"])
def test_a_dripping_server_times_out_at_the_deadline(how):
    server = BadServer(how)
    try:
        kind, value = outcome_within(lambda: OpenAIBackend(_Cfg(server.url, timeout=1.0)), 8)
    finally:
        server.close()
    assert kind == "raised" and isinstance(value, DataError), value
    assert "timeout after 1 s" in str(value) and "\n" not in str(value)


def test_an_endless_answer_stops_at_the_size_cap(monkeypatch):
    monkeypatch.setattr(openai, "MAX_ANSWER_BYTES", 1 << 20, raising=False)
    server = BadServer("endless")
    try:
        kind, value = outcome_within(lambda: OpenAIBackend(_Cfg(server.url, timeout=30.0)), 20)
    finally:
        server.close()
    assert kind == "raised" and isinstance(value, DataError), value
    assert "larger than 1 MiB" in str(value) and "\n" not in str(value)
    assert server.sent < 16 << 20  # it stopped reading: only the socket buffers beyond


def test_ctrl_c_with_concurrency_4_ends_at_once(tmp_path):
    write_toy(tmp_path)
    with LoopbackServer(plan=["hang"] * 8) as server:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "refine_llm.py"), "--dataset", "ML-100K", "--data_dir",
             str(tmp_path), "--backend", "openai", "--model", "fake", "--base_url", server.url,
             "--output", str(tmp_path / "out.csv"), "--concurrency", "4", "--batch_size", "4"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 120  # generous: the start imports torch
            while time.time() < deadline and server.in_flight < 4 and proc.poll() is None:
                time.sleep(0.05)
            assert server.in_flight == 4, "the four requests never were in flight together"
            proc.send_signal(signal.SIGINT)
            try:
                err = proc.communicate(timeout=3)[1]
            except subprocess.TimeoutExpired:
                pytest.fail("still running 3 s after Ctrl-C")
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("interrupted: run the same command again")
