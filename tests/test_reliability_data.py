"""Reliability of getting and preparing data (review r27): a download that drips or
never ends is bounded by a total deadline and a size cap and leaves no partial file, Ctrl-C
included; prepare drops duplicate (user, item) rows before splitting and never writes a pair
into two splits.

Servers are local (127.0.0.1) and every test is bounded in time.
"""
from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import dataloader
import main as M
from data import fetch, transfer
from data import prepare as prep
from data.provenance import git_blob_sha1
from data.schema import DataError
from data.splits import split_path
from runs.config import Config

REPO = Path(__file__).resolve().parents[1]
HEADER = "user_id:token,item_id:token,rating:float"


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.part")) if folder.exists() else []


class Handler(http.server.BaseHTTPRequestHandler):
    """GET answers with the server's ``mode``: ``drip`` (1 byte every 0.2 s of a promised
    100,000), ``big`` (``size`` bytes, with a Content-Length), ``big_unannounced`` (the
    same, ended by closing the connection) or ``file`` (``body``)."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests += 1
        body = server.body if server.mode in ("file", "odd_length") else b"x" * server.size
        self.send_response(200)
        if server.mode == "odd_length":  # a non-ASCII digit (latin-1 on the wire)
            self.send_header("Content-Length", "\xb2")
        elif server.mode != "big_unannounced":
            self.send_header("Content-Length", "100000" if server.mode == "drip"
                             else str(len(body)))
        self.end_headers()
        try:
            if server.mode == "drip":
                while not server.stopping.is_set():
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                self.wfile.write(body)
        except OSError:  # the client gave up
            pass


@pytest.fixture
def mirror():
    """Start a local mirror in a given mode; returns (base URL, server)."""
    servers = []

    def start(mode: str, size: int = 0, body: bytes = b""):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.mode, server.size, server.body, server.requests = mode, size, body, 0
        server.stopping = threading.Event()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server

    yield start
    for server in servers:
        server.stopping.set()
        server.shutdown()
        server.server_close()


def download_args(tmp_path: Path, base: str, *extra: str) -> list[str]:
    return ["download", "--dataset", "ML-100K", "--splits", "validation", "--data_dir",
            str(tmp_path / "data"), "--base_url", base, *extra]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- downloads

def test_a_dripping_mirror_ends_at_the_total_deadline(tmp_path, mirror, capsys):
    base, _ = mirror("drip")
    start = time.monotonic()
    assert dataloader.main(download_args(tmp_path, base, "--timeout", "2")) == 2
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert 1.5 < took < 6, took
    assert "Traceback" not in err and len(error_lines(err)) == 1
    assert "did not finish within 2 s" in error_lines(err)[0] and "--timeout" in err
    assert parts(tmp_path) == [] and not split_path(tmp_path / "data", "ML-100K",
                                                     "validation").exists()


@pytest.mark.parametrize("mode", ["big", "big_unannounced"])
def test_a_response_over_the_size_cap_is_one_line(tmp_path, mirror, capsys, mode):
    base, _ = mirror(mode, size=300_000)
    assert dataloader.main(download_args(tmp_path, base, "--max_mb", "0.1")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(error_lines(err)) == 1
    assert "larger than --max_mb 0.1" in err
    assert parts(tmp_path) == []


def test_a_content_length_that_is_no_number_is_read_as_unannounced(tmp_path, mirror, capsys):
    """"²" passes str.isdigit but not int(): the body is read and checked, no traceback."""
    base, _ = mirror("odd_length", body=b"not the published file\n")
    assert dataloader.main(download_args(tmp_path, base)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(error_lines(err)) == 1 and "rejected" in err
    response = type("Answer", (), {"headers": {"Content-Length": "\u00b2"}})()
    blocks = iter([b"ab", b"c", b""])
    assert b"".join(transfer.capped_blocks(response, 3, lambda: next(blocks))) == b"abc"
    blocks = iter([b"ab", b"cd", b""])
    with pytest.raises(transfer.TooLarge):
        list(transfer.capped_blocks(response, 3, lambda: next(blocks)))


def main_args(tmp_path: Path, base: str, *extra: str) -> list[str]:
    return ["--dataset", "ML-100K", "--data_dir", str(tmp_path / "data"), "--base_url", base,
            "--result_dir", str(tmp_path / "result"), "--epochs", "1", "--quiet", *extra]


def test_main_downloads_within_its_own_limits_named_by_its_flags(tmp_path, mirror, capsys):
    """main.py fetches missing splits before training: the same deadline and size cap, set
    by --download_timeout / --download_max_mb and named by them in the one line."""
    base, _ = mirror("big", size=300_000)
    assert M.main(main_args(tmp_path, base, "--download_max_mb", "0.1")) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "larger than --download_max_mb 0.1" in err
    base, _ = mirror("drip")
    start = time.monotonic()
    assert M.main(main_args(tmp_path, base, "--download_timeout", "2")) == 2
    assert 1.5 < time.monotonic() - start < 6
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "did not finish within 2 s" in err
    assert "raise --download_timeout" in err and parts(tmp_path) == []
    assert not (tmp_path / "result").exists()  # refused before any run folder
    config = Config()  # config.py imports nothing, so it states the downloader's defaults
    assert (config.download_timeout, config.download_max_mb) == (fetch.Limits().timeout_s,
                                                                  fetch.Limits().max_mb)
    for flag, value in (("--download_timeout", "0"), ("--download_max_mb", "nan")):
        assert M.main(main_args(tmp_path, base, flag, value)) == 2
        assert f"{flag} must be a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--timeout", "0"), ("--timeout", "-5"),
                                         ("--timeout", "nan"), ("--max_mb", "0"),
                                         ("--max_mb", "-1"), ("--max_mb", "inf")])
def test_bad_limits_are_refused_before_the_first_request(tmp_path, mirror, capsys, flag, value):
    base, server = mirror("big", size=10)
    assert dataloader.main(download_args(tmp_path, base, flag, value)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag} must be")
    assert server.requests == 0


def test_a_normal_mirror_still_downloads_and_verifies(tmp_path, mirror):
    body = (HEADER + "\n1,2,4\n" * 5000).encode()
    base, _ = mirror("file", body=body)
    (tmp_path / "blob").write_bytes(body)
    dest = tmp_path / "data" / "f.csv"
    fetch.download_verified(f"{base}/f.csv", dest, git_blob_sha1(tmp_path / "blob"),
                            log=lambda *_: None, limits=fetch.Limits(timeout_s=30, max_mb=1))
    assert dest.read_bytes() == body and parts(tmp_path) == []
    with pytest.raises(DataError, match="rejected: git blob SHA-1"):
        fetch.download_verified(f"{base}/f.csv", tmp_path / "data" / "g.csv", "0" * 40,
                                log=lambda *_: None)
    assert parts(tmp_path) == [] and not (tmp_path / "data" / "g.csv").exists()


def test_http_error_and_an_unexpected_exception_leave_no_part_file(tmp_path, serve,
                                                                   monkeypatch):
    (tmp_path / "served").mkdir()
    with pytest.raises(DataError, match="HTTP 404"):
        fetch.download_split(tmp_path / "data", "ML-100K", "test",
                             base_url=serve(tmp_path / "served"), log=lambda *_: None)
    assert parts(tmp_path) == []
    (tmp_path / "served" / "ML-100K").mkdir()
    (tmp_path / "served" / "ML-100K" / "ML-100K_test.csv").write_text(HEADER + "\n1,2,4\n")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(fetch, "git_blob_sha1", broken)
    with pytest.raises(RuntimeError):
        fetch.download_split(tmp_path / "data", "ML-100K", "test",
                             base_url=serve(tmp_path / "served"), log=lambda *_: None)
    assert parts(tmp_path) == []


def test_the_part_file_of_a_killed_download_is_removed_by_the_next(tmp_path, mirror):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is no longer a process
    folder = tmp_path / "data" / "ML-100K"
    folder.mkdir(parents=True)
    stale = folder / f".ML-100K_validation.csv.{dead.pid}.part"
    mine = folder / f".ML-100K_validation.csv.{os.getppid()}.part"  # a live process's
    stale.write_bytes(b"half")
    mine.write_bytes(b"half")
    base, _ = mirror("big", size=10)
    with pytest.raises(DataError, match="rejected"):
        fetch.download_split(tmp_path / "data", "ML-100K", "validation", base_url=base,
                             log=lambda *_: None)
    assert not stale.exists() and mine.exists()


def test_ctrl_c_during_a_download_ends_at_once_with_one_line(tmp_path, mirror):
    base, _ = mirror("drip")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "dataloader.py", *download_args(tmp_path, base)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 30
        while not parts(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert parts(tmp_path), "the download never started"
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and took < 3, (proc.returncode, took)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, err
    assert parts(tmp_path) == []


# ----------------------------------------------------------------------------- prepare

def duplicated_inter(path: Path) -> list[tuple]:
    """8 users x 12 items, all rated (item u + 1: 2, else user + item odd: 5, even: 4), then every
    positive row again with rating 1, then the first 30 rows again unchanged: 96 + 88 + 30
    rows, of which 118 repeat a pair. The first of each pair is the original row."""
    rows = [(u, i, 2 if i == u % 12 + 1 else (5 if (u + i) % 2 else 4))
            for u in range(1, 9) for i in range(1, 13)]
    rows += [(u, i, 1) for u, i, r in rows if r >= 4] + rows[:30]
    path.write_text("user_id:token\titem_id:token\trating:float\n"
                    + "".join(f"{u}\t{i}\t{r}\n" for u, i, r in rows))
    return rows


def test_prepare_drops_duplicate_pairs_before_splitting(tmp_path, capsys):
    duplicated_inter(tmp_path / "dup.inter")
    out = tmp_path / "data"
    assert dataloader.main(["prepare", "--inter", str(tmp_path / "dup.inter"), "--name", "Dup",
                            "--data_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    frames = {s: pd.read_csv(split_path(out, "Dup", s), dtype=str) for s in prep.PREPARED_SPLITS}
    keys = {s: set(zip(f["user_id:token"], f["item_id:token"])) for s, f in frames.items()}
    for s, f in frames.items():
        assert not f.duplicated(["user_id:token", "item_id:token"]).any(), s
    names = list(keys)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not keys[names[a]] & keys[names[b]], (names[a], names[b])
    together = pd.concat(frames.values())
    assert len(together) == 96  # every pair once, with its first rating
    first = {(str(u), str(i)): str(float(r)) for u, i, r in
             [(u, i, 2 if i == u % 12 + 1 else (5 if (u + i) % 2 else 4))
              for u in range(1, 9) for i in range(1, 13)]}
    got = dict(zip(zip(together["user_id:token"], together["item_id:token"]),
                   together["rating:float"]))
    assert {k: str(float(v)) for k, v in got.items()} == first
    assert "dropped 118 duplicate (user, item) row(s)" in printed
    record = json.loads((out / "Dup" / prep.RECORD_FILE).read_text())
    assert record["duplicates_dropped"] == 118 and record["rows_read"] == 214
    assert record["kept_of_duplicates"].startswith("the first")
    assert record["rows_written"] == {s: len(f) for s, f in frames.items()}


def test_prepare_refuses_to_write_splits_that_overlap(tmp_path):
    train = pd.DataFrame({"user_id:token": [1, 1, 2], "item_id:token": [1, 2, 1],
                          "rating:float": [5.0, 4.0, 4.0]})
    valid = pd.DataFrame({"user_id:token": [1], "item_id:token": [3], "rating:float": [5.0]})
    test = pd.DataFrame({"user_id:token": [2], "item_id:token": [1], "rating:float": [4.0]})
    with pytest.raises(DataError) as err:
        prep.write_splits(tmp_path, "Bad", (train, valid, test), log=lambda *_: None)
    message = str(err.value)
    assert "\n" not in message and "both" in message and "user 2, item 1" in message
    assert "nothing written" in message
    assert not (tmp_path / "Bad").exists() or not any((tmp_path / "Bad").iterdir())
