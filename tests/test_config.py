"""Tests for the run config loader."""

import datetime as dt
import os

import pytest

from ecdctr.config import Schedule, load_config
from ecdctr.spec.validation import ConfigError


def test_demo_config_resolves_paths_against_its_folder():
    config = load_config("configs/demo.yaml")
    assert config.spec == os.path.abspath("features/default.yaml")
    assert config.work == os.path.abspath("demo/work")
    assert config.windows.tpm_days == 180 and config.windows.actr_days == 14
    assert config.cpm.hidden == config.actr.hidden == (128, 64)  # same structure: transfer by name
    assert config.tpm.hidden == (32,)
    assert config.actr.batch_size == 512 and config.transfer.reset_batchnorm
    assert (config.cpm.batch_size, config.cpm.learning_rate) == (256, 0.003)  # recipe_grid.md
    assert config.cpm.validation_share == 0.1 and config.cpm.validation_min_clicks == 200
    assert config.transfer.tpm_snapshots == 3 and config.transfer.tpm_historical  # measured
    assert not config.transfer.validate_update  # measured: BENCHMARKS 17
    assert config.cpm.multi_domain == config.actr.multi_domain == "none"  # measured: BENCHMARKS 4
    assert config.actr.adasparse.form == "fusion" and config.actr.adasparse.placement == "input"
    assert config.actr.adasparse.pruner_input == "layer"  # as published
    assert config.tpm.multi_domain == "none"


def test_recipe_keys_reach_each_models_config(tmp_path):
    config = load_config(_write(tmp_path, "cpm: {validation_share: 0.2, validation_min_clicks: 50, "
                                          "batch_size: 128, learning_rate: 0.004}\n"
                                          "actr: {validation_share: 0}\n"))
    assert (config.cpm.validation_share, config.cpm.validation_min_clicks) == (0.2, 50)
    assert (config.cpm.batch_size, config.cpm.learning_rate) == (128, 0.004)
    assert config.actr.validation_share == 0.0  # no validation: max_epochs are trained
    assert config.tpm.validation_min_clicks == config.actr.validation_min_clicks > 0


def test_the_actr_of_d_learns_through_d_by_default_and_the_old_scheme_is_a_switch(tmp_path):
    windows = load_config(_write(tmp_path, "")).windows
    assert windows.actr_through_date and windows.evaluation_share == 0.2
    old = load_config(_write(tmp_path, "windows: {actr_through_date: false, evaluation_share: 0.3}\n"
                                       "actr: {validation_share: 0.8}\n")).windows
    assert not old.actr_through_date and old.evaluation_share == 0.3  # nothing of D is held: no clash


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text("spec: s.yaml\nlogs: l\nwork: w\nexport: e\n" + text)
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("windowz: {}\n", "unknown key 'windowz'"),
    ("windows: {tpm_days: 0}\n", "windows.tpm_days must be a positive integer"),
    ("windows: {cpm_weeks: 2}\n", "windows: unknown key 'cpm_weeks'"),
    ("windows: {actr_days: 100000000}\n", "windows.actr_days is 100000000 days; a window is at most"),
    ("model: {hidden: [128, -1]}\n", "model.hidden must be a list of positive layer sizes"),
    ("cpm: {hidden: [8]}\n", "cpm: unknown key 'hidden'"),
    ("actr: {learning_rate: 0}\n", "actr.learning_rate is 0"),
    ("transfer: {reset_batchnorm: maybe}\n", "reset_batchnorm must be true or false"),
    ("beam_args: --runner=X\n", "'beam_args' must be a list"),
    ("model: {multi_domain: moe}\n", "model: model multi_domain 'moe' is not one of"),
    ("model: {adasparse: {form: soft}}\n", "AdaSparseConfig.form must be one of"),
    ("model: {adasparse: {beta2: 1}}\n", "unknown key(s) ['beta2']"),
    ("model: {adasparse: {pruner_input: hidden}}\n", "AdaSparseConfig.pruner_input must be one of"),
    ("transfer: {reset_bn: true}\n", "transfer: unknown key 'reset_bn'"),
    ("transfer: {reset_batchnorm_affine: 1}\n", "reset_batchnorm_affine must be true or false"),
    ("transfer: {validate_update: yes please}\n", "validate_update must be true or false"),
    ("schedule: weekly\n", "'schedule' must be a mapping"),
    ("schedule: {cpm_day: 2}\n", "schedule: unknown key 'cpm_day'"),
    ("schedule: {tpm: hourly}\n", "schedule.tpm is 'hourly'; it must be one of"),
    ("schedule: {cpm: Weekly}\n", "schedule.cpm is 'Weekly'"),
    ("schedule: {cpm_weekday: 7}\n", "schedule.cpm_weekday must be an integer 0-6"),
    ("schedule: {cpm_weekday: true}\n", "schedule.cpm_weekday must be an integer 0-6"),
    ("schedule: {tpm_day: 31}\n", "schedule.tpm_day must be an integer 1-28"),
    ("schedule: {tpm_day: 0}\n", "schedule.tpm_day must be an integer 1-28"),
    ("actr: {validation_share: 1}\n", "actr.validation_share must be a number in [0, 1)"),
    ("cpm: {validation_share: -0.1}\n", "cpm.validation_share must be a number in [0, 1)"),
    ("tpm: {validation_min_clicks: 2.5}\n", "tpm.validation_min_clicks must be an integer >= 0"),
    ("actr: {validation_days: 1}\n", "the validation set is now a share of requests sized by"),
    ("cpm: {batch_size: 0}\n", "cpm.batch_size must be a positive integer"),
    ("windows: {evaluation_share: 0}\n", "windows.evaluation_share must be a number in (0, 1)"),
    ("windows: {evaluation_share: 1}\n", "windows.evaluation_share must be a number in (0, 1)"),
    ("windows: {evaluation_share: half}\n", "windows.evaluation_share must be a number in (0, 1)"),
    ("windows: {actr_through_date: yes please}\n", "actr_through_date must be true or false"),
    ("windows: {evaluation_share: 0.6}\nactr: {validation_share: 0.5}\n",
     "the two shares of day D must not meet"),
])
def test_config_errors_name_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    assert expected in str(e.value) and "c.yaml" in str(e.value)


def test_defaults(tmp_path):
    config = load_config(_write(tmp_path, ""))
    assert config.windows.cpm_days == 30 and config.cpm.hidden == (128, 64)
    assert config.logs == str(tmp_path / "l")
    assert config.schedule == Schedule("monthly", "weekly", 0, 1)
    assert config.transfer.reset_batchnorm and not config.transfer.reset_batchnorm_affine


def test_adasparse_pruner_input_is_read(tmp_path):
    config = load_config(_write(tmp_path, "model: {multi_domain: adasparse, "
                                          "adasparse: {pruner_input: domain, export_form: compacted, "
                                          "ramp_epochs: 0.25, control_rate: 0.1}}\n"))
    assert config.actr.adasparse.pruner_input == config.cpm.adasparse.pruner_input == "domain"
    assert config.actr.adasparse.export_form == "compacted"  # every AdaSparseConfig field is a key
    assert (config.actr.adasparse.ramp_epochs, config.actr.adasparse.control_rate) == (0.25, 0.1)


def test_schedule_and_transfer_keys_are_read(tmp_path):
    config = load_config(_write(tmp_path, "schedule: {tpm: once, cpm: daily, cpm_weekday: 6, "
                                          "tpm_day: 28}\n"
                                          "transfer: {reset_batchnorm_affine: true}\n"))
    assert config.schedule == Schedule("once", "daily", 6, 28)
    assert config.transfer.reset_batchnorm and config.transfer.reset_batchnorm_affine


def test_every_schedule_error_is_listed_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "schedule: {tpm: yearly, cpm_weekday: -1, when: 1}\n"))
    assert "schedule.tpm" in str(e.value) and "cpm_weekday" in str(e.value)
    assert "unknown key 'when'" in str(e.value)


@pytest.mark.parametrize("schedule, step, date, start", [
    (Schedule(), "tpm", "2026-01-12", "2026-01-01"),
    (Schedule(), "cpm", "2026-01-12", "2026-01-12"),  # a Monday
    (Schedule(), "cpm", "2026-01-18", "2026-01-12"),  # the Sunday after
    (Schedule(cpm_weekday=2), "cpm", "2026-01-13", "2026-01-07"),  # weeks start Wednesday
    (Schedule(cpm_weekday=2), "cpm", "2026-01-14", "2026-01-14"),
    (Schedule(tpm_day=15), "tpm", "2026-01-14", "2025-12-15"),  # across the year
    (Schedule(tpm_day=15), "tpm", "2026-01-15", "2026-01-15"),
    (Schedule(tpm="weekly"), "tpm", "2026-01-14", "2026-01-12"),  # TPM weeks start Monday
    (Schedule(cpm="monthly"), "cpm", "2026-02-27", "2026-02-01"),
    (Schedule(cpm="daily"), "cpm", "2026-01-14", "2026-01-14"),
    (Schedule(tpm="once"), "tpm", "2026-01-14", None),
])
def test_period_start(schedule, step, date, start):
    got = schedule.period_start(step, dt.date.fromisoformat(date))
    assert (got and got.isoformat()) == start


def test_a_work_folder_on_an_object_store_needs_a_local_lock(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("spec: s.yaml\nlogs: s3://b/logs\nwork: s3://b/work\nexport: gs://b/export\n")
    with pytest.raises(ConfigError, match="give `lock:` a local file path"):
        load_config(str(path))
    path.write_text(path.read_text() + "lock: locks/daily.lock\n")
    config = load_config(str(path))
    assert (config.logs, config.work, config.export) == ("s3://b/logs", "s3://b/work", "gs://b/export")
    assert config.lock == str(tmp_path / "locks" / "daily.lock")
    path.write_text(path.read_text().replace("lock: locks/daily.lock", "lock: s3://b/lock"))
    with pytest.raises(ConfigError, match="'lock' must be a local file path"):
        load_config(str(path))
    assert load_config(_write(tmp_path, "")).lock == str(tmp_path / "w" / ".daily.lock")


def test_duplicate_keys_are_errors_that_name_the_file_line_and_key(tmp_path):
    path = _write(tmp_path, "gate: {max_auc_drop: 0.2}\nseed: 1\ngate: {keep_versions: 2}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 7, column 1: .*duplicate key 'gate' "
                                          r"\(first on line 5\)"):
        load_config(path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(open("features/default.yaml").read()
                    + "  user_id:\n    kind: categorical\n    dim: 4\n")
    from ecdctr.spec.feature_spec import load_spec

    with pytest.raises(ConfigError, match="duplicate key 'user_id'"):
        load_spec(str(spec))


def test_duplicate_keys_within_one_inline_mapping_are_errors(tmp_path):
    path = _write(tmp_path, "windows: {cpm_days: 5, actr_days: 4, actr_days: 3}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 5, column 38: .*duplicate key "
                                          r"'actr_days' \(first on line 5\)"):
        load_config(path)
    spec = tmp_path / "inline.yaml"
    spec.write_text(open("features/default.yaml").read().replace(
        "vocab: {min_count: 2, max_size: 200000}", "vocab: {min_count: 2, max_size: 200000, max_size: 5}", 1))
    from ecdctr.spec.feature_spec import load_spec

    with pytest.raises(ConfigError, match="duplicate key 'max_size'"):
        load_spec(str(spec))


def test_an_alias_bomb_is_refused_fast_and_small(tmp_path):
    import time

    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 9) + "]")
    path = _write(tmp_path, "\n".join(lines) + "\nseed: *i\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases expand to more than"):
        load_config(path)
    assert time.perf_counter() - started < 2
    small = _write(tmp_path, "x: &w {max_auc_drop: 0.2}\ngate: *w\n")  # a plain alias still works
    with pytest.raises(ConfigError, match="unknown key 'x'"):
        load_config(small)


@pytest.mark.parametrize("content, expected", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a UTF-8 text file"),
    (b"spec: [unclosed\n", "line 2, column 1: invalid YAML"),
    (None, "is a folder, not a YAML file"),
])
def test_unreadable_files_name_the_file(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"c.yaml: .*{expected}"):
        load_config(str(path))


def test_the_production_config_loads_and_says_what_production_needs():
    config = load_config("configs/prod.yaml")
    assert config.work.startswith("s3://") and config.export.startswith("s3://")
    assert config.lock == "/var/lock/ecdctr-daily.lock" and config.alert
    demo = load_config("configs/demo.yaml")
    assert config.cpm == demo.cpm and config.actr == demo.actr and config.tpm == demo.tpm
    assert config.transfer == demo.transfer and config.schedule == demo.schedule


def test_gate_min_clicks_and_logloss_rise_are_read_and_checked(tmp_path):
    config = load_config(_write(tmp_path, "gate: {min_clicks: 50, max_logloss_rise: 0.2}\n"))
    assert config.gate.min_clicks == 50 and config.gate.max_logloss_rise == 0.2
    for bad in ("min_clicks: 1", "min_clicks: 2.5", "max_logloss_rise: -1"):
        with pytest.raises(ConfigError, match=r"gate\.(min_clicks|max_logloss_rise) must be"):
            load_config(_write(tmp_path, f"gate: {{{bad}}}\n"))
