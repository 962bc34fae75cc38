"""What a run leaves when a file cannot be written (full disk, read-only file system, too
long a name, no permission) or Ctrl-C arrives while a checkpoint is written: one line, no
traceback, no temp file, the previous checkpoint intact; and compare.py on metrics.json /
summary.json values that are not numbers, and --plot into a folder it cannot write.

Real full and read-only disks are small tmpfs mounts in a user namespace (``unshare``);
where the kernel does not allow that, those tests skip and the simulated ones (the write
or fsync of one named file made to fail) still run."""
from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import compare
import main as M
from conftest import fails_with, run_main, synthetic_rows, write_split_folder

REPO = Path(__file__).resolve().parents[1]
SAID = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "quota", errno.EROFS: "read-only",
        errno.ENAMETOOLONG: "too long", errno.EACCES: "permission denied"}


def synth(tmp_path) -> Path:
    return write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())


def train_args(data, epochs=3):
    return ["--dataset", "Synth", "--data_dir", str(data), "--epochs", str(epochs),
            "--batch_size", "64", "--early_stopping_step", "100"]


def temps(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def saved_epoch(path: Path) -> int:
    return torch.load(path, weights_only=False)["epoch"]


def written_name(fd: int) -> str:
    """The file name behind ``fd``, with a temp name (``.last.pt.<pid>.<hex>.tmp``) read as
    the file it becomes."""
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    m = re.fullmatch(r"\.(.+)\.\d+\.[0-9a-f]+\.tmp", name)
    return m.group(1) if m else name


# ------------------------------------------------------- simulated failures (any user)

class Breaking:
    """A file whose writes go through until ``after`` bytes, then raise ``exc`` (as a
    full disk or Ctrl-C in the middle of torch.save does)."""

    def __init__(self, f, exc, after=1000):
        self.f, self.exc, self.after, self.written = f, exc, after, 0

    def write(self, data):
        if self.written >= self.after:
            raise self.exc
        self.written += self.f.write(data)
        return len(data)

    def flush(self):
        self.f.flush()


def break_torch_save(monkeypatch, name: str, nth: int, exc) -> None:
    """The ``nth`` torch.save into ``name`` (its temp file) stops half-way with ``exc``."""
    real_save, seen = torch.save, []

    def save(obj, f, *args, **kwargs):
        file = getattr(f, "f", f)  # runs/files.py hands torch its file behind a fault point
        if hasattr(file, "fileno") and written_name(file.fileno()) == name:
            seen.append(1)
            if len(seen) == nth:
                f = Breaking(f, exc)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def fail_fsync(monkeypatch, name: str, nth: int, err_no: int) -> None:
    """The ``nth`` fsync of ``name`` (or its temp file) raises OSError(err_no)."""
    real_fsync, seen = os.fsync, []

    def fsync(fd):
        if written_name(fd) == name:
            seen.append(1)
            if len(seen) == nth:
                raise OSError(err_no, os.strerror(err_no))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_ctrl_c_in_the_middle_of_writing_last_pt(tmp_path, capsys, monkeypatch):
    data = synth(tmp_path)
    break_torch_save(monkeypatch, "last.pt", 2, KeyboardInterrupt())
    rc, result = run_main(train_args(data), tmp_path)
    run_dir = result / "Synth" / "run"
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and err == [M.INTERRUPTED], err
    assert saved_epoch(run_dir / "last.pt") == 1 and temps(run_dir) == []
    monkeypatch.undo()
    assert M.main(["--resume", str(run_dir), "--quiet", "--threads", "1"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["last_epoch"] == 3


def test_ctrl_c_in_the_middle_of_writing_the_first_best_model(tmp_path, capsys, monkeypatch):
    """Epoch 1's new best model (best.next.pt, renamed to best.pt after last.pt): nothing
    of the epoch is kept, and the same command starts the folder over."""
    data = synth(tmp_path)
    break_torch_save(monkeypatch, "best.next.pt", 1, KeyboardInterrupt())
    rc, result = run_main(train_args(data), tmp_path)
    run_dir = result / "Synth" / "run"
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and err == [M.INTERRUPTED], err
    assert not any((run_dir / n).exists() for n in ("last.pt", "best.pt", "best.next.pt"))
    assert temps(run_dir) == []
    monkeypatch.undo()
    assert run_main(train_args(data), tmp_path)[0] == 0


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_in_the_middle_of_writing_last_pt(tmp_path, capsys, monkeypatch, err_no):
    data = synth(tmp_path)
    break_torch_save(monkeypatch, "last.pt", 2, OSError(err_no, os.strerror(err_no)))
    rc, result = run_main(train_args(data), tmp_path)
    run_dir = result / "Synth" / "run"
    fails_with(capsys, rc, f"{run_dir / 'last.pt'}", SAID[err_no], "previous last.pt")
    assert saved_epoch(run_dir / "last.pt") == 1 and temps(run_dir) == []
    assert SAID[err_no] in (run_dir / "train.log").read_text().splitlines()[-1]
    monkeypatch.undo()
    assert M.main(["--resume", str(run_dir), "--quiet", "--threads", "1"]) == 0


@pytest.mark.parametrize("name,nth,err_no", [
    ("last.pt", 2, errno.ENOSPC), ("best.next.pt", 1, errno.ENOSPC),
    ("train.log", 2, errno.ENOSPC), ("epochs.jsonl", 1, errno.EDQUOT),
    ("environment.jsonl", 1, errno.EROFS), ("config.json", 1, errno.EROFS),
    ("metrics.json", 1, errno.EACCES), ("per_user.npz", 1, errno.ENOSPC)])
def test_a_failed_write_of_any_run_file_is_one_line(tmp_path, capsys, monkeypatch, name, nth,
                                                    err_no):
    data = synth(tmp_path)
    fail_fsync(monkeypatch, name, nth, err_no)
    rc, result = run_main(train_args(data), tmp_path)
    run_dir = result / "Synth" / "run"
    fails_with(capsys, rc, name, SAID[err_no])
    assert temps(run_dir) == []
    if (run_dir / "last.pt").exists():
        assert saved_epoch(run_dir / "last.pt") >= 1


def test_permission_denied_on_a_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    data = synth(tmp_path)
    real_open = open

    def refusing_open(file, mode="r", *args, **kwargs):
        if "w" in mode and written_name_of_path(file) == "best.next.pt":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    rc, result = run_main(train_args(data), tmp_path)
    fails_with(capsys, rc, "best.next.pt", "permission denied")
    assert temps(result / "Synth" / "run") == []


def written_name_of_path(path) -> str:
    name = os.path.basename(str(path))
    m = re.fullmatch(r"\.(.+)\.\d+\.[0-9a-f]+\.tmp", name)
    return m.group(1) if m else name


def test_atomic_write_names_the_file_it_could_not_write(tmp_path):
    from runs.files import WriteError, atomic_write, atomic_write_text
    too_long = tmp_path / ("q" * 240 + ".txt")  # the temp name beside it passes 255 bytes
    with pytest.raises(WriteError, match=f"cannot write {too_long}: the file name is too long"):
        atomic_write_text(too_long, "x")
    assert list(tmp_path.iterdir()) == []
    # an OSError about another file (one the callback reads) is not a failed write
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "out", lambda f: open(tmp_path / "missing"))
    assert list(tmp_path.iterdir()) == []


def test_too_long_a_run_name_is_one_line(tmp_path, capsys):
    data = synth(tmp_path)
    rc, result = run_main(train_args(data), tmp_path, name="x" * 250)
    fails_with(capsys, rc, "too long", "--path_name")
    assert not (result / "Synth").exists() or list((result / "Synth").iterdir()) == []


def test_read_only_dataset_folder_simulated(tmp_path, capsys, monkeypatch):
    data = synth(tmp_path)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.parent.name == "Synth":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc, _ = run_main(train_args(data), tmp_path)
    fails_with(capsys, rc, "Synth", "read-only")


def test_resume_on_a_read_only_file_system_simulated(tmp_path, capsys, monkeypatch):
    data = synth(tmp_path)
    rc, result = run_main(train_args(data, epochs=1), tmp_path)
    run_dir = result / "Synth" / "run"
    real_open = os.open

    def ro_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR) and Path(path).parent == run_dir:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_open)
    rc = M.main(["--resume", str(run_dir), "--epochs", "2", "--quiet", "--threads", "1"])
    fails_with(capsys, rc, str(run_dir), "read-only")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (chmod) folder")
def test_read_only_dataset_folder_by_permissions(tmp_path, capsys):
    data = synth(tmp_path)
    (tmp_path / "result" / "Synth").mkdir(parents=True)
    (tmp_path / "result" / "Synth").chmod(0o500)
    rc, _ = run_main(train_args(data), tmp_path)
    fails_with(capsys, rc, "Synth", "not writable")


# --------------------------------------------------------- real signals, real disks

def spawn(args, env_extra=None):
    env = {**os.environ, **(env_extra or {}), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_args(data, result, name, epochs=3):
    return [*train_args(data, epochs), "--result_dir", str(result), "--path_name", name,
            "--quiet", "--threads", "1", "--no_download"]


def test_real_sigint_while_writing_the_second_last_pt(tmp_path):
    data, result = synth(tmp_path), tmp_path / "result"
    proc = spawn(child_args(data, result, "sig"), {"REFINE_SIGINT_AT": "write_last.pt:2"})
    out, err = proc.communicate(timeout=300)
    run_dir = result / "Synth" / "sig"
    assert proc.returncode == 130 and err.strip().splitlines() == [M.INTERRUPTED], err
    assert saved_epoch(run_dir / "last.pt") == 1 and temps(run_dir) == []
    assert M.main(["--resume", str(run_dir), "--quiet", "--threads", "1"]) == 0


def test_sigint_from_outside_while_the_first_last_pt_is_written(tmp_path):
    data, result = synth(tmp_path), tmp_path / "result"
    barrier = tmp_path / "writing"  # the child waits in the middle of the write
    proc = spawn(child_args(data, result, "ext"), {"REFINE_WAIT_AT": f"write_last.pt:{barrier}"})
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("writing.*")) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(tmp_path.glob("writing.*")), proc.communicate(timeout=300)
    run_dir = result / "Synth" / "ext"
    assert len(temps(run_dir)) == 1  # the half-written last.pt
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines() == [M.INTERRUPTED], err
    assert not (run_dir / "last.pt").exists() and temps(run_dir) == []


def namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not namespaces_work(),
                                 reason="no unprivileged user namespace to mount a tmpfs in")


def in_tmpfs(mount: Path, setup: str, command: list[str], size="64m"):
    """``setup`` (shell) then ``command`` in a user namespace where ``mount`` is a new tmpfs of
    ``size``; (rc, stderr)."""
    mount.mkdir(exist_ok=True)
    script = (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))} && {setup} && "
              f"{shlex.join(command)}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stderr


def one_error_line(rc, err, *fragments):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@needs_tmpfs
def test_a_really_full_disk_during_a_checkpoint(tmp_path):
    data, mnt = synth(tmp_path), tmp_path / "mnt"
    keep = tmp_path / "kept"  # what the run folder held, copied out before the mount goes
    run_dir = mnt / "Synth" / "full"
    rc, err = in_tmpfs(mnt, "true", ["sh", "-c", shlex.join(
        [sys.executable, "main.py", *child_args(data, mnt, "full")])
        + f"; rc=$?; cp -a {shlex.quote(str(run_dir))} {shlex.quote(str(keep))}; exit $rc"],
        size="5m")
    one_error_line(rc, err, "the disk is full", ".pt")
    assert saved_epoch(keep / "last.pt") == 1 and temps(keep) == []


@needs_tmpfs
def test_a_really_read_only_dataset_folder(tmp_path):
    data, mnt = synth(tmp_path), tmp_path / "mnt"
    ro = mnt / "Synth"
    rc, err = in_tmpfs(mnt, f"mkdir {ro} && mount -t tmpfs -o ro tmpfs {ro}",
                       [sys.executable, "main.py", *child_args(data, mnt, "ro")])
    one_error_line(rc, err, str(ro), "read-only")


@needs_tmpfs
def test_a_really_read_only_resume(tmp_path):
    data, mnt = synth(tmp_path), tmp_path / "mnt"
    run_dir = mnt / "Synth" / "r"
    first = shlex.join([sys.executable, "main.py", *child_args(data, mnt, "r", epochs=1)])
    rc, err = in_tmpfs(mnt, f"{first} && mount -o remount,ro {mnt}",
                       [sys.executable, "main.py", "--resume", str(run_dir), "--epochs", "2",
                        "--quiet", "--threads", "1"])
    one_error_line(rc, err, str(run_dir), "read-only")


@needs_tmpfs
def test_plot_into_a_really_read_only_folder(tmp_path):
    data = synth(tmp_path)
    assert run_main(train_args(data, epochs=1), tmp_path)[0] == 0
    run_dir, mnt = tmp_path / "result" / "Synth" / "run", tmp_path / "mnt"
    rc, err = in_tmpfs(mnt, f"mount -o remount,ro {mnt}",
                       [sys.executable, "compare.py", str(run_dir), "--plot",
                        str(mnt / "curves.png")])
    one_error_line(rc, err, "--plot", "read-only")


# ------------------------------------------------------ compare.py and --plot

def finished(tmp_path, name="run") -> Path:
    data = synth(tmp_path)
    assert run_main(train_args(data, epochs=1), tmp_path, name)[0] == 0
    return tmp_path / "result" / "Synth" / name


@pytest.mark.parametrize("key,value", [("last_epoch", "3"), ("seconds_per_epoch", "fast"),
                                       ("last_epoch", None), ("seconds_per_epoch", [1])])
def test_compare_a_metrics_json_holding_strings(tmp_path, capsys, key, value):
    run_dir = finished(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, key: value}))
    fails_with(capsys, compare.main([str(run_dir)]), "metrics.json", key)


def test_compare_breakdowns_holding_strings(tmp_path, capsys):
    run_dir = finished(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    group = next(iter(metrics["breakdowns"]["item_popularity"]))
    metrics["breakdowns"]["item_popularity"][group]["recall@20"] = "0.5"
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    fails_with(capsys, compare.main([str(run_dir), "--by", "item_popularity"]),
               "metrics.json", "recall@20")


def test_compare_a_summary_json_holding_strings(tmp_path, capsys):
    data = synth(tmp_path)
    rc, result = run_main([*train_args(data, epochs=1), "--seeds", "1", "2"], tmp_path, "ms")
    assert rc == 0
    path = result / "Synth" / "ms" / "summary.json"
    summary = json.loads(path.read_text())
    summary["test"]["recall@20"]["mean"] = "0.4"
    path.write_text(json.dumps(summary))
    fails_with(capsys, compare.main([str(path.parent)]), "summary.json", "recall@20")


def test_compare_to_a_run_with_strings_is_refused_before_training(tmp_path, capsys):
    run_dir = finished(tmp_path, "first")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "last_epoch": "1"}))
    rc, result = run_main([*train_args(synth(tmp_path), epochs=1), "--compare_to",
                           str(run_dir)], tmp_path, "second")
    fails_with(capsys, rc, "--compare_to", "metrics.json", "last_epoch")
    assert not (result / "Synth" / "second").exists()


def damage_during_training(monkeypatch, run_dir: Path) -> None:
    """The first training epoch writes a string into ``run_dir``'s metrics.json."""
    from dataclasses import replace

    from recommenders import MODELS
    spec = MODELS["refine_plus"]

    def damaging(*args, **kwargs):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        (run_dir / "metrics.json").write_text(json.dumps({**metrics, "last_epoch": "1"}))
        return spec.train_epoch(*args, **kwargs)

    monkeypatch.setitem(MODELS, "refine_plus", replace(spec, train_epoch=damaging))


def test_compare_to_damaged_during_training_keeps_the_finished_run(tmp_path, capsys,
                                                                   monkeypatch):
    """The comparison is an extra: when its file turns bad while the run trains, the run
    still ends with rc 0, its final block and metrics.json, and a warning line."""
    run_dir = finished(tmp_path, "first")
    damage_during_training(monkeypatch, run_dir)
    rc, result = run_main([*train_args(synth(tmp_path), epochs=1), "--compare_to",
                           str(run_dir)], tmp_path, "second")
    assert rc == 0, capsys.readouterr().err
    second = result / "Synth" / "second"
    assert json.loads((second / "metrics.json").read_text())["last_epoch"] == 1
    log = (second / "train.log").read_text()
    assert "Final Test Results" in log
    assert "warning: --compare_to" in log and "last_epoch" in log.splitlines()[-1]


def test_compare_to_damaged_during_a_multi_seed_run_keeps_its_summary(tmp_path, capsys,
                                                                      monkeypatch):
    run_dir = finished(tmp_path, "first")
    damage_during_training(monkeypatch, run_dir)
    rc, result = run_main([*train_args(synth(tmp_path), epochs=1), "--seeds", "1", "2",
                           "--compare_to", str(run_dir)], tmp_path, "ms")
    assert rc == 0, capsys.readouterr().err
    parent = result / "Synth" / "ms"
    assert json.loads((parent / "summary.json").read_text())["num_seeds"] == 2
    last = (parent / "summary.txt").read_text().splitlines()[-1]
    assert last.startswith("warning: --compare_to") and "last_epoch" in last


def test_plot_into_a_folder_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    run_dir = finished(tmp_path)
    import matplotlib.figure

    def refuse(self, fname, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refuse)
    rc = compare.main([str(run_dir), "--plot", str(tmp_path / "curves.png")])
    fails_with(capsys, rc, "--plot", "curves.png", "read-only")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (chmod) folder")
def test_plot_into_a_read_only_folder_by_permissions(tmp_path, capsys):
    run_dir = finished(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    rc = compare.main([str(run_dir), "--plot", str(locked / "curves.png")])
    fails_with(capsys, rc, "--plot", "not writable")


def test_plot_into_a_missing_folder_is_one_line(tmp_path, capsys):
    run_dir = finished(tmp_path)
    rc = compare.main([str(run_dir), "--plot", str(tmp_path / "no" / "such" / "curves.png")])
    fails_with(capsys, rc, "--plot", "does not exist")
