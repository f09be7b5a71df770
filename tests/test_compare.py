"""Tests for the compare job: variant names, a tiny end-to-end compare, the report and plots."""

import dataclasses
import datetime as dt
import json
import logging
import os

import pytest
from conftest import run_config

from ecdctr.config import load_config
from ecdctr.data.simulator import SimConfig, simulate
from ecdctr.evaluation import plots
from ecdctr.models.ctr_model import ModelConfig
from ecdctr.spec.feature_spec import load_spec
from pipelines import steps
from pipelines.ablations import Ablations
from pipelines.build import build
from pipelines.compare import parse_variant, run_compare

BASE = ModelConfig()


def test_parse_variant():
    assert parse_variant("dnn", BASE).multi_domain == "none"
    c = parse_variant("dcnv2+adasparse:binarization:0.05-0.15", BASE)
    assert (c.backbone, c.multi_domain, c.adasparse.form) == ("dcnv2", "adasparse", "binarization")
    assert (c.adasparse.r_min, c.adasparse.r_max) == (0.05, 0.15)
    assert c.adasparse.placement == "input"  # as published
    assert parse_variant("dnn+adasparse:scaling:output", BASE).adasparse.placement == "output"
    assert parse_variant("dnn+adasparse", BASE).adasparse.pruner_input == "layer"
    assert parse_variant("dnn+adasparse:domain", BASE).adasparse.pruner_input == "domain"
    assert parse_variant("dnn+star", BASE).multi_domain == "star"


@pytest.mark.parametrize("name, expected", [
    ("mlp", "backbone 'mlp'"), ("dnn+moe", "module 'moe'"), ("dnn+star:fusion", "only adasparse"),
    ("dnn+adasparse:soft", "neither a form"), ("dnn+adasparse:a-b", "band 'a-b'"),
])
def test_bad_variant_names(name, expected):
    with pytest.raises(ValueError, match=expected):
        parse_variant(name, BASE)


def test_pick_domains_similar_and_different():
    keys = ["s1|p0|g0", "s2|p0|g0", "s1|p0|g3", "s3|p1|g2"]
    assert plots.pick_domains(keys) == ["s1|p0|g0", "s1|p0|g3", "s3|p1|g2"]


def test_compare_end_to_end(tmp_path):
    simulate(str(tmp_path / "logs"), dt.date(2026, 1, 1), 5,
             SimConfig(users=600, items=200, new_users_per_day=10, new_items_per_day=5,
                       natural_rows_per_day=1500, seed=5))
    config = run_config(tmp_path, "windows: {cpm_days: 4}\nmodel: {hidden: [16, 8]}\n"
                        "cpm: {batch_size: 256, max_epochs: 2}\n")
    out = tmp_path / "cmp" / "report.json"
    variants = ["dnn", "dnn+adasparse:0.1-0.3", "dnn+adasparse:0.3-0.5", "dnn+star",
                "dcnv2+apg"]
    report = run_compare(load_config(str(config)), dt.date(2026, 1, 5), variants, str(out),
                         plots=str(tmp_path / "plots"))
    on_disk = json.loads(out.read_text())
    assert on_disk["variants"] == variants and len(on_disk["runs"]["dnn"]) == 1
    # each variant validates on the share of requests daily's fits hold out (steps.fit_on)
    held = steps.choose_validation(load_spec(os.path.abspath("features/default.yaml")),
                                   str(tmp_path / "work"),
                                   [("natural", dt.date(2026, 1, d)) for d in range(1, 5)],
                                   0.1, 200)
    for runs in on_disk["runs"].values():
        fit = runs[0]["fit"]
        assert fit["validation_days"] == sorted({d.isoformat() for _, d in held.days})
        assert (fit["validation_rows"], fit["validation_clicks"]) == (held.rows, held.clicks)
    dnn = report["results"]["dnn"]
    assert 0.4 < dnn["auc"]["mean"] < 1 and dnn["auc"]["std"] == 0
    assert dnn["uplifted_domains"]["mean"] == 0.0  # the baseline never beats itself
    assert len(dnn["bins_auc"]) == 5 and sum(b["domains"] for b in report["bins"]) == report["domains"]
    ada = report["results"]["dnn+adasparse:0.1-0.3"]
    assert len(ada["sparsity"]) == 2 and all(0 <= s <= 1 for s in ada["sparsity"])
    assert len(ada["sparsity_bins"]) == 5  # per domain-size bin, per layer (None: no rows)
    assert all(b is None or len(b) == 2 for b in ada["sparsity_bins"])
    star, dnn_tower = report["results"]["dnn+star"], dnn["tower_parameters"]["mean"]
    assert star["tower_parameters"]["mean"] > 10 * dnn_tower  # grows with the domains
    table = (tmp_path / "cmp" / "report.md").read_text()
    assert "| dnn+star |" in table and "bin 5" in table
    assert "| dnn+adasparse:0.1-0.3 | 0.10–0.30 |" in table  # its sparsity by bin
    names = sorted(os.listdir(tmp_path / "plots"))
    assert names == ["auc_lift_by_bin.png", "auc_vs_sparsity_band.png", "masks.png"]


def test_aggregate_over_seeds():
    from pipelines.compare import _aggregate

    def run(auc, sparsity):
        return {"logloss": 0.2, "auc": auc, "gauc": float("nan"), "uplifted_domains": 0.5,
                "examples_per_second": 10, "parameters": 5, "tower_parameters": 3, "train_seconds": 1,
                "bins": [{"auc": auc}], "sparsity": sparsity,
                "sparsity_bins": [sparsity, None]}

    out = _aggregate([run(0.70, [0.1, 0.2]), run(0.74, [0.3, 0.2])])
    assert out["auc"]["mean"] == pytest.approx(0.72) and out["auc"]["std"] == pytest.approx(0.02)
    assert out["gauc"] == {"mean": None, "std": None}
    assert out["sparsity"] == [0.2, 0.2] and out["bins_auc"] == [pytest.approx(0.72)]
    assert out["sparsity_bins"] == [[0.2, 0.2], None]


def test_ablations_on_ad_traffic(tmp_path, logged):
    simulate(str(tmp_path / "logs"), dt.date(2026, 1, 1), 8,
             SimConfig(users=600, items=200, new_users_per_day=10, new_items_per_day=5,
                       natural_rows_per_day=2000, seed=6))
    config = run_config(tmp_path, "windows: {tpm_days: 7, cpm_days: 3, actr_days: 3}\n"
                        "transfer: {tpm_snapshots: 3}\n"
                        "model: {hidden: [16, 8]}\ntpm: {hidden: [8], batch_size: 256, max_epochs: 2}\n"
                        "cpm: {batch_size: 256, max_epochs: 2}\nactr: {batch_size: 64, max_epochs: 2}\n")
    variants = ["ad_only", "finetune", "ecdctr", "ecdctr-daily"]
    report = run_compare(load_config(str(config)), dt.date(2026, 1, 8), variants,
                         str(tmp_path / "ablations.json"), source="ad")
    lines = logged.messages
    assert report["focus_groups"]["natural_users"]["users"] > 0
    assert "returning_users" in report["focus_groups"]
    for name in variants:
        r = report["runs"][name][0]
        assert 0 <= r["auc"] <= 1 and r["natural_users"]["rows"] > 0
    # one TPM per CPM date (01-08 for ecdctr; 01-05, the ad window's first day, for
    # ecdctr-daily), each trained once and shared by the variants that read it
    assert sum(line.startswith("[tpm] training") for line in lines) == 2
    # ecdctr-daily: derived on 01-05..01-06 (validated on a share of their requests, trained on
    # the rest: it has learned through 01-06), then updated on 01-07
    updates = [line for line in lines if line.startswith("[actr] training") and "no validation" in line]
    assert len(updates) == 1 and "on 1 partitions" in updates[0]
    assert "users seen mostly in natural traffic" in (tmp_path / "ablations.md").read_text()


def test_ablations_need_ad_source(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("spec: s\nlogs: l\nwork: w\nexport: e\n")
    with pytest.raises(ValueError, match="use --source=ad"):
        run_compare(load_config(str(config)), dt.date(2026, 1, 8), ["ecdctr"],
                    str(tmp_path / "x.json"), source="natural")


def test_ablation_snapshots_follow_the_tpm_schedule_and_warm_start(tmp_path, logged):
    simulate(str(tmp_path / "logs"), dt.date(2026, 1, 1), 8,
             SimConfig(users=300, items=100, new_users_per_day=5, new_items_per_day=5,
                       natural_rows_per_day=600, seed=7))
    config = run_config(tmp_path, "windows: {tpm_days: 2, cpm_days: 2, actr_days: 2}\n"
                        "tpm: {hidden: [8], batch_size: 256, max_epochs: 1}\n"
                        "schedule: {tpm: daily}\ntransfer: {tpm_snapshots: 3}\n")
    cfg = load_config(str(config))
    build(load_spec(cfg.spec), cfg.logs, cfg.work)
    ablations = Ablations(cfg, load_spec(cfg.spec), dt.date(2026, 1, 8))
    ablations.quiet = False  # every line, not only the fits' progress
    logged.clear()
    snapshots = ablations.snapshots(0, dt.date(2026, 1, 8))
    lines = logged.messages
    # a daily TPM: the snapshots of 01-06, 01-07 and 01-08, each on the 2 days before its
    # CPM window (historical), each warm-started from the one before
    assert [s.name for s in snapshots] == ["tpm-2026-01-06", "tpm-2026-01-07", "tpm-2026-01-08"]
    starts = [x for x in lines if x.startswith("TPM on")]
    assert len(starts) == 3 and "warm start" not in starts[0]
    assert all("warm start from the previous TPM" in x for x in starts[1:])
    cold = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, tpm_warm_start=False,
                                                                 tpm_snapshots=1))
    one = Ablations(cold, load_spec(cfg.spec), dt.date(2026, 1, 8))
    assert [s.name for s in one.snapshots(0, dt.date(2026, 1, 8))] == ["tpm-2026-01-08"]
    # a CPM window that covers the whole history leaves the historical TPM no day: no
    # snapshot, said in a warning (compare then labels the variants WITHOUT TPM)
    whole = dataclasses.replace(cfg, windows=dataclasses.replace(cfg.windows, cpm_days=8))
    logged.clear()
    assert Ablations(whole, load_spec(cfg.spec), dt.date(2026, 1, 8)).snapshots(
        0, dt.date(2026, 1, 8)) == []
    assert any(r.levelno == logging.WARNING and r.getMessage().startswith(
        "the CPM of 2026-01-08 (seed 0) of the E-CDCTR ablations reads no TPM snapshot")
        and "whole history" in r.getMessage() for r in logged.records)


def test_the_table_carries_intervals_clicks_calibration_and_marks_ties():
    from pipelines.compare import _aggregate, markdown_table

    def run(auc, se, ratio):
        return {"logloss": 0.2, "auc": auc, "gauc": 0.6, "uplifted_domains": 0.5,
                "examples_per_second": 10, "parameters": 5, "tower_parameters": 3,
                "train_seconds": 1, "bins": [{"auc": auc}], "clicks": 400, "auc_se": se,
                "gauc_se": 0.02, "calibration_ratio": ratio, "calibration_error": 0.004}

    results = {"dnn": _aggregate([run(0.700, 0.01, 1.05)]),
               "near": _aggregate([run(0.710, 0.01, 0.98)]),  # 0.01 apart, noise 0.028: a tie
               "far": _aggregate([run(0.760, 0.01, 1.40)])}
    report = {"source": "ad", "train_days": ["2026-01-01", "2026-01-07"], "train_rows": 1000,
              "eval_days": ["2026-01-08"], "eval_rows": 9000, "domains": 3, "seeds": 1,
              "results": results, "bins": [{"domains": 3}]}
    table = markdown_table(report)
    assert "(9,000 rows, 400 clicks)" in table
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines()
            if line.startswith("| ") and " ± " in line}  # the main table's rows
    assert rows["dnn"][1] == "0.7000 ± 0.0000 (±0.0196)"
    assert rows["near"][1].endswith(" tie") and not rows["far"][1].endswith(" tie")
    assert rows["near"][2].endswith(" tie")  # equal GAUC
    assert rows["far"][4] == "1.40 / 0.0040"
    assert "WITHOUT TPM" not in table
    results["ecdctr"] = {**results["far"], "tpm_snapshots": 0}
    assert "| ecdctr WITHOUT TPM (no snapshot) |" in markdown_table(report)
    assert "ecdctr ran without a TPM snapshot" in markdown_table(report)
