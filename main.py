"""Train and evaluate ReFINe++ and its baselines: ``python main.py --dataset ML-100K``.

Every run writes ``<result_dir>/<dataset>/<run>/`` with argv.txt, config.json, train.log,
epochs.jsonl, best.pt, last.pt (for --resume) and metrics.json (docs/training.md). The
training itself is runs/trainer.py; the models are the files of recommenders/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import compare
from data.registry import DATASETS
from data.splits import resolve_data_dir
from recommenders import MODELS, add_setting_flags, make_config
from runs import distributed, seeds, trainer
from runs.cli import run_cli
from runs.config import Config, ConfigError
from runs.resume import no_finished_epoch

RESUME_OVERRIDES = ("epochs", "device", "gpu_id", "threads", "data_dir", "quiet", "download",
                    "base_url", "compare_to")
INTERRUPTED = ("interrupted: continue with --resume <run folder> (last.pt holds the last "
               "finished epoch)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a("--model", help=f"{', '.join(MODELS)} (default refine_plus); see recommenders/")
    a("--dataset", help=f"{', '.join(DATASETS)}, or a folder name under --data_dir "
                        f"(default ML-100K)")
    a("--dataset_augment", choices=("augment", "original"),
      help="train on the LLM-refined file (augment, default) or the raw ratings (original)")
    a("--data_dir", help="folder holding <DATASET>/ (default $REFINE_DATA_DIR or dataset/)")
    a("--random_seed", type=int, help="seed for python, numpy, torch (default 2024)")
    a("--batch_size", type=int, help="rows of T per step (default 1024)")
    a("--test_batch_size", type=int, help="users per evaluation block (default 8192)")
    a("--embedding_dim", type=int, help="d (default 64)")
    a("--layers", type=int, help="LightGCN layers K (default 4; 2 for Amazon_Books except "
                                 "pngnn, siren)")
    a("--learning_rate", type=float, help="Adam learning rate (default 1e-3; pngnn, siren 5e-3)")
    a("--evaluation_step", type=int, help="validate every N epochs (default 1)")
    a("--early_stopping_step", type=int, help="patience on validation Recall@20 (default 50)")
    a("--top_k", type=int, nargs="+", help="cut-offs (default 5 10 15 20)")
    a("--epochs", type=int, help="maximum epochs (default 1000); with --resume: new maximum")
    a("--mask_valid_in_test", action="store_true",
      help="also mask validation rows when scoring the test split (reference: not masked)")
    a("--allow_split_overlap", action="store_true",
      help="train even when a (user, item) pair is in two of train/validation/test (a "
           "warning in train.log); default: refuse such data")
    a("--device", help="auto (default), cpu, cuda or cuda:N")
    a("--gpu_id", type=int, help="GPU index used by --device auto (reference flag)")
    a("--threads", type=int, help="CPU threads (default: all cores available to the process)")
    a("--path_name", help="run folder name under <result_dir>/<dataset>/ (default: timestamp "
                          "and process id)")
    a("--result_dir", help="root of run folders (default result)")
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    a("--quiet", action="store_true", help="log to train.log only: no stdout, no progress bar")
    a("--keep_denormals", dest="flush_denormal", action="store_false",
      help="CPU: keep subnormal floats (slow); default flushes them to zero")
    a("--no_download", dest="download", action="store_false",
      help="never download missing split files (default: fetch and verify them)")
    a("--base_url", help="where to download the published splits from (default: the pinned "
                         "upstream commit; also $REFINE_BASE_URL)")
    a("--seeds", type=int, nargs="+", help="run once per seed, each in <run>/seed<S>/, then "
                                           "write <run>/summary.json (mean ± std)")
    a("--num_seeds", type=int, help="as --seeds with random_seed, random_seed + 1, ...")
    a("--compare_to", nargs="+", metavar="PATH",
      help="logs or run folders to print side by side with this run at the end (compare.py)")
    add_setting_flags(p)  # each model's own flags, from its Settings (recommenders/*.py)
    return p


def config_from_args(argv=None) -> Config:
    parser = build_parser()
    given = vars(parser.parse_args(argv))
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
        flag = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
        raise ConfigError(f"--resume keeps the run's settings; only "
                          f"{', '.join(flag[k] for k in RESUME_OVERRIDES)} may be given "
                          f"(got {', '.join(flag[k] for k in ignored)})")
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
    if config.seeds is None:
        trainer.run(config)
        return
    if distributed.world_size_from_env() > 1:
        raise ConfigError("--seeds/--num_seeds cannot run under torchrun; launch one torchrun "
                          "per seed")
    seeds.run_seeds(config, trainer.run)


def main(argv=None) -> int:
    return run_cli(lambda: train(argv), interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
