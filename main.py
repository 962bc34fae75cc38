"""Train and evaluate ReFINe++ and its baselines: ``python main.py --dataset ML-100K``.

Every run writes ``<result_dir>/<dataset>/<run>/`` with argv.txt, config.json, train.log,
epochs.jsonl, best.pt, last.pt (for --resume) and metrics.json (docs/training.md). The
training itself is runs/trainer.py; the models are the files of recommenders/.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import compare
from data.registry import DATASETS
from data.splits import resolve_data_dir
from recommenders import make_config
from runs import distributed, seeds, trainer
from runs.cli import run_cli
from runs.config import Config, ConfigError
from runs.flags import build_parser, parse_flags, saved_model  # noqa: F401 - main.X (tests)
from runs.resume import RESUME_OVERRIDES, no_finished_epoch

INTERRUPTED = ("interrupted: continue with --resume <run folder> (last.pt holds the last "
               "finished epoch)")


def config_from_args(argv=None) -> Config:
    argv = list(sys.argv[1:] if argv is None else argv)
    given = parse_flags(argv)
    if "resume" not in given:
        return make_config(**given)
    run_dir = Path(given["resume"])
    if (run_dir / seeds.SEEDS_FILE).is_file():  # a multi-seed run: continue every seed
        saved = read_saved_config(run_dir / seeds.SEEDS_FILE)
    elif not (run_dir / "config.json").is_file():
        raise ConfigError(f"--resume {run_dir}: not a run folder (no config.json there)")
    elif not (run_dir / "last.pt").is_file():
        raise ConfigError(no_finished_epoch(run_dir))
    else:
        saved = read_saved_config(run_dir / "config.json")
    ignored = sorted(set(given) - set(RESUME_OVERRIDES) - {"resume"})
    if ignored:
        flag = {a.dest: a.option_strings[0] for a in build_parser()._actions if a.option_strings}
        raise ConfigError(f"--resume keeps the run's settings; only "
                          f"{', '.join(flag[k] for k in RESUME_OVERRIDES)} may be given "
                          f"(got {', '.join(flag.get(k, '--' + k) for k in ignored)})")
    saved.pop("inputs", None)
    return make_config(strict=False, **{**saved, "num_seeds": None, **given})


def read_saved_config(path: Path) -> dict:
    """A run's config.json / seeds.json as a dict; ConfigError when it is damaged."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--resume: {path} is damaged ({err}); the run cannot be "
                          f"continued exactly") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {path} holds no settings (a JSON object)")
    return saved


def check_paths(config: Config) -> None:
    """What can be checked before any data is read: the data folder, --compare_to."""
    data_dir = resolve_data_dir(config.data_dir)
    if config.dataset not in DATASETS and not data_dir.is_dir():
        raise ConfigError(f"--data_dir {data_dir} does not exist (it should hold "
                          f"{config.dataset}/)")
    if config.dataset not in DATASETS and not (data_dir / config.dataset).is_dir():
        raise ConfigError(f"unknown dataset {config.dataset!r}: use one of "
                          f"{', '.join(DATASETS)} or a folder under {data_dir}")
    for path in config.compare_to or ():  # fail now, not after hours of training
        try:
            compare.load(path)
        except (compare.CompareError, OSError) as err:
            raise ConfigError(f"--compare_to: {err}") from None


def train(argv=None) -> None:
    config = config_from_args(argv)
    check_paths(config)
    if config.seeds is None:  # a plain run, or one seed of a multi-seed run continued alone
        seeds.resume_one_seed(config, trainer.run)
        return
    if distributed.world_size_from_env() > 1:
        raise ConfigError("--seeds/--num_seeds cannot run under torchrun; launch one torchrun "
                          "per seed")
    seeds.run_seeds(config, trainer.run)


def main(argv=None) -> int:
    return run_cli(lambda: train(argv), interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
