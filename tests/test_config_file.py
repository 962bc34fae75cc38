"""main.py --config FILE.yaml: every flag as a key, the command line wins, config.json holds
the resolved settings, a bad key or value is one error line naming it."""
from __future__ import annotations

import json

import main as M
from tests.conftest import fails_with, run_main, synthetic_rows, write_split_folder


def write_yaml(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_file_values_parsed_like_flags_and_command_line_overrides(tmp_path):
    cfg = write_yaml(tmp_path, "model: lightgcn\nlearning_rate: 5e-3\nepochs: 3\n"
                               "top_k: [5, 20]\nlambda_reg: 0.001\nquiet: true\n"
                               "no_download: true\nmask_valid_in_test: false\n")
    given = M.parse_flags(["--config", cfg, "--epochs", "1"])
    assert given["model"] == "lightgcn" and given["learning_rate"] == 0.005
    assert given["epochs"] == 1 and given["top_k"] == [5, 20] and given["lambda_reg"] == 1e-3
    assert given["quiet"] is True and given["download"] is False
    assert "mask_valid_in_test" not in given  # false: the switch is not given


def test_config_json_records_the_resolved_run(tmp_path):
    write_split_folder(tmp_path / "data", "Synth", *synthetic_rows())
    cfg = write_yaml(tmp_path, f"model: lightgcn\ndataset: Synth\ndata_dir: {tmp_path / 'data'}\n"
                               "epochs: 4\nlearning_rate: 0.01\ntop_k: [5, 10]\n")
    rc, result = run_main(["--config", cfg, "--epochs", "2"], tmp_path)
    assert rc == 0
    saved = json.loads((result / "Synth" / "run" / "config.json").read_text())
    assert saved["model"] == "lightgcn" and saved["epochs"] == 2
    assert saved["learning_rate"] == 0.01 and saved["top_k"] == [5, 10]


def test_unknown_key_is_one_line_naming_it(tmp_path, capsys):
    cfg = write_yaml(tmp_path, "model: lightgcn\nlearnig_rate: 0.01\n")
    fails_with(capsys, M.main(["--config", cfg]), "learnig_rate", "run.yaml")


def test_another_models_key_names_its_model(tmp_path, capsys):
    cfg = write_yaml(tmp_path, "model: lightgcn\nlambda1: 0.01\n")
    fails_with(capsys, M.main(["--config", cfg]), "--lambda1 is a setting of refine_plus",
               "not of --model lightgcn")


def test_bad_value_is_checked_like_the_flag(tmp_path, capsys):
    cfg = write_yaml(tmp_path, "learning_rate: fast\n")
    fails_with(capsys, M.main(["--config", cfg]), "run.yaml", "--learning_rate",
               "invalid float value")
    cfg = write_yaml(tmp_path, "quiet: 3\n")
    fails_with(capsys, M.main(["--config", cfg]), "run.yaml", "quiet", "true or false")


def test_unreadable_files(tmp_path, capsys):
    fails_with(capsys, M.main(["--config", str(tmp_path / "none.yaml")]), "none.yaml")
    cfg = write_yaml(tmp_path, "- a\n- b\n")
    fails_with(capsys, M.main(["--config", cfg]), "run.yaml", "mapping")
    cfg = write_yaml(tmp_path, "model: [unclosed\n")
    fails_with(capsys, M.main(["--config", cfg]), "run.yaml", "YAML")


def test_a_key_written_twice_is_refused_naming_it(tmp_path, capsys):
    # PyYAML keeps the last of two equal keys without a word: half of the file was ignored
    cfg = write_yaml(tmp_path, "epochs: 3\nlearning_rate: 0.01\nepochs: 5\n")
    fails_with(capsys, M.main(["--config", cfg]), "run.yaml", "epochs", "twice", "line 3")


def test_a_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"epochs: 3\n\xff\xfe\n")
    fails_with(capsys, M.main(["--config", str(path)]), "run.yaml", "UTF-8")


def test_config_given_twice_is_refused(tmp_path, capsys):
    first, second = write_yaml(tmp_path, "epochs: 3\n"), str(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").write_text("epochs: 4\n")
    fails_with(capsys, M.main(["--config", first, f"--config={second}"]), "--config",
               "once")


def test_a_value_that_looks_like_a_flag_is_the_flags_value(tmp_path):
    cfg = write_yaml(tmp_path, "path_name: '--quiet'\nbase_url: -x\n")
    given = M.parse_flags(["--config", cfg])
    assert given["path_name"] == "--quiet" and given["base_url"] == "-x"
    assert "quiet" not in given


def test_a_yaml_boolean_for_a_valued_flag_says_to_quote_it(tmp_path, capsys):
    # YAML 1.1 reads yes/no/on/off as booleans: 'True' is not what the user wrote
    cfg = write_yaml(tmp_path, "dataset: yes\n")
    fails_with(capsys, M.main(["--config", cfg]), "run.yaml", "dataset", "quote")


def test_an_abbreviated_config_flag_reads_the_file(tmp_path):
    # argparse took --conf for --config and the file was never read ('--config is not a flag')
    cfg = write_yaml(tmp_path, "epochs: 3\n")
    assert M.parse_flags(["--conf", cfg])["epochs"] == 3
    assert M.parse_flags([f"--confi={cfg}"])["epochs"] == 3
    from recommenders import MODELS  # the abbreviations stay unambiguous
    options = {o for m in MODELS for a in M.build_parser(m)._actions for o in a.option_strings}
    assert {o for o in options if o.startswith("--con")} == {"--config"}
