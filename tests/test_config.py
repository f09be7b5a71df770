"""Tests for the run config loader."""

import os

import pytest

from ecdctr.config import load_config
from ecdctr.validation import ConfigError


def test_demo_config_resolves_paths_against_its_folder():
    config = load_config("configs/demo.yaml")
    assert config.spec == os.path.abspath("features/default.yaml")
    assert config.work == os.path.abspath("demo/work")
    assert config.windows.tpm_days == 180 and config.windows.actr_days == 14
    assert config.cpm.hidden == config.actr.hidden == (128, 64)  # same structure: transfer by name
    assert config.tpm.hidden == (32,)
    assert config.actr.batch_size == 512 and config.reset_batchnorm
    assert config.cpm.multi_domain == config.actr.multi_domain == "adasparse"
    assert config.actr.adasparse.form == "fusion" and config.tpm.multi_domain == "none"


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text("spec: s.yaml\nlogs: l\nwork: w\nexport: e\n" + text)
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("windowz: {}\n", "unknown key 'windowz'"),
    ("windows: {tpm_days: 0}\n", "windows.tpm_days must be a positive integer"),
    ("windows: {cpm_weeks: 2}\n", "windows: unknown key 'cpm_weeks'"),
    ("model: {hidden: [128, -1]}\n", "model.hidden must be a list of positive layer sizes"),
    ("cpm: {hidden: [8]}\n", "cpm: unknown key 'hidden'"),
    ("actr: {learning_rate: 0}\n", "actr.learning_rate is 0"),
    ("transfer: {reset_batchnorm: maybe}\n", "reset_batchnorm must be true or false"),
    ("beam_args: --runner=X\n", "'beam_args' must be a list"),
    ("model: {multi_domain: moe}\n", "model: model multi_domain 'moe' is not one of"),
    ("model: {adasparse: {form: soft}}\n", "AdaSparseConfig.form must be one of"),
    ("model: {adasparse: {beta2: 1}}\n", "unknown key(s) ['beta2']"),
])
def test_config_errors_name_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    assert expected in str(e.value) and "c.yaml" in str(e.value)


def test_defaults(tmp_path):
    config = load_config(_write(tmp_path, ""))
    assert config.windows.cpm_days == 30 and config.cpm.hidden == (128, 64)
    assert config.logs == str(tmp_path / "l")
