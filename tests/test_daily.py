"""The daily job's schedule, CPM warm start, A-CTR from yesterday and resumability, on a tiny
simulated set (the sizes of tests/test_e2e.py)."""

import dataclasses
import datetime as dt
import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import recorded

from ecdctr.config import load_config
from ecdctr.models.ctr_model import ModelConfig, build_model, transfer_weights
from ecdctr.spec.feature_spec import feature_diff, load_spec
from pipelines import daily, steps, tpm_notes
from pipelines.daily import run_daily

START = dt.date(2026, 1, 1)
DAYS = 12  # 2026-01-01 (Thursday) .. 2026-01-12 (Monday): conftest's world
SPEC = os.path.abspath("features/default.yaml")
BASE = ("windows: {tpm_days: 30, cpm_days: 5, actr_days: 5}\ntransfer: {tpm_snapshots: 3}\n"
        "model: {hidden: [16, 8], multi_domain: adasparse}\n"
        "gate: {max_auc_drop: 0.2}\n"
        "tpm: {hidden: [8], batch_size: 256, max_epochs: 2}\ncpm: {batch_size: 256, max_epochs: 2}\n"
        "actr: {batch_size: 64, max_epochs: 2}\n")


@pytest.fixture(scope="module")
def logs(world):
    return Path(world)


def _config(folder, logs, name="config", spec=SPEC, extra=""):
    path = folder / f"{name}.yaml"
    path.write_text(f"spec: {spec}\nlogs: {logs}\nwork: work\nexport: export\n{BASE}{extra}")
    return str(path)


# -- warm starts, in process (after the first day the export step, covered by test_e2e, is ----
# -- left out for speed) ------------------------------------------------------------------------

WEEKLY = "schedule: {tpm: monthly, cpm: weekly}\n"


@pytest.fixture(scope="module")
def friday(logs, tmp_path_factory):
    """Fri 01-09 on the default spec with weekly CPMs, exported, in a folder three_days goes
    on in; and a copy of that folder as the day left it, which tests copy in turn."""
    root = tmp_path_factory.mktemp("daily-warm")
    weekly = _config(root, logs, "weekly", extra=WEEKLY)
    with recorded() as records:
        report = run_daily(load_config(weekly), dt.date(2026, 1, 9))
    left = tmp_path_factory.mktemp("daily-friday")
    for folder in ("work", "export"):
        shutil.copytree(root / folder, left / folder)
    return root, weekly, (report, [r.getMessage() for r in records]), left


@pytest.fixture(scope="module")
def three_days(friday, logs):
    """Fri 01-09 (friday's) and Sat 01-10 on the default spec with weekly CPMs; Sun 01-11 with
    a changed spec (gender's dim changed, brand removed, category_hash added) and daily CPMs."""
    root, weekly, first, _ = friday
    spec = yaml.safe_load(open(SPEC))
    spec["features"]["gender"]["dim"] = 6
    del spec["features"]["brand"]
    spec["features"]["category_hash"] = {"column": "category", "kind": "categorical",
                                         "hash_buckets": 50, "dim": 4}
    changed = root / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec))
    daily_cpm = _config(root, logs, "daily", spec=str(changed), extra="schedule: {cpm: daily}\n")
    patch = pytest.MonkeyPatch()
    patch.setattr(daily.DailyJob, "export", lambda self, entry, _: entry.update(status="skipped"))
    runs = [first]
    try:
        for day, config in (("2026-01-10", weekly), ("2026-01-11", daily_cpm)):
            with recorded() as records:
                report = run_daily(load_config(config), dt.date.fromisoformat(day))
            runs.append((report, [r.getMessage() for r in records]))
    finally:
        patch.undo()
    return root, runs


def test_first_day_trains_everything_and_re_derives_the_actr(three_days):
    root, runs = three_days
    report, lines = runs[0]
    assert report["status"] == "ok"
    steps = report["steps"]
    assert steps["tpm"]["status"] == "ok" and steps["tpm"]["period"] == "2026-01"
    assert steps["cpm"]["status"] == "ok" and steps["cpm"]["period"] == "2026-01-05"  # Monday
    assert steps["cpm"]["warm_start"] is None and "CPM starts fresh" in "\n".join(lines)
    cpm = str(root / "work" / "models" / "cpm" / "2026-01-05")
    assert steps["actr"]["start"] == f"re-derived from CPM {cpm}"
    assert steps["actr"]["start_reason"] == "no earlier A-CTR checkpoint"
    assert steps["actr"]["transfer"]["variables"]["reset"] > 0  # BatchNorm statistics reset
    meta = json.loads((root / "work" / "models" / "actr" / "2026-01-09" / "meta.json").read_text())
    assert meta["cpm"] == "2026-01-05" and meta["start"] == steps["actr"]["start"]
    assert set(meta["feature_fingerprints"]) == {f.name for f in load_spec(SPEC).features}
    assert (root / "work" / "models" / "actr" / "2026-01-09" / "spec.yaml").exists()


def test_second_day_fine_tunes_from_yesterdays_actr(three_days):
    root, runs = three_days
    report, lines = runs[1]
    steps = report["steps"]
    assert steps["tpm"]["status"] == "skipped" and "monthly period 2026-01" in steps["tpm"]["reason"]
    assert steps["cpm"]["status"] == "skipped" and "weekly period 2026-01-05" in steps["cpm"]["reason"]
    yesterday = str(root / "work" / "models" / "actr" / "2026-01-09")
    assert steps["actr"]["start"] == f"from yesterday's A-CTR {yesterday}"
    transfer = steps["actr"]["transfer"]
    assert transfer["variables"]["reset"] == 0  # BatchNorm kept: the same ad distribution
    assert transfer["variables"]["copied"] > 0 and not transfer["fresh"]
    assert not transfer["new"] and not transfer["changed"] and not transfer["removed"]
    assert not any("output bias shifted" in line for line in lines)  # already calibrated to ads
    assert any(f"A-CTR from yesterday's A-CTR {yesterday}: features new []" in line
               for line in lines)
    # only the ad days yesterday's model has not learned from, not the whole window again: the
    # derived model of 01-09 learned through 01-09 (it held out shares of requests, not a day:
    # the validation share and the evaluation share it was judged on), so the new day alone
    derived = runs[0][0]["steps"]["actr"]
    assert derived["trained_days"][-1] == "2026-01-09"
    assert derived["train"]["validation_days"][-1:] in ([], ["2026-01-09"])
    assert steps["actr"]["trained_days"] == ["2026-01-10"]
    # the A-CTR of D has learned from every ad day through D, less D's evaluation share
    for day, (report, _) in zip(("2026-01-09", "2026-01-10"), runs, strict=False):
        meta = json.loads((root / "work" / "models" / "actr" / day / "meta.json").read_text())
        assert meta["learned_through"] == day and meta["date"] == day
        assert meta["evaluation"] == report["steps"]["actr"]["evaluation"]
        assert meta["evaluation"]["day"] == day and meta["evaluation"]["share"] == 0.2
        assert report["steps"]["actr"]["train"]["evaluation_rows"] == meta["evaluation"]["rows"]
    # for as many epochs as the derived model chose on validation
    assert steps["actr"]["train"]["epochs_run"] == runs[0][0]["steps"]["actr"]["train"]["chosen_epoch"]


def test_spec_change_warm_starts_the_new_cpm_by_fingerprint_diff(three_days):
    root, runs = three_days
    report, lines = runs[2]
    assert report["status"] == "ok"
    cpm = report["steps"]["cpm"]
    assert cpm["status"] == "ok" and cpm["schedule"] == "daily" and cpm["period"] == "2026-01-11"
    warm = cpm["warm_start"]
    assert warm["from"] == str(root / "work" / "models" / "cpm" / "2026-01-05")
    assert warm["new"] == ["category_hash"]
    assert warm["changed"] == ["gender"]
    assert warm["removed"] == ["brand"]
    assert "user_id" in warm["restored"] and "gender" not in warm["restored"]
    assert len(warm["restored"]) == len(load_spec(SPEC).features) - 2
    assert "mlp/dense_0/kernel" in warm["shape_changed"]  # the input width changed
    assert {"emb_gender/embeddings", "emb_category_hash/embeddings"} <= set(warm["fresh"])
    assert warm["variables"]["reset"] == 0 and warm["variables"]["remapped"] > 0
    line = [x for x in lines if x.startswith("CPM warm start from")]
    assert len(line) == 1 and "new ['category_hash'], changed ['gender'], removed ['brand']" in line[0]
    assert any(x.startswith("transfer cpm -> cpm") and "mlp/dense_0/kernel" in x for x in lines)
    meta = json.loads((root / "work" / "models" / "cpm" / "2026-01-11" / "meta.json").read_text())
    assert "category_hash" in meta["feature_fingerprints"] and "brand" not in meta["feature_fingerprints"]


def test_a_new_cpm_makes_the_actr_re_derive(three_days):
    root, runs = three_days
    actr = runs[2][0]["steps"]["actr"]
    assert actr["start"] == f"re-derived from CPM {root / 'work' / 'models' / 'cpm' / '2026-01-11'}"
    assert "landed after CPM 2026-01-05" in actr["start_reason"]
    assert actr["transfer"]["variables"]["reset"] > 0 and not actr["transfer"]["new"]


def test_feature_diff():
    old = {"a": "1", "b": "2", "c": "3"}
    new = {"a": "1", "b": "9", "d": "4"}
    assert feature_diff(old, new) == {"new": ["d"], "changed": ["b"], "removed": ["c"],
                                      "restored": ["a"]}


def test_transfer_keeps_changed_features_fresh_and_can_reset_batchnorm_affine():
    spec = load_spec(SPEC)
    n = 8
    batch = {}
    for f in spec.features:
        if f.kind == "numeric":
            batch[f.name] = tf.constant(np.arange(n, dtype="float32"))
        elif f.kind == "categorical":
            batch[f.name] = tf.constant([f"v{i % 3}" for i in range(n)])
        else:
            batch[f.name] = tf.ragged.constant([["c1"]] * n, dtype=tf.string)
    vocabs = {f.name: ["v0", "v1", "v2"] for f in spec.features if f.uses_vocab}
    tpm = {"user_id": (["v0"], np.ones((1, 2), "float32"))}
    config = ModelConfig(hidden=(4,), batch_size=n)
    source = build_model(spec.features, vocabs, {}, config, batch, tpm, name="source")
    for v in source.trainable_variables:
        v.assign(tf.fill(v.shape, 0.5))
    target = build_model(spec.features, vocabs, {}, config, batch,
                         {"user_id": (["v0"], np.full((1, 2), 7.0, "float32"))}, name="target")
    fresh = target.encoder.embeddings["gender"].embeddings.numpy()
    report = transfer_weights(source, target, fresh_features=["gender"],
                              reset_batchnorm_affine=True)
    np.testing.assert_array_equal(target.encoder.embeddings["gender"].embeddings.numpy(), fresh)
    assert "emb_gender/embeddings" in report["fresh"] and not report["shape_changed"]
    assert (target.encoder.embeddings["age_level"].embeddings.numpy() == 0.5).all()
    assert (target.mlp.norms[0].gamma.numpy() == 1).all() and (target.mlp.norms[0].beta.numpy() == 0).all()
    assert (target.mlp.dense[0].kernel.numpy() == 0.5).all()
    frozen = [v for v in target.tpm.non_trainable_variables if v.dtype == tf.float32]
    assert frozen and all(7.0 in v.numpy() for v in frozen)  # the target's own snapshot stays
    kept = transfer_weights(source, target, reset_batchnorm=False)
    assert (target.mlp.norms[0].gamma.numpy() == 0.5).all() and not kept["reset"]


# -- killed and rerun, as the cron job would be -----------------------------------------------

def _run_cli(config, date, kill_at=None):
    """Runs `python -m ecdctr daily`; with kill_at, SIGKILLs it (and its children) as soon as
    a stderr line contains kill_at. Returns (return code, stderr lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "ecdctr", "daily", f"--config={config}",
                             f"--date={date}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if kill_at and kill_at in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    lines += proc.stderr.read().splitlines(keepends=True)
    proc.wait(timeout=60)
    return proc.returncode, lines


def _leftovers(root):
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if name.endswith(".tmp") or ".tmp-" in name or name.startswith(".staging-"):
                found.append(os.path.join(folder, name))
        if os.path.basename(folder) == ".staging" and dirs + files:
            found.append(folder)
    return found


def test_killed_runs_resume_to_the_same_result(logs, tmp_path, logged):
    config = _config(tmp_path, logs)
    date = "2026-01-12"
    report_file = tmp_path / "work" / "reports" / f"{date}.json"
    code, _ = _run_cli(config, date, kill_at="== cpm ==")
    assert code == -signal.SIGKILL
    partial = json.loads(report_file.read_text())
    assert partial["status"] == "running" and partial["steps"]["cpm"]["status"] == "running"
    assert partial["steps"]["tpm"]["status"] == "ok"
    # the second run resumes after the TPM and is killed while its SavedModel is staged
    code, lines = _run_cli(config, date, kill_at="staged SavedModel in")
    assert code == -signal.SIGKILL
    text = "".join(lines)
    assert "another daily run" not in text  # the kernel released the killed run's lock
    assert "skipping natural 2026-01-11: already built" in text
    staged = [n for n in os.listdir(tmp_path / "export" / "actr") if n.startswith(".staging")]
    assert len(staged) == 1 and not any(n.isdigit() for n in os.listdir(tmp_path / "export" / "actr"))
    code, lines = _run_cli(config, date)
    text = "".join(lines)
    assert code == 0, text[-3000:]
    assert "another daily run" not in text
    report = json.loads(report_file.read_text())
    assert report["status"] == "ok" and report["published"]
    steps = report["steps"]
    assert steps["build"]["partitions_built"] == 0
    assert steps["tpm"]["status"] == steps["cpm"]["status"] == "skipped"
    assert steps["actr"]["resumed"] and steps["actr"]["start"].startswith("re-derived from CPM")
    assert "removing leftovers of an interrupted run" in text and staged[0] in text
    # one version, from this day's checkpoint; nothing half-written left behind
    assert sorted(os.listdir(tmp_path / "export" / "actr")) == ["1"]
    marker = json.loads((tmp_path / "export" / "actr" / "1" / "assets.extra" / "actr.json").read_text())
    checkpoint = json.loads((tmp_path / "work" / "models" / "actr" / date / "meta.json").read_text())
    assert marker["checkpoint_id"] == checkpoint["id"] and marker["gate"]["passed"]
    assert _leftovers(tmp_path / "work") == [] and _leftovers(tmp_path / "export") == []
    assert os.listdir(tmp_path / "work" / "tpm") == ["2026-01"]
    assert os.listdir(tmp_path / "work" / "models" / "cpm") == ["2026-01-12"]
    # every built day holds its rows once
    for source in ("natural", "ad"):
        folders = sorted(os.listdir(tmp_path / "work" / "examples" / source))
        assert folders == [f"date={START + dt.timedelta(days=i)}" for i in range(DAYS)]
        for folder in folders:
            day = folder[len("date="):]
            stats = json.loads((tmp_path / "work" / "stats" / source / f"{day}.json").read_text())
            files = tf.io.gfile.glob(str(tmp_path / "work" / "examples" / source / folder / "*.gz"))
            ids = [tf.train.Example.FromString(r.numpy()).features.feature["request_id"]
                   .bytes_list.value[0]
                   for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
            assert len(ids) == len(set(ids)) == stats["rows_written"] > 0
    with gzip.open(logs / "ad" / f"date={date}" / "part-00000.jsonl.gz", "rt") as f:
        assert sum(1 for _ in f) == json.loads(
            (tmp_path / "work" / "stats" / "ad" / f"{date}.json").read_text())["rows_read"]
    # a rerun of a finished day does nothing
    logged.clear()
    assert run_daily(load_config(config), dt.date.fromisoformat(date)) == {
        **report, "outcome": "done"}
    assert "nothing to do" in logged.messages[0]
    assert sorted(os.listdir(tmp_path / "export" / "actr")) == ["1"]


def test_a_failed_cpm_degrades_the_day_and_the_actr_uses_the_newest_cpm(friday, logs, tmp_path,
                                                                       logged, monkeypatch):
    config = load_config(_config(tmp_path, logs, extra=WEEKLY))
    _, _, (first, _), left = friday  # run_daily(config, 2026-01-09), in a copy of its folders
    for folder in ("work", "export"):
        shutil.copytree(left / folder, tmp_path / folder)
    assert first["outcome"] == "published"
    train_ctr = steps.train_ctr

    def full_disk(*args, kind, **kwargs):  # the CPM's fit fails (a damaged artifact no longer
        if kind == "cpm":                   # does: it is left out, see test_artifacts)
            raise OSError(28, "No space left on device")
        return train_ctr(*args, kind=kind, **kwargs)

    monkeypatch.setattr(steps, "train_ctr", full_disk)
    report = run_daily(config, dt.date(2026, 1, 12))  # a new week: CPM due
    assert report["steps"]["cpm"]["status"] == "failed"
    assert report["status"] == "ok" and report["published"] and report["outcome"] == "degraded"
    assert report["degraded"] and report["degraded"][0].startswith("cpm failed")
    actr = report["steps"]["actr"]  # from yesterday's A-CTR, which descends from the newest CPM
    assert actr["status"] == "ok" and "newest CPM 2026-01-05" in actr["start_reason"]
    assert daily.OUTCOMES["degraded"] == 5
    assert any(r.levelno == logging.ERROR and r.getMessage().startswith("cpm failed")
               for r in logged.records)
    # the first day's version served through the second, and is scored on its traffic
    assert report["served"]["version"] == 1 and report["steps"]["watch"]["status"] == "ok"


def test_damaged_shards_and_snapshot_are_named_and_made_again_and_the_day_publishes(
        friday, logs, tmp_path, logged):
    """Friday's folders with an ad shard of the A-CTR window truncated, a natural shard of the
    CPM window garbled (same size) and the month's TPM snapshot's user table truncated: the
    build rebuilds both days from their logs, the TPM retrains the snapshot, and Monday
    publishes."""
    config = load_config(_config(tmp_path, logs, extra=WEEKLY))
    *_, left = friday
    for folder in ("work", "export"):
        shutil.copytree(left / folder, tmp_path / folder)
    work = tmp_path / "work"
    (ad,) = (work / "examples" / "ad" / "date=2026-01-08").glob("*.tfrecord.gz")
    os.truncate(ad, 3000)
    (natural,) = (work / "examples" / "natural" / "date=2026-01-09").glob("*.tfrecord.gz")
    natural.write_bytes(natural.read_bytes()[:100] + bytes(natural.stat().st_size - 100))
    table = work / "tpm" / "2026-01" / "user.npy"
    os.truncate(table, table.stat().st_size // 2)
    report = run_daily(config, dt.date(2026, 1, 12))
    assert report["outcome"] == "published", report
    said = logged.messages
    assert any(m.startswith(f"rebuilding ad 2026-01-08 from its logs: {ad}: 3,000 bytes, ")
               and m.endswith("written (truncated)") for m in said)
    assert any(m.startswith(f"rebuilding natural 2026-01-09 from its logs: {natural}: content "
                            f"changed since written") for m in said)
    tpm = report["steps"]["tpm"]
    assert tpm["status"] == "ok" and tpm["damaged"].startswith(f"{table}: ")
    assert "(truncated)" in tpm["damaged"]
    assert any(m.startswith(f"{table}: ") and "is damaged; it is taken as missing" in m for m in said)
    assert report["steps"]["cpm"]["status"] == "ok" and "tpm" not in report["steps"]["cpm"]
    assert not any("DataLossError" in m or "Traceback" in m for m in said)


def test_a_damaged_snapshot_is_left_out_of_the_cpm_and_the_report_says_so(friday, logs, tmp_path,
                                                                          logged):
    config = load_config(_config(tmp_path, logs, extra=WEEKLY))
    config = dataclasses.replace(config, transfer=dataclasses.replace(config.transfer,
                                                                      tpm_historical=False))
    *_, left = friday
    shutil.copytree(left / "work", tmp_path / "work")
    snapshot = tmp_path / "work" / "tpm" / "2026-01"
    table = snapshot / "user.npy"
    table.write_bytes(bytes(table.stat().st_size))  # garbage of the same size
    job = daily.DailyJob(config, load_spec(SPEC), dt.date(2026, 1, 12), {"steps": {}})
    entry: dict = {}
    assert job.snapshots_for(dt.date(2026, 1, 7), entry) == []
    assert entry["damaged_snapshots"]["2026-01"].startswith(f"{table}: content changed since written")
    assert entry["tpm"].startswith("configured, but no snapshot: the TPM snapshot(s) 2026-01 are "
                                   f"damaged and left out ({table}: content changed")
    assert any(m.startswith("the CPM reads no TPM snapshot") for m in logged.messages)


def test_a_run_configured_for_the_tpm_that_reads_no_snapshot_says_so(logs, tmp_path, caplog):
    """CPM and A-CTR windows that cover the whole history leave a historical TPM no days:
    the CPM's and the A-CTR's report entries and a warning line say so."""
    config = load_config(_config(tmp_path, logs))  # transfer.tpm_snapshots: 3, historical
    date = dt.date(2026, 1, 12)
    report = {"steps": {}}
    job = daily.DailyJob(config, load_spec(SPEC), date, report)
    cpm_entry: dict = {}
    with caplog.at_level(logging.INFO):
        assert job.snapshots_for(dt.date(2026, 1, 1), cpm_entry) == []
    assert cpm_entry["tpm"].startswith("configured, but no snapshot: no TPM snapshot was trained")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("the CPM reads no TPM snapshot") for m in warned), warned
    actr_entry: dict = {}
    with caplog.at_level(logging.INFO):
        job.note_missing_tpm(actr_entry, SimpleNamespace(folder="work/models/cpm/2026-01-12",
                                                         meta={"tpm_snapshots": []}))
    assert actr_entry["tpm"] == ("configured, but no snapshot: its CPM "
                                 "work/models/cpm/2026-01-12 read none")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("the A-CTR reads no TPM snapshot") for m in warned), warned
    job.note_missing_tpm(actr_entry := {}, SimpleNamespace(folder="c", meta={
        "tpm_snapshots": [{"name": "2026-01"}]}))
    assert "tpm" not in actr_entry
    usable = [("2026-01", {"window": ["2025-12-01", "2026-01-05"]})]
    assert "windows that cover the whole history" in tpm_notes.no_snapshot_reason(
        usable, dt.date(2026, 1, 1), historical=True, chosen=0)
