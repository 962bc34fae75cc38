"""Hyper-parameter search with Optuna (``python tune.py``; docs/experiments.md).

A study maximizes the best validation Recall@20 of a run (the early-stopping score) over the
model's ``search_space`` (declared in its file under recommenders/), with the TPE sampler and
a median pruner fed after every validation (runs/training_loop.VALIDATION_HOOKS). Each trial
is an ordinary run folder, ``<study>/trials/trialNNNN``, trained on a view of the data folder
(``<study>/data``) whose test file is the validation file: the trials never open the real
test split, and nothing of a trial is tested. Storage: ``<study>/study.db`` (SQLite) unless
``--storage URL`` names another database (PostgreSQL: several machines on one study).
After the search the best trial's settings run for ``--final_seeds`` seeds on the real data
and are tested into ``<study>/best-trialNNNN/`` (runs/seeds.py), whose seeds.json records
the study. A study records its problem (model, data, fixed settings, space) and refuses a
worker of another; a trial whose process died is failed by its stopped heartbeat and run
again once.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy

from data.errors import UserError
from data.protocols import read_protocol
from data.splits import resolve_data_dir, split_path
from runs import seeds, trainer, training_loop
from runs.config import ConfigError
from runs.files import dump_json
from runs.flags import parse_flags
from runs.problem import input_fingerprint, what_it_computes

OWNED = ("seeds", "num_seeds", "resume", "path_name", "compare_to", "data_dir_view")


class TrialEnd(Exception):
    """A trial's last validation happened: its score is the best so far, no test follows."""


def tune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--trials", type=int, default=20,
                   help="trials of the study in all, over every worker (default 20)")
    p.add_argument("--study", help="study name (default <model>-tune); its folder: "
                                   "<result_dir>/<dataset>/<study>/")
    p.add_argument("--storage", help="database URL of the study (default: sqlite:///"
                                     "<study folder>/study.db); postgresql+psycopg://... lets "
                                     "several processes or machines share one study")
    p.add_argument("--final_seeds", type=int, default=5,
                   help="seeds of the best settings run and tested after the search "
                        "(default 5; 0: search only, e.g. an extra worker)")
    p.add_argument("--warmup_epochs", type=int, default=5,
                   help="epochs before a trial may be pruned (default 5)")
    p.add_argument("--heartbeat", type=int, default=60,
                   help="seconds between a running trial's heartbeats in the storage; a trial "
                        "silent for two of them (its process killed) is marked failed and "
                        "its settings run again once (default 60)")
    return p


def search_space(model: str, given: dict) -> dict:
    """The model's search space without the settings given on the command line (or in
    --config): those are held fixed, not searched."""
    from recommenders import MODELS
    space = {k: v for k, v in MODELS[model].search_space.items() if k not in given}
    if not space:  # every trial would be the same run
        raise ConfigError(f"every setting of {model}'s search space "
                          f"({', '.join(MODELS[model].search_space)}) is given fixed: "
                          f"nothing to search")
    return space


def sample(trial: optuna.Trial, space: dict) -> dict:
    """One point of a model's search space (recommenders/base.py's range tuples)."""
    params = {}
    for name, (kind, *args) in space.items():
        if kind == "log":
            params[name] = trial.suggest_float(name, *args, log=True)
        elif kind == "float":
            params[name] = trial.suggest_float(name, *args)
        elif kind == "int":
            params[name] = trial.suggest_int(name, args[0], args[1], log=args[2])
        else:
            params[name] = trial.suggest_categorical(name, list(args[0]))
    return params


def default_point(model: str, dataset: str, space: dict | None = None) -> dict:
    """The model's defaults (on ``dataset``) at the names of its search space."""
    from recommenders import MODELS, defaults_of
    defaults = defaults_of(model, dataset)
    return {name: defaults[name] for name in (space or MODELS[model].search_space)}


def problem_of(base, space: dict, view: Path) -> dict:
    """What a study searches, recorded in it: trials of another problem cannot be ranked
    with its own. Its inputs: the bytes the trials read (the validation view: not test)."""
    fixed = {k: v for k, v in what_it_computes(base.to_dict()).items() if k not in space}
    return json.loads(json.dumps({
        "model": base.model, "dataset": base.dataset, "objective": "best validation recall@20",
        "search_space": space, "settings": fixed,
        "inputs": input_fingerprint(view, base.to_dict())}, default=str))


def check_problem(study: optuna.Study, problem: dict, storage: str) -> None:
    """Record ``problem`` in a new study; ConfigError when the study searches another."""
    saved = study.user_attrs.get("problem")
    if saved is None:
        study.set_user_attr("problem", problem)
        return
    flat = [(k, saved.get(k), problem[k]) for k in problem if k != "settings"]
    flat += [(k, saved.get("settings", {}).get(k), v) for k, v in problem["settings"].items()]
    for key, there, here in flat:
        if there != here:
            raise ConfigError(f"study {study.study_name} in {shown_storage(storage)} searches "
                              f"another problem ({key}: {there} there, {here} here); name "
                              f"another --study")


def shown_storage(url: str) -> str:
    """The storage URL without its password (recorded, printed)."""
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def validation_view(data_dir: Path, dataset: str, view: Path) -> Path:
    """``view/<dataset>/``: links to every file of the dataset's folder but its test file,
    whose name points at the validation file instead; ``view/raw`` links the raw files (the
    item texts some models read). Built by any number of workers at once."""
    source, folder = data_dir / dataset, view / dataset
    if read_protocol(data_dir, dataset) is not None:
        raise ConfigError(f"{dataset}: a protocol folder has no validation split to tune on")
    test, valid = split_path(data_dir, dataset, "test"), split_path(data_dir, dataset,
                                                                    "validation")
    if not valid.is_file():
        raise ConfigError(f"{valid}: tuning needs the validation split")
    folder.mkdir(parents=True, exist_ok=True)
    links = {folder / p.name: p.resolve() for p in source.iterdir() if p.name != test.name}
    links[folder / test.name] = valid.resolve()
    raw = next((r for r in (data_dir / "raw", data_dir.parent / "raw") if r.is_dir()), None)
    if raw is not None:
        links[view / "raw"] = raw.resolve()
    for link, target in links.items():
        try:
            link.symlink_to(target)
        except FileExistsError:
            if link.resolve() != target:
                raise ConfigError(f"{link} exists and is not a link to {target}; remove "
                                  f"{view}") from None
    return view


def check_storage(storage: str) -> None:
    """ConfigError at once for a URL that is none, or an SQLite file that cannot be made:
    retrying them only delayed the same error."""
    try:
        url = sqlalchemy.engine.make_url(storage)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"--storage {storage!r} is not a database URL (sqlite:///FILE, "
                          f"postgresql+psycopg://USER:PW@HOST/DB)") from None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = Path(url.database)
    problem = "is a folder" if path.is_dir() else "has no folder to go in" \
        if not path.parent.is_dir() else "is not writable" \
        if not os.access(path if path.exists() else path.parent, os.W_OK) else None
    if problem:
        raise ConfigError(f"--storage {shown_storage(storage)}: {path} {problem}")


def transient(err: Exception) -> bool:
    """A second worker creating the same tables, or SQLite's lock: worth another try."""
    text = str(err).lower()
    return isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in text \
        or "locked" in text


def stale_trial_retry() -> dict:
    """RDBStorage's argument that runs a stale trial's settings again, once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
            return {"heartbeat_stale_trial_callback":
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
        return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}


def open_study(name: str, storage: str, seed: int, warmup: int, pruner=None,
               heartbeat: int = 60) -> optuna.Study:
    """The study (created by the first worker); a second worker starting at the same
    moment may find the tables half made: it tries again. A trial whose heartbeat stops
    (its process killed) is failed by the next worker to start a trial, which runs its
    settings again once (Optuna's RetryFailedTrialCallback)."""
    check_storage(storage)
    kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup)
    retry = stale_trial_retry()
    for attempt in range(5):
        try:  # SQLite: several processes on one file wait for its lock
            with warnings.catch_warnings():  # the heartbeat is 'experimental' in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                url = optuna.storages.RDBStorage(storage, engine_kwargs=kwargs,
                                                 heartbeat_interval=heartbeat, **retry)
            return optuna.create_study(
                study_name=name, storage=url, direction="maximize", load_if_exists=True,
                # each worker its own draws (the same seed would repeat the first trials)
                sampler=optuna.samplers.TPESampler(seed=seed + os.getpid()), pruner=pruner)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
                ImportError) as err:
            if attempt == 4 or not transient(err):
                raise ConfigError(f"--storage {shown_storage(storage)}: {err.__class__.__name__}: "
                                  f"{str(err).splitlines()[0][:120]}") from None
            time.sleep(1 + attempt)


def finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_trial(trial: optuna.Trial, given: dict, view: Path, study_name: str,
              space: dict) -> float:
    """One trial: the sampled settings trained on the validation view; its best validation
    Recall@20, reported after each validation so that the pruner can stop it."""
    from recommenders import make_config
    params = sample(trial, space)
    trial.set_user_attr("pid", os.getpid())
    config = make_config(**{**given, **params, "data_dir": str(view), "quiet": True,
                            "allow_split_overlap": True,  # test is validation here
                            "path_name": f"{study_name}/trials/trial{trial.number:04d}"})

    best: list[float] = []

    def report(training, score: float) -> None:
        best.append(training.stopper.best_score)
        trial.report(score, training.epoch)
        if trial.should_prune():
            training.log(f"\nTuning: trial {trial.number} pruned at epoch {training.epoch}.")
            raise optuna.TrialPruned(f"epoch {training.epoch}: {score:.4f}")
        if training.epoch + config.evaluation_step > config.epochs or \
                training.stopper.should_stop:
            training.log(f"\nTuning: trial {trial.number} ends after its last validation "
                         f"(best Recall@20 {training.stopper.best_score:.4f}); not tested.")
            raise TrialEnd

    training_loop.VALIDATION_HOOKS.append(report)
    try:
        trainer.run(config)
    except TrialEnd:
        pass
    except trainer.TrainingError as err:  # e.g. a loss gone non-finite at a high lr
        trial.set_user_attr("error", str(err))
        raise optuna.TrialPruned(str(err)) from None
    finally:
        training_loop.VALIDATION_HOOKS.remove(report)
    print(f"trial {trial.number}: validation Recall@20 {best[-1]:.4f} {params}", flush=True)
    return best[-1]


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """tune.py's own flags, and main.py's (--config FILE.yaml included) for the runs."""
    own, rest = tune_parser().parse_known_args(argv)
    given = parse_flags(rest)
    taken = sorted(set(given) & set(OWNED))
    if taken:
        raise ConfigError(f"--{taken[0]}: tune.py names its own runs and seeds "
                          f"(--final_seeds); leave it out")
    if own.trials < 1 or own.final_seeds < 0 or own.warmup_epochs < 0 or own.heartbeat < 1:
        raise ConfigError("--trials must be >= 1, --final_seeds >= 0, --warmup_epochs >= 0 "
                          "and --heartbeat >= 1")
    return own, given


def search(argv: list[str], pruner=None) -> optuna.Study:
    """Run trials until the study (every worker's) holds --trials finished ones; then
    the best settings' seeds. Returns the study."""
    from recommenders import make_config
    own, given = parse(argv)
    base = make_config(**given)
    space = search_space(base.model, given)
    name = own.study or f"{base.model}-tune"
    study_dir = Path(base.result_dir) / base.dataset / name
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = own.storage or f"sqlite:///{study_dir / 'study.db'}"
    view = validation_view(resolve_data_dir(base.data_dir), base.dataset, study_dir / "data")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial: ours
    study = open_study(name, storage, base.random_seed, own.warmup_epochs, pruner,
                       own.heartbeat)
    check_problem(study, problem_of(base, space, view), storage)
    run_args = {**given, "result_dir": base.result_dir}
    if not study.trials:  # trial 0: the model's defaults, the baseline any tuning must beat
        study.enqueue_trial(default_point(base.model, base.dataset, space),
                            skip_if_exists=True)

    def enough(study, _trial) -> None:
        if finished(study) >= own.trials:
            study.stop()
    if finished(study) < own.trials:
        study.optimize(lambda t: run_trial(t, run_args, view, name, space),
                       callbacks=[enough])
    if own.final_seeds:
        final_seeds(study, run_args, study_dir, storage, own.final_seeds)
    return study


def final_seeds(study: optuna.Study, given: dict, study_dir: Path, storage: str,
                count: int) -> dict:
    """The best trial's settings for ``count`` seeds on the real data, tested; seeds.json
    records the study. An interrupted final run continues (runs/seeds.py)."""
    from recommenders import make_config
    try:
        best = study.best_trial
    except ValueError:
        raise UserError("no trial of the study completed (all pruned or failed): nothing "
                        "to run on test") from None
    name = f"best-trial{best.number:04d}"
    parent = study_dir / name
    resume = str(parent) if (parent / seeds.SEEDS_FILE).is_file() else None
    config = make_config(**{**given, **best.params, "num_seeds": count, "resume": resume,
                            "path_name": f"{study.study_name}/{name}"})
    summary = seeds.run_seeds(config, trainer.run)
    record = json.loads((parent / seeds.SEEDS_FILE).read_text())
    record["study"] = {"name": study.study_name, "storage": shown_storage(storage),
                       "best_trial": best.number, "value": best.value,
                       "trials": finished(study)}
    dump_json(record, parent / seeds.SEEDS_FILE)
    print(f"best trial {best.number} (validation Recall@20 {best.value:.4f}): {count} seeds "
          f"tested in {parent}")
    return summary
