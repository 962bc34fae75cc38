"""What a run computes, apart from where and how fast it runs: its resolved settings without
``PLACE`` and the fingerprint of the bytes of its input files. A sweep's cell is named by a
hash of the two (runs/sweep.py); a tuning study records them as its problem and refuses a
worker of another problem (runs/tuning.py)."""
from __future__ import annotations

from pathlib import Path

from data import provenance
from data.splits import resolve_data_dir

# where a run goes and how fast, not what it computes
PLACE = ("data_dir", "result_dir", "path_name", "resume", "threads", "device", "gpu_id",
         "quiet", "download", "base_url", "download_timeout", "download_max_mb", "compare_to",
         "seeds")
FILE_SETTINGS = ("augment_file", "negative_file", "item_file")


def what_it_computes(config: dict) -> dict:
    """A resolved config (config.json's form) without the keys of ``PLACE``."""
    return {k: v for k, v in config.items() if k not in PLACE}


def input_fingerprint(data_dir: str | Path | None, config: dict) -> str:
    """8 hex digits naming the bytes of the run's dataset folder and file settings."""
    folder = resolve_data_dir(data_dir) / config["dataset"]
    files = [(p.name, p) for p in sorted(folder.iterdir()) if p.is_file()] \
        if folder.is_dir() else []
    files += [(k, Path(config[k])) for k in FILE_SETTINGS if config.get(k)]
    return provenance.fingerprint([{"role": role, "git_blob": provenance.git_blob_sha1(p)}
                                   for role, p in files if p.is_file()])
