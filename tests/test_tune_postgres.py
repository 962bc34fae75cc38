"""Two tune.py workers on one study in a real PostgreSQL server, started here on 127.0.0.1
(the Debian postgresql package; .ci/run installs it). Skipped, with the reason, where no
server can start."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import synthetic_rows, write_split_folder
from tests.test_tune import two_workers


def as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: the package's postgres user runs it then."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    return ["runuser", "-u", "postgres", "--", *cmd]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only."""
    pytest.importorskip("psycopg", reason="psycopg (requirements.txt) is not installed")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or \
        [p for p in [shutil.which("initdb")] if p]
    if not found:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="refine-pg-"))
    if os.geteuid() == 0:
        try:
            shutil.chown(root, "postgres")
        except (LookupError, OSError) as err:
            shutil.rmtree(root)
            pytest.skip(f"no postgres user to run the server as ({err})")
    port = free_port()
    log = root / "server.log"

    def run(*cmd):
        return subprocess.run(as_server_user([str(bin_dir / cmd[0]), *cmd[1:]]),
                              capture_output=True, text=True, timeout=120)
    try:
        made = run("initdb", "-D", str(root / "db"), "-U", "postgres", "--auth=trust")
        if made.returncode:
            pytest.skip(f"initdb failed: {made.stderr.strip()[-200:]}")
        started = run("pg_ctl", "-D", str(root / "db"), "-l", str(log), "-w", "-t", "60",
                      "-o", f"-c listen_addresses=127.0.0.1 -p {port} "
                            f"-c unix_socket_directories={root}", "start")
        if started.returncode:
            text = log.read_text() if log.is_file() else started.stderr
            pytest.skip(f"PostgreSQL did not start: {text.strip()[-200:]}")
        import psycopg
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                             autocommit=True, connect_timeout=20) as conn:
            conn.execute("CREATE DATABASE tune")
        yield f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/tune"
    finally:
        if (root / "db" / "postmaster.pid").exists():
            run("pg_ctl", "-D", str(root / "db"), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    study, pids = two_workers(tmp_path, storage=postgres_url)
    done = [t for t in study.trials if t.state.is_finished()]
    assert 6 <= len(done) <= 7
    assert {t.user_attrs["pid"] for t in done} == pids
    # the study lives in the server, not in a file of the study folder
    assert not (tmp_path / "result" / "Synth" / "lightgcn-tune" / "study.db").exists()
