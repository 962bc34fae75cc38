"""main.py's flags: the general ones and the run's model's own (recommenders/), parsed
in two steps (the model first, then its parser), with ``--config FILE.yaml`` read before the
command line (runs/config_file.py). Here, not in main.py, because tune.py and sweep.py parse
runs' flags too and nothing imports the command-line module."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from data.registry import DATASETS
from recommenders import (DEFAULT_MODEL, MODELS, add_setting_flags, default_text, not_a_setting,
                          owner_of)
from runs import seeds
from runs.config import ConfigError
from runs.config_file import as_tokens, parse_file, read_config_file, split_config_flag

DESCRIPTION = "Train and evaluate ReFINe++ and its baselines: ``python main.py --dataset ML-100K``."


def build_parser(model: str = DEFAULT_MODEL) -> argparse.ArgumentParser:
    """The general flags and ``model``'s own; every stated default is the model's
    (recommenders.defaults_of), so ``--model X -h`` tells X's truth."""
    p = argparse.ArgumentParser(
        description=DESCRIPTION, argument_default=argparse.SUPPRESS,
        epilog=f"Each model has its own flags: python main.py --model M -h "
               f"(M: {', '.join(MODELS)}).")
    a = p.add_argument

    def d(name: str) -> str:  # " (default X)" for --name, as --model states it
        return f" (default {default_text(model, name)})"

    a("--model", help=f"{', '.join(MODELS)} (default {DEFAULT_MODEL}); see recommenders/")
    a("--dataset", help=f"{', '.join(DATASETS)}, or a folder name under --data_dir"
                        f"{d('dataset')}")
    a("--dataset_augment", choices=("augment", "original"),
      help="which train file: the LLM-refined ratings (augment) or the raw ones (original); "
           "the reference's name, unrelated to an --augment_file of python -m llm.augment"
           + d("dataset_augment"))
    a("--data_dir", help="folder holding <DATASET>/ (default: $REFINE_DATA_DIR or dataset/)")
    a("--random_seed", type=int, help="seed for python, numpy, torch" + d("random_seed"))
    a("--batch_size", type=int, help="rows of T per step" + d("batch_size"))
    a("--test_batch_size", type=int, help="users per evaluation block" + d("test_batch_size"))
    a("--embedding_dim", type=int, help="d" + d("embedding_dim"))
    a("--layers", type=int, help="LightGCN layers K" + d("layers"))
    a("--learning_rate", type=float, help="Adam learning rate" + d("learning_rate"))
    a("--evaluation_step", type=int, help="validate every N epochs" + d("evaluation_step"))
    a("--early_stopping_step", type=int,
      help="patience on validation Recall@20" + d("early_stopping_step"))
    a("--top_k", type=int, nargs="+", help="cut-offs" + d("top_k"))
    a("--epochs", type=int, help="maximum epochs; with --resume: the new maximum" + d("epochs"))
    a("--mask_valid_in_test", action="store_true",
      help="also mask validation rows when scoring the test split (reference: not masked)")
    a("--allow_split_overlap", action="store_true",
      help="train even when a (user, item) pair is in two of train/validation/test (a "
           "warning in train.log); default: refuse such data")
    a("--device", help="auto, cpu, cuda or cuda:N" + d("device"))
    a("--gpu_id", type=int, help="GPU index used by --device auto (reference flag)")
    a("--threads", type=int, help="CPU threads (default: all cores available to the process)")
    a("--path_name", help="run folder name under <result_dir>/<dataset>/ (default: timestamp "
                          "and process id)")
    a("--result_dir", help="root of run folders" + d("result_dir"))
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    a("--quiet", action="store_true", help="log to train.log only: no stdout, no progress bar")
    a("--keep_denormals", dest="flush_denormal", action="store_false",
      help="CPU: keep subnormal floats (slow); default flushes them to zero")
    a("--no_download", dest="download", action="store_false",
      help="never download missing split files (default: fetch and verify them)")
    a("--base_url", help="where to download the published splits from (default: the pinned "
                         "upstream commit; also $REFINE_BASE_URL)")
    a("--download_timeout", type=float, metavar="SECONDS",
      help=f"a split file's download may take this long in all, from the request to the last "
           f"byte" + d("download_timeout"))
    a("--download_max_mb", type=float, metavar="MIB",
      help="refuse a split file's download past this size" + d("download_max_mb"))
    a("--seeds", type=int, nargs="+", help="run once per seed, each in <run>/seed<S>/, then "
                                           "write <run>/summary.json (mean ± std)")
    a("--num_seeds", type=int, help="as --seeds with random_seed, random_seed + 1, ...")
    a("--config", metavar="FILE.yaml", help="flags as a YAML mapping (learning_rate: 0.001, "
                                            "...); the command line's flags win")
    a("--compare_to", nargs="+", metavar="PATH",
      help="logs or run folders to print side by side with this run at the end (compare.py)")
    add_setting_flags(p, model)  # the model's own flags, from its Settings (recommenders/)
    return p


def parse_flags(argv: list[str]) -> dict:
    """The given flags, parsed by the parser of the run's model (--model, the model of the
    --resume run, or the default); a flag of another model is refused naming its owner.
    ``--config FILE.yaml`` gives flags as a YAML mapping; the command line's win
    (runs/config_file.py)."""
    argv, config_path = split_config_flag(argv)
    from_file = read_config_file(config_path) if config_path else {}
    first = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    first.add_argument("--model")
    first.add_argument("--resume")
    known, _ = first.parse_known_args(argv)
    model = getattr(known, "model", None) or from_file.get("model")
    resume = getattr(known, "resume", None) or from_file.get("resume")
    if model is None and resume:
        model = saved_model(Path(str(resume)))
    model = model or DEFAULT_MODEL
    if model not in MODELS:
        raise ConfigError(f"--model must be one of {', '.join(MODELS)}")
    parser = build_parser(model)
    ours = {option for action in parser._actions for option in action.option_strings}
    for arg in argv:  # before argparse, which would read --b as an abbreviation of ours
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name not in ours and owner_of(name[2:]):
            raise ConfigError(not_a_setting(name[2:], model))
    given = values_as_flags(from_file, f"--config {config_path}", model) if config_path else {}
    return {**given, **vars(parser.parse_args(argv))}


def values_as_flags(values: dict, source: str, model: str | None = None) -> dict:
    """A mapping of flag names to values (a --config file, a sweep's cell) parsed as the
    flags of ``model`` (default: its ``model`` key) would be; errors name ``source``."""
    model = model or values.get("model") or DEFAULT_MODEL
    if model not in MODELS:
        raise ConfigError(f"{source}: --model must be one of {', '.join(MODELS)}")
    parser = build_parser(model)
    tokens = as_tokens(parser, values, source, lambda key: not_a_setting(key, model))
    return parse_file(parser, tokens, source)


def saved_model(run_dir: Path) -> str | None:
    """The --model of the run in ``run_dir`` (None when it cannot be read: --resume's own
    checks say why later)."""
    for name in (seeds.SEEDS_FILE, "config.json"):
        try:
            saved = json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and saved.get("model") in MODELS:
            return saved["model"]
    return None
