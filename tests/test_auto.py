"""Tests for the `auto` settings: config validation, the arms, the choice (a tie keeps the
simpler arm) and its evidence in compare's ecdctr-auto."""

import datetime as dt
import json
import os

import pytest
from conftest import run_config

from ecdctr.config import load_config
from ecdctr.data.simulator import SimConfig, simulate
from ecdctr.spec.validation import ConfigError
from pipelines import auto
from pipelines.compare import run_compare

HEAD = "spec: s.yaml\nlogs: l\nwork: w\nexport: e\n"


def _config(tmp_path, body: str):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + body)
    return load_config(str(path))


def test_auto_settings_in_the_config(tmp_path):
    cfg = _config(tmp_path, "transfer: {tpm: auto}\nmodel: {multi_domain: auto}\n")
    assert cfg.auto == ("model.multi_domain", "transfer.tpm")
    assert cfg.actr.multi_domain == cfg.cpm.multi_domain == "none"
    assert [a.name for a in auto.arms(cfg)] == ["no_tpm", "tpm", "no_tpm+adasparse",
                                                 "tpm+adasparse"]
    assert auto.arms(_config(tmp_path, "")) == [auto.Arm(True)]  # nothing auto: one arm
    assert _config(tmp_path, "transfer: {tpm: false}\n").transfer.tpm_snapshots == 0


@pytest.mark.parametrize("body,expected", [
    ("transfer: {tpm: maybe}\n", "transfer.tpm must be true, false or auto"),
    ("transfer: {tpm: auto, tpm_snapshots: 0}\n", "give tpm_snapshots >= 1"),
    ("transfer: {tpm: false, tpm_snapshots: 3}\n", "remove one of them"),
    ("tpm: {multi_domain: auto}\n", "set `model: {multi_domain: auto}`"),
])
def test_bad_auto_settings_are_named(tmp_path, body, expected):
    with pytest.raises(ConfigError, match=expected):
        _config(tmp_path, body)


def _pair(difference: float, variance: float) -> dict:
    return {"auc_difference": difference, "difference_variance": variance}


def test_decide_keeps_the_simpler_arm_on_a_tie():
    names = ["no_tpm", "tpm"]
    chosen, [c] = auto.decide(names, {("tpm", "no_tpm"): _pair(0.01, 0.0001)})  # ±0.0196
    assert chosen == "no_tpm" and not c["better"] and c["interval"][0] < 0 < c["interval"][1]
    chosen, [c] = auto.decide(names, {("tpm", "no_tpm"): _pair(0.03, 0.0001)})
    assert chosen == "tpm" and c["better"] and c["interval"][0] > 0
    # clearly worse, or undefined (no clicks): the simpler arm
    assert auto.decide(names, {("tpm", "no_tpm"): _pair(-0.05, 0.0001)})[0] == "no_tpm"
    assert auto.decide(names, {("tpm", "no_tpm"): _pair(float("nan"), float("nan"))})[0] == "no_tpm"
    # four arms: each replaces the current choice only when clearly better than it
    four = ["no_tpm", "tpm", "no_tpm+adasparse", "tpm+adasparse"]
    pairs = {("tpm", "no_tpm"): _pair(0.03, 0.0001),
             ("no_tpm+adasparse", "tpm"): _pair(0.01, 0.0001),
             ("tpm+adasparse", "tpm"): _pair(0.05, 0.0001)}
    chosen, comparisons = auto.decide(four, pairs)
    assert chosen == "tpm+adasparse"
    assert [c["against"] for c in comparisons] == ["no_tpm", "tpm", "tpm"]


def test_compare_auto_chooses_an_arm_and_records_the_evidence(tmp_path):
    simulate(str(tmp_path / "logs"), dt.date(2026, 1, 1), 8,
             SimConfig(users=400, items=150, new_users_per_day=10, new_items_per_day=5,
                       natural_rows_per_day=1500, seed=6))
    config = run_config(tmp_path, "windows: {tpm_days: 3, cpm_days: 3, actr_days: 3}\n"
                        "transfer: {tpm: auto, tpm_snapshots: 1}\n"
                        "model: {hidden: [16, 8]}\ntpm: {hidden: [8], batch_size: 256, max_epochs: 1}\n"
                        "cpm: {batch_size: 256, max_epochs: 1}\n"
                        "actr: {batch_size: 64, max_epochs: 2, validation_share: 0.5}\n")
    variants = ["ecdctr-no_tpm", "ecdctr", "ecdctr-auto"]
    report = run_compare(load_config(str(config)), dt.date(2026, 1, 8), variants,
                         str(tmp_path / "auto.json"), source="ad")
    run = report["runs"]["ecdctr-auto"][0]
    choice = run["choice"]
    assert choice["settings"] == ["transfer.tpm"] and set(choice["arms"]) == {"no_tpm", "tpm"}
    for figures in choice["arms"].values():
        assert figures["clicks"] > 0 and figures["auc_ci"] is not None
    [comparison] = choice["comparisons"]
    assert comparison["arm"] == "tpm" and comparison["against"] == "no_tpm"
    assert comparison["interval"] is not None and choice["chosen"] in choice["reason"]
    # the kept arm is the very A-CTR of that arm's variant (the same fit, scored the same)
    same = {"no_tpm": "ecdctr-no_tpm", "tpm": "ecdctr"}[choice["chosen"]]
    assert run["auc"] == report["runs"][same][0]["auc"]
    table = (tmp_path / "auto.md").read_text()
    assert "the weekly derivation's choice" in table and "(chosen)" in table


def test_daily_chooses_at_the_weekly_derivation_and_updates_keep_the_arm(world, tmp_path,
                                                                         monkeypatch):
    from pipelines import daily

    config = run_config(tmp_path, "windows: {tpm_days: 1, cpm_days: 2, actr_days: 2}\n"
                        "transfer: {tpm: false}\nmodel: {hidden: [8], multi_domain: auto}\n"
                        "schedule: {tpm: monthly, cpm: weekly}\n"
                        "tpm: {hidden: [8], batch_size: 256, max_epochs: 1}\n"
                        "cpm: {batch_size: 256, max_epochs: 1}\nactr: {batch_size: 128, max_epochs: 1}\n",
                        logs=world)
    monkeypatch.setattr(daily.DailyJob, "export", lambda self, entry, _: entry.update(status="skipped"))
    first = daily.run_daily(load_config(str(config)), dt.date(2026, 1, 9))
    arms = first["steps"]["cpm"]["arms"]
    # the TPM arms are compare's test's (the same code); here the tower's, which change the
    # A-CTR's structure that the update must keep
    assert list(arms) == ["no_tpm", "no_tpm+adasparse"]
    assert all(os.path.isfile(os.path.join(a["folder"], "meta.json")) for a in arms.values())
    choice = first["steps"]["actr"]["choice"]
    assert first["choice"] == choice and set(choice["arms"]) == set(arms)
    assert len(choice["comparisons"]) == 1 and choice["reason"]
    chosen = choice["chosen"]
    assert first["steps"]["actr"]["arm"] == chosen
    saved = json.load(open(os.path.join(first["steps"]["actr"]["checkpoint"], "meta.json")))
    assert saved["arm"]["name"] == chosen and saved["cpm_path"] == arms[chosen]["folder"]
    assert saved["model"]["multi_domain"] == arms[chosen]["multi_domain"]
    # the next day (no new CPM) updates the chosen arm's A-CTR, and says so
    second = daily.run_daily(load_config(str(config)), dt.date(2026, 1, 10))
    actr = second["steps"]["actr"]
    assert "choice" not in second and actr["arm"] == chosen
    assert f"keeps the arm {chosen}" in actr["start_reason"]
    assert actr["start"].startswith("from yesterday's A-CTR")
