"""Each model owns its flags: ``main.py --model X`` parses the general flags and X's alone,
and every default its help states is the default X really runs with on each dataset."""
from __future__ import annotations

import re
from dataclasses import fields

import pytest

import main
from data.registry import DATASETS
from recommenders import MODELS, make_config
from runs.config import GENERAL_FIELDS, ConfigError

STATED = re.compile(r"\(default ([^():][^()]*)\)$")  # "(default: ...)": described


def stated_defaults(model: str) -> dict[str, str]:
    """--flag dest -> the text of its help's trailing "(default ...)"."""
    out = {}
    for action in main.build_parser(model)._actions:
        found = STATED.search(" ".join((action.help or "").split()))
        if found and action.option_strings:
            out[action.dest] = found.group(1)
    return out


def on_dataset(text: str, dataset: str) -> str:
    """"4; Amazon_Books: 2" read for ``dataset``."""
    base, *special = text.split("; ")
    for part in special:
        name, _, value = part.partition(": ")
        if name == dataset:
            return value
    return base


def shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("model", list(MODELS))
def test_help_states_the_effective_default_on_every_dataset(model):
    stated = stated_defaults(model)
    own = {f.name for f in fields(MODELS[model].settings)}
    assert {"layers", "learning_rate", "batch_size", "epochs"} <= set(stated)
    assert own - set(stated) == {f.name for f in fields(MODELS[model].settings)
                                 if f.default is None}  # None: the help says what it means
    for dataset in DATASETS:
        effective = make_config(model=model, dataset=dataset).to_dict()
        for name, text in stated.items():
            if name == "dataset":  # given here
                continue
            assert on_dataset(text, dataset) == shown(effective[name]), (model, dataset, name)


def test_stated_defaults_by_hand():
    assert stated_defaults("lightgcn")["layers"] == "4; Amazon_Books: 2"
    assert stated_defaults("pngnn")["layers"] == "4"
    assert stated_defaults("pngnn")["learning_rate"] == "0.005"
    assert stated_defaults("mixgcf")["layers"] == "3"
    assert stated_defaults("mixgcf")["candidates"] == "16; ML-1M: 32"
    assert stated_defaults("refine")["r"] == "100; ML-1M: 250; Netflix-1M: 300"
    assert stated_defaults("refine_plus")["lambda1"] == "1e-07"


@pytest.mark.parametrize("model", list(MODELS))
def test_a_model_parses_the_general_flags_and_its_own_alone(model):
    # --config is read (runs/config_file.py) before the parser, which lists it for -h only
    dests = {a.dest for a in main.build_parser(model)._actions} - {"help", "num_seeds",
                                                                     "flush_denormal",
                                                                     "download", "config"}
    own = {f.name for f in fields(MODELS[model].settings)}
    assert dests == (set(GENERAL_FIELDS) - {"flush_denormal", "download"}) | own


@pytest.mark.parametrize("argv, message", [
    (["--model", "lightgcn", "--num_negatives", "3"],
     "--num_negatives is a setting of pngnn, siren, semantic_neg, mixgcf, not of --model "
     "lightgcn"),
    (["--model", "lightgcn", "--b=2"], "--b is a setting of pngnn, not of --model lightgcn"),
    (["--lambda_reg", "0.1"], "--lambda_reg is a setting of refine, lightgcn, pngnn, siren, "
                              "semantic_neg, mixgcf, hnlmrec, not of --model refine_plus"),
    (["--model", "nope"], "--model must be one of refine_plus"),
])
def test_another_models_flag_is_one_line_naming_its_owner(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        main.config_from_args(argv)


def test_help_of_one_model_lists_no_other_models_flags(capsys):
    with pytest.raises(SystemExit):
        main.config_from_args(["--model", "lightgcn", "-h"])
    text = capsys.readouterr().out
    assert "--augment_file" in text and "--lambda_reg" in text
    for other in ("--num_negatives", "--lambda1", "--negative_file", "--candidates"):
        assert other not in text
    assert "--model M -h" in text  # the epilog says how to see another model's


def test_resume_parses_with_the_runs_model(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "mixgcf", "dataset": "ML-100K"}')
    (run / "last.pt").write_bytes(b"")  # only its presence is checked before the flags
    assert main.saved_model(run) == "mixgcf"
    with pytest.raises(ConfigError, match="--resume keeps the run's settings"):
        main.config_from_args(["--resume", str(run), "--candidates", "4"])
    with pytest.raises(ConfigError, match="--num_negatives.*not of --model refine_plus"):
        main.config_from_args(["--resume", str(tmp_path / "absent"), "--num_negatives", "4"])
