"""An experiment as data: ``python sweep.py EXPERIMENT.yaml`` (docs/experiments.md).

The file names a grid (and/or a list) of runs — models × datasets × seeds × settings — each
cell an ordinary run folder ``<result_dir>/sweeps/<name>/<dataset>/<model>-s<seed>-<hash>``
whose hash covers the cell's resolved settings and the fingerprint of its input files. The
cells run as a queue of ``--workers`` processes (python main.py, each with its share of the
CPU threads, or one of ``--devices``); a finished cell (metrics.json) is skipped, an
interrupted one resumes from its last.pt, so running the file again after a crash or
``kill -9`` (the workers die with the sweep) repeats only unfinished epochs. With a ``tune:``
section each cell is a tune.py study instead (runs/tuning.py). At the end: one table, mean ±
std over seeds per cell group, printed and written to results.txt / results.json.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data.errors import UserError
from runs import environment, seeds
from runs.config import ConfigError
from runs.config_file import as_tokens, load_yaml, parse_file
from runs.faults import fault_point
from runs.files import atomic_write_text, dump_json
from runs.flags import build_parser, values_as_flags
from runs.problem import input_fingerprint, what_it_computes
from runs.summary import COUNTS, SPLITS

TOP_KEYS = ("name", "result_dir", "settings", "grid", "runs", "seeds", "tune")
OWNED = ("path_name", "resume", "seeds", "num_seeds", "result_dir", "compare_to")
TUNE_OWNED = ("study",)  # each tune cell's study is named after its cell
REPO = Path(__file__).resolve().parents[1]


class SweepError(UserError, ValueError):
    """An experiment file that cannot be run as written."""


@dataclass
class Cell:
    values: dict  # the cell's flags as the file gives them
    config: dict  # its resolved settings (config.json's form, without PLACE)
    name: str  # its run folder's name
    folder: Path
    group: str  # the cell without its seed: its row of the table

    @property
    def finished(self) -> bool:
        if "tune" in self.values:
            return any(self.folder.glob("best-trial*/summary.json"))
        return (self.folder / "metrics.json").is_file()


def read_experiment(path: str) -> dict:
    spec = load_yaml(path, path)
    if spec is not None and not isinstance(spec, dict):
        raise SweepError(f"{path}: an experiment is a mapping of {', '.join(TOP_KEYS)}")
    spec = spec or {}
    unknown = sorted(set(spec) - set(TOP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r} (an experiment has "
                         f"{', '.join(TOP_KEYS)}; a run's flags go under settings, grid or runs)")
    if not set(spec) & {"settings", "grid", "runs", "seeds"}:
        raise SweepError(f"{path}: no cell: an experiment names its runs under settings, grid "
                         f"or runs (docs/experiments.md)")  # else: one cell of every default
    for key, kind in (("settings", dict), ("grid", dict), ("runs", list), ("tune", dict)):
        if not isinstance(spec.get(key, kind()), kind):
            raise SweepError(f"{path}: {key} must be a {'mapping' if kind is dict else 'list'}")
    if not all(isinstance(run, dict) for run in spec.get("runs") or []):
        raise SweepError(f"{path}: each entry of runs must be a mapping of flags")
    if spec.get("tune") is not None:
        check_tune(spec["tune"], path)
    return spec


def check_tune(tune: dict, path: str) -> None:
    """The tune: section's keys and values as tune.py's flags check them: a bad one made
    every cell fail, one after the other."""
    from runs.tuning import tune_parser
    parser = tune_parser()
    known = [a.dest for a in parser._actions if a.dest not in TUNE_OWNED]
    for key in tune:
        if key in TUNE_OWNED:
            raise SweepError(f"{path}: tune: {key} is set by the sweep (one study per cell)")
        if key not in known:
            raise SweepError(f"{path}: tune: unknown key {key!r} (tune.py's own flags: "
                             f"{', '.join(known)}; a run's flags go under settings)")
    parse_file(parser, [f"--{k}={v}" for k, v in tune.items()], f"{path}: tune")


def cell_values(spec: dict, path: str) -> list[dict]:
    """Every cell's flags: settings, then a runs entry, then a grid point (later wins)."""
    grid = dict(spec.get("grid") or {})
    runs = spec.get("runs") or [{}]
    twice = sorted(set(grid) & {k for run in runs for k in run})
    if twice:  # the grid's value silently won over the entry's
        raise SweepError(f"{path}: {twice[0]} is given both in grid and in runs; give it in "
                         f"one of them")
    if spec.get("seeds") is not None:
        if "random_seed" in {*grid, *(spec.get("settings") or {}), *(k for r in runs for k in r)}:
            raise SweepError(f"{path}: random_seed is given both by seeds and in settings, "
                             f"grid or runs; give the seeds once")
        grid["random_seed"] = spec["seeds"]
    axes = [[(k, v) for v in (vs if isinstance(vs, list) else [vs])] for k, vs in grid.items()]
    cells = [{**(spec.get("settings") or {}), **run, **dict(point)}
             for run in runs for point in itertools.product(*axes)]
    for values in cells:
        owned = sorted(set(values) & set(OWNED))
        if owned:
            raise SweepError(f"{path}: {owned[0]} is set by the sweep for each cell")
    return cells


def make_cells(spec: dict, path: str, tune: dict | None) -> list[Cell]:
    from recommenders import make_config
    root = Path(spec.get("result_dir", "result")) / "sweeps" / sweep_name(spec, path)
    cells, names = [], set()
    for values in cell_values(spec, path):
        given = values_as_flags(values, path)
        config = what_it_computes(make_config(**given).to_dict())
        blob = json.dumps(config, sort_keys=True, default=str) + input_fingerprint(
            values.get("data_dir"), config)
        if tune:  # another budget or storage: another study
            blob += json.dumps(tune, sort_keys=True, default=str)
        digest = hashlib.sha1(blob.encode()).hexdigest()[:10]
        seed = "tuned" if tune else f"s{config['random_seed']}"
        name = f"{config['model']}-{seed}-{digest}"
        if name in names:
            continue  # the same cell written twice
        names.add(name)
        group = json.dumps({k: v for k, v in config.items() if k != "random_seed"},
                           sort_keys=True, default=str)
        cells.append(Cell({**values, **({"tune": tune} if tune else {})}, config, name,
                          root / config["dataset"] / name, group))
    return cells


def sweep_name(spec: dict, path: str) -> str:
    return str(spec.get("name") or Path(path).stem)


def cell_command(cell: Cell, threads: int, device: str | None) -> list[str]:
    """The python main.py (or tune.py) command of a cell: new, or --resume of its folder."""
    threads = cell.values.get("threads") or threads  # the file's, else a share of the cores
    place = ["--threads", str(threads), "--quiet", *(["--device", device] if device else [])]
    if "tune" not in cell.values and (cell.folder / "last.pt").is_file():
        return [sys.executable, str(REPO / "main.py"), "--resume", str(cell.folder), *place]
    values = {k: v for k, v in cell.values.items() if k != "tune"}
    tokens = as_tokens(build_parser(values.get("model") or "refine_plus"), values, "cell",
                       str)
    root = ["--result_dir", str(cell.folder.parents[1])]
    if "tune" in cell.values:
        tune = cell.values["tune"]
        own = [f"--{k}={v}" for k, v in tune.items()]
        return [sys.executable, str(REPO / "tune.py"), *tokens, *root, "--study", cell.name,
                *own, *place]
    return [sys.executable, str(REPO / "main.py"), *tokens, *root, "--path_name", cell.name,
            *place]


try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # Linux
except (OSError, AttributeError):
    _PRCTL = None


def die_with_parent() -> None:
    """In a worker process before it starts: SIGKILL when the sweep dies (Linux's
    PR_SET_PDEATHSIG), so a killed sweep leaves no run holding its folder."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)


def run_cells(cells: list[Cell], workers: int, devices: list[str], log_dir: Path) -> list[str]:
    """Every unfinished cell, ``workers`` processes at a time; the failures' lines."""
    todo = [c for c in cells if not c.finished]
    print(f"{len(cells)} cells: {len(cells) - len(todo)} finished, {len(todo)} to run "
          f"({workers} workers)", flush=True)
    # the cores shared among the cells that run at once, not among idle workers
    threads = max(1, len(os.sched_getaffinity(0)) // max(1, min(workers, len(todo))))
    free, running, failures, done = list(range(workers))[::-1], {}, [], 0
    log_dir.mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and free:
            cell, slot = todo.pop(0), free.pop()
            device = devices[slot % len(devices)] if devices else None
            with open(log_dir / f"{cell.name}.out", "a", encoding="utf-8") as out:
                proc = subprocess.Popen(cell_command(cell, threads, device), stdout=out,
                                        stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
            running[proc] = (cell, slot)
        time.sleep(0.1)
        for proc in [p for p in running if p.poll() is not None]:
            cell, slot = running.pop(proc)
            free.append(slot)
            done += 1
            ok = proc.returncode == 0 and cell.finished
            if not ok:
                failures.append(f"{cell.name}: exit code {proc.returncode}, see "
                                f"{log_dir / cell.name}.out")
            print(f"[{done}/{done + len(todo) + len(running)}] {cell.name}: "
                  f"{'done' if ok else 'FAILED'}", flush=True)
            fault_point("sweep_cell", done)  # tests: kill -9 the sweep here
    return failures


def cell_metrics(cell: Cell) -> list[tuple[Path, dict]]:
    """A finished cell's run folder and metrics.json; a tune cell's: each of its best
    settings' seeds. SweepError naming a file that cannot be read or lacks a number of the
    table."""
    if "tune" not in cell.values:
        return [(cell.folder, read_metrics(cell.folder / "metrics.json", cell))]
    best = sorted(cell.folder.glob("best-trial*/summary.json"))[-1].parent
    return [(p.parent, read_metrics(p, cell)) for p in sorted(best.glob("seed*/metrics.json"))]


def code_versions(folders: list[Path]) -> list[str]:
    """The code versions the runs in ``folders`` trained on (environment.jsonl), sorted;
    "unknown" for a run or line without one (before the field existed, or outside git) and
    for a file that cannot be read."""
    versions = set().union(*map(environment.trained_on, folders))
    return sorted(versions)


def code_notes(records: list[dict], now: str | None) -> list[str]:
    """One line per table row whose runs trained on other code than the checkout's now (a
    finished cell is kept, not run again, when the code changes)."""
    def short(version: str) -> str:  # a commit's first 12 digits, and +dirty where it was
        return version[:12] + version[40:]
    return [f"note: {r['cell']} trained on code {', '.join(map(short, r['code']))}, "
            f"not {short(now or 'unknown')} checked out now (remove its folders to rerun)"
            for r in records if r["code"] != [now or "unknown"]]


def read_metrics(path: Path, cell: Cell) -> dict:
    try:
        metrics = json.loads(path.read_text())
        if all(k in metrics for k in COUNTS) and all(isinstance(metrics[s], dict)
                                                    for s in SPLITS):
            return metrics
    except (OSError, ValueError, TypeError, KeyError):
        pass
    raise SweepError(f"{path} is damaged; remove {cell.folder} to run the cell again")


def table(cells: list[Cell], problems: list[str]) -> tuple[list[str], list[dict]]:
    """One row per group of cells that differ only in their seed: mean ± std over seeds; a
    finished cell whose numbers cannot be read is left out and its line added to
    ``problems``."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    varying = sorted(k for k in cells[0].config if k not in ("random_seed", "model", "dataset")
                     and len({json.dumps(c.config.get(k), default=str) for c in cells}) > 1)
    rows, records = [["cell", "seeds", "valid R@20", "test R@20", "test N@20"]], []
    for members in groups.values():
        found = []
        for cell in (c for c in members if c.finished):
            try:
                found += cell_metrics(cell)
            except SweepError as err:
                problems.append(str(err))
        runs = [metrics for _, metrics in found]
        first = members[0].config
        label = " ".join([first["model"], first["dataset"],
                          *(f"{k}={first.get(k)}" for k in varying)])
        if not runs:
            rows.append([label, "0", "-", "-", "-"])
            continue
        summary = seeds.summarize(dict(enumerate(runs)))
        records.append({"cell": label, "folders": [str(c.folder) for c in members],
                        "code": code_versions([folder for folder, _ in found]),
                        "summary": summary})
        cells_text = [f"{s['mean']:.4f} ± {s['std']:.4f}" if s else "-" for s in (
            summary["best_validation"].get("recall@20"), summary["test"].get("recall@20"),
            summary["test"].get("ndcg@20"))]
        rows.append([label, str(len(runs)), *cells_text])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    return lines, records


def lock_sweep(root: Path) -> int:
    """Hold ``root``'s lock for this process (the kernel drops it on exit, kill -9 too): a
    second sweep of the same cells started their folders under the first one's feet."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SweepError(f"{root} is being run by another sweep; wait for it to end (or add "
                         f"--workers to one sweep instead of starting two)") from None
    return fd


def run_sweep(path: str, workers: int, devices: list[str]) -> int:
    if workers < 1:
        raise ConfigError("--workers must be >= 1")
    spec = read_experiment(path)
    tune = spec.get("tune")
    cells = make_cells(spec, path, tune)
    if not cells:
        raise SweepError(f"{path}: no cell (an empty grid?)")
    root = Path(spec.get("result_dir", "result")) / "sweeps" / sweep_name(spec, path)
    repeats = len(cell_values(spec, path)) - len(cells)
    if repeats:
        many = repeats > 1
        print(f"note: {repeats} cell{'s' if many else ''} of the file repeat{'' if many else 's'}"
              f" another (the same settings and inputs); {'they run' if many else 'it runs'} "
              f"once", flush=True)
    lock = lock_sweep(root)
    try:
        failures = run_cells(cells, workers, devices, root / "logs")
        lines, records = table(cells, failures)
        lines += code_notes(records, environment.code_version())
        atomic_write_text(root / "results.txt", "\n".join(lines) + "\n")
        dump_json(records, root / "results.json")
    finally:
        os.close(lock)
    print("\n".join(["", *lines, "", f"(written to {root / 'results.txt'})"]))
    if failures:
        raise SweepError(f"{len(failures)} cell(s) failed; first: {failures[0]}")
    return 0
