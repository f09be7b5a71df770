"""Tests for `ecdctr spec check` and `ecdctr spec diff` (ecdctr/cli/spec_commands.py)."""

import datetime as dt
import json

import numpy as np
import pytest
import yaml

import ecdctr  # noqa: F401  (before TensorFlow)
from ecdctr.cli import spec_commands as spec_tools
from ecdctr.cli.main import main
from ecdctr.spec.feature_spec import load_spec

DEFAULT = "features/default.yaml"
DAY = dt.date(2024, 1, 2)
TS = int(dt.datetime(2024, 1, 2, 12, tzinfo=dt.UTC).timestamp())


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _spec_file(tmp_path, name, mutate=None):
    with open(DEFAULT) as f:
        doc = yaml.safe_load(f)
    if mutate:
        mutate(doc)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _row(i, **over):
    row = {"request_id": f"r{i}", "ts": TS, "click": i % 2, "user_id": f"u{i}", "item_id": "i1",
           "gender": "f", "age_level": "3", "scenario": "feed", "position": "1",
           "user_segment": "s", "category": "c", "brand": "b", "price": 9.5,
           "hist_categories": ["c", "d"], "session": "x"}  # no city_tier; session is not read
    row.update(over)
    return row


def _write_logs(root, source, day, rows):
    folder = root / source / f"date={day.isoformat()}"
    folder.mkdir(parents=True)
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_check_default_spec_prints_its_roles(capsys):
    code, out, _ = _run(["spec", "check", DEFAULT], capsys)
    assert code == 0
    assert f"fingerprint {load_spec(DEFAULT).fingerprint}" in out
    assert "TPM features: user_id, item_id, category" in out
    assert "domain features: scenario, position, user_segment" in out
    assert "entities: item=item_id, user=user_id" in out


def test_check_logs_counts_quarantined_rows_and_missing_columns(tmp_path, capsys):
    logs = tmp_path / "logs"
    _write_logs(logs, "natural", DAY, [_row(1), _row(2, click="yes"), _row(3), _row(1)])
    _write_logs(logs, "natural", DAY - dt.timedelta(days=1), [_row(9, ts="soon")])  # not sampled
    _write_logs(logs, "ad", DAY, [_row(4)])
    report, status = spec_tools.check(DEFAULT, str(logs), days=1, rows=100)
    natural, ad = report["logs"]["sources"]["natural"], report["logs"]["sources"]["ad"]
    assert status == 1
    assert natural["days"] == [DAY.isoformat()] and natural["rows_sampled"] == 4
    assert natural["rows_quarantined"] == 2
    reasons = natural["quarantine_reasons"]
    assert set(reasons) == {"bad_label", "duplicate_request_id"}
    assert reasons["bad_label"]["examples"][0]["where"].endswith("part-0.jsonl:2")
    assert reasons["duplicate_request_id"]["examples"][0]["where"].endswith("part-0.jsonl:4")
    assert natural["missing_columns"] == {"city_tier": 1.0}
    assert natural["unread_columns"] == ["session"]
    assert ad["rows_sampled"] == 1 and ad["rows_quarantined"] == 0
    code, out, _ = _run(["spec", "check", DEFAULT, f"--logs={logs}", "--days=1"], capsys)
    assert code == 1
    assert "natural: 1 day(s) 2024-01-02, 1 file(s), 4 rows sampled, 2 would be quarantined" in out
    assert "city_tier 100.0% (absent)" in out
    code, _, _ = _run(["spec", "check", DEFAULT, f"--logs={logs}", "--days=1", "--rows=1"], capsys)
    assert code == 0  # the first row of the newest day is fine
    code, out, _ = _run(["spec", "check", DEFAULT, f"--logs={logs}", "--rows=1"], capsys)
    assert code == 1 and "bad_timestamp: 1 row(s)" in out  # the day before is sampled too


def test_check_invalid_spec_is_exit_2_with_every_error(tmp_path, capsys):
    def break_it(doc):
        doc["features"]["gender"]["kind"] = "text"
        doc["features"]["price"]["dim"] = 3

    code, out, err = _run(["spec", "check", _spec_file(tmp_path, "bad.yaml", break_it)], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("ecdctr spec: error: ") and "invalid feature spec" in err
    assert "feature 'gender': 'kind' is 'text'" in err and "feature 'price': 'dim'" in err


def test_diff_identical_specs_is_exit_0(tmp_path, capsys):
    copy = tmp_path / "copy.yaml"
    copy.write_text("# only a comment differs\n" + open(DEFAULT).read())
    code, out, _ = _run(["spec", "diff", DEFAULT, str(copy)], capsys)
    assert code == 0 and "identical in effect" in out


def _changed(doc):
    doc["features"]["gender"]["dim"] = 6  # changed
    del doc["features"]["brand"]  # removed
    doc["features"]["shop_id"] = {"kind": "categorical", "hash_buckets": 50, "dim": 4}  # added
    doc["features"]["category"]["vocab"]["max_size"] = 5  # a TPM feature, not an entity
    doc["features"]["ctr7"] = {"kind": "numeric", "normalize": "zscore"}  # a new z-score column


def test_diff_lists_features_fresh_ones_and_what_retrains(tmp_path, capsys):
    new = _spec_file(tmp_path, "new.yaml", _changed)
    report, status = spec_tools.diff(DEFAULT, new)
    assert status == 1
    status_of = {f["name"]: f["status"] for f in report["features"]}
    assert status_of["gender"] == status_of["category"] == "changed"
    assert status_of["brand"] == "removed" and status_of["shop_id"] == "added"
    assert status_of["user_id"] == "unchanged"
    gender = next(f for f in report["features"] if f["name"] == "gender")
    assert gender["changes"] == {"dim": [4, 6]} and gender["fingerprint_changes"]
    assert sorted(report["warm_start"]["fresh"]) == ["category", "ctr7", "gender", "shop_id"]
    assert report["warm_start"]["removed"] == ["brand"]
    assert report["tpm_snapshots"]["verdict"] == "usable"  # entity tables untouched
    assert "start fresh category" in report["retrain"]["tpm"]
    assert "shop_id, ctr7:" in "".join(report["build"]["reasons"]) and report["build"]["rebuild"]
    assert "z-score column(s) ctr7 take their mean and std" in report["retrain"]["actr"]
    code, out, _ = _run(["spec", "diff", DEFAULT, new, "--json"], capsys)
    assert code == 1 and json.loads(out)["warm_start"]["fresh"] == report["warm_start"]["fresh"]
    code, out, _ = _run(["spec", "diff", DEFAULT, new], capsys)
    assert code == 1 and "changed    gender: dim 4 -> 6" in out and "removed    brand" in out


def _entity_dim(doc):
    doc["features"]["user_id"]["dim"] = 8


def _entity_renamed(doc):
    doc["features"]["uid"] = doc["features"].pop("user_id")
    doc["group_by"] = "uid"


def _dim_only(doc):
    doc["features"]["gender"]["dim"] = 6


@pytest.mark.parametrize("mutate, verdict", [
    (_dim_only, "usable"),
    (_entity_dim, "usable until the TPM retrains, then not with the new snapshots"),
    (_entity_renamed, "not usable"),
])
def test_tpm_snapshot_verdict_follows_the_model_code(tmp_path, mutate, verdict):
    """The verdict is what the CPM's model code does: existing snapshots (tables keyed by the
    old entity features) with the new spec, alone and next to a snapshot of the new spec."""
    from ecdctr.data.datasets import example_batch
    from ecdctr.models.ctr_model import ModelConfig, build_model

    old, new = load_spec(DEFAULT), load_spec(_spec_file(tmp_path, "new.yaml", mutate))
    report = spec_tools.diff(DEFAULT, new.path)[0]["tpm_snapshots"]
    assert report["verdict"] == verdict

    def snapshot(spec):
        return {f.name: (["a"], np.ones((1, f.dim), "float32")) for f in spec.entities.values()}

    def builds(snapshots):
        vocabs = {f.name: ["a"] for f in new.features if f.uses_vocab}
        try:
            build_model(new.features, vocabs, {}, ModelConfig(hidden=(2,)), example_batch(new),
                        snapshots)
        except (KeyError, ValueError):
            return False
        return True

    assert builds([snapshot(old)]) == report["until_tpm_retrains"]
    assert builds([snapshot(old), snapshot(new)]) == report["usable"]


def test_built_days_ignore_the_spec_fingerprint(tmp_path):
    """What the diff says about rebuilding: a day counts as built (skip_built skips it)
    whatever spec built it."""
    from ecdctr.io.layout import built_partitions

    stats = tmp_path / "stats" / "natural"
    stats.mkdir(parents=True)
    (stats / f"{DAY.isoformat()}.json").write_text(json.dumps({"spec_fingerprint": "another"}))
    assert built_partitions(str(tmp_path), "natural") == [DAY]
    dims = spec_tools.diff(DEFAULT, _spec_file(tmp_path, "dims.yaml", _dim_only))[0]
    assert not dims["build"]["rebuild"] and "not compared" in dims["build"]["rule"]
