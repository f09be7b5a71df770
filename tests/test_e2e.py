"""End to end on a tiny simulated set: simulate -> daily (build, TPM, CPM, A-CTR, export) -> predict.
One daily run (`run`) is shared by the tests that only read it; a test that runs the job again
or changes what the run left works on its own copy (`run_copy`)."""

import datetime as dt
import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import recorded

from ecdctr.cli.main import main
from ecdctr.config import load_config
from ecdctr.evaluation import history
from ecdctr.io.lock import Busy
from ecdctr.serving.export import WARMUP_FILE, describe_versions, read_warmup
from pipelines.daily import DailyError, run_daily, work_lock
from pipelines.daily.publish import operational_reasons

DATE = dt.date(2026, 1, 12)


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    """The daily run of DATE on conftest's world, linked in as root/logs for the tests to read
    (the config names the world itself: a copy of root builds nothing again). Read only."""
    root = tmp_path_factory.mktemp("e2e")
    (root / "logs").symlink_to(world, target_is_directory=True)
    config = root / "config.yaml"
    config.write_text(
        f"spec: {os.path.abspath('features/default.yaml')}\nlogs: {world}\nwork: work\nexport: export\n"
        "windows: {tpm_days: 30, cpm_days: 5, actr_days: 5}\ntransfer: {tpm_snapshots: 3}\n"
        "model: {hidden: [16, 8], multi_domain: adasparse}\n"
        "gate: {max_auc_drop: 0.2}\n"
        "tpm: {hidden: [8], batch_size: 256, max_epochs: 2}\ncpm: {batch_size: 256, max_epochs: 2}\n"
        "actr: {batch_size: 64, max_epochs: 2}\n")
    with recorded() as records:
        report = run_daily(load_config(str(config)), DATE)
    return root, config, report, [r.getMessage() for r in records]


@pytest.fixture
def run_copy(run, tmp_path):
    """The run's folder (config, logs link, work, export) copied for a test that changes it."""
    root, config, report, lines = run
    copy = tmp_path / "e2e"
    shutil.copytree(root, copy, symlinks=True)
    return copy, copy / config.name, report, lines


def test_daily_runs_every_step_and_writes_the_report(run):
    root, _, report, lines = run
    assert report["status"] == "ok"
    assert [report["steps"][s]["status"] for s in ("build", "tpm", "cpm", "actr")] == ["ok"] * 4
    on_disk = json.loads((root / "work" / "reports" / f"{DATE}.json").read_text())
    m = report["metrics"]
    assert on_disk["metrics"]["auc"] == m["auc"] and on_disk["status"] == "ok"
    # judged on the evaluation share of D's 100 ad rows, which the A-CTR never trained on
    share = report["steps"]["actr"]["evaluation"]
    assert 0 < m["rows"] == share["rows"] < 100 and share["clicks"] == m["clicks"]
    assert report["steps"]["actr"]["metrics"]["cpm"]["rows"] == share["rows"]
    assert 0 < m["logloss"] < 1 and 0 <= m["auc"] <= 1
    if math.isnan(m["gauc"]):  # no user with both classes in a tiny day: null, still valid JSON
        assert on_disk["metrics"]["gauc"] is None
    assert any("TPM snapshot" in line for line in lines)
    assert any("transfer cpm -> actr" in line for line in lines)
    gate = report["gate"]
    assert gate["passed"] and report["published"] and gate["serving"] is None
    assert gate["infra"]["max_abs_diff"] <= 1e-5 and gate["infra"]["warmup_requests"] > 0
    events = tf.io.gfile.glob(str(root / "work" / "tensorboard" / "actr" / str(DATE) / "train" / "*"))
    tags = {v.tag for e in events for event in tf.compat.v1.train.summary_iterator(e)
            for v in event.summary.value}
    assert {"epoch_loss", "epoch_sparsity_0", "epoch_sparsity_1"} <= tags  # AdaSparse per layer
    manifest = json.loads((root / "work" / "tpm" / "2026-01" / "manifest.json").read_text())
    # historical: the TPM window ends where the CPM window (the 5 days before D) begins
    assert manifest["window"] == ["2026-01-01", "2026-01-06"]


def test_export_is_a_versioned_savedmodel_on_serialized_examples(run):
    root, _, report, _ = run
    assert report["export"] == str(root / "export" / "actr" / "1")
    model = tf.saved_model.load(report["export"])
    serve = model.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["examples"]
    files = tf.io.gfile.glob(str(root / "work" / "examples" / "ad" / f"date={DATE}" / "*.gz"))
    examples = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(5)]
    probs = serve(examples=tf.constant(examples))["click_probability"].numpy()
    assert probs.shape == (5,) and ((probs > 0) & (probs < 1)).all()
    empty = tf.train.Example().SerializeToString()  # every feature missing -> spec defaults
    assert math.isfinite(serve(examples=tf.constant([empty]))["click_probability"].numpy()[0])


def test_no_request_or_user_id_of_the_logs_is_in_the_exports_warmup(run):
    root, _, report, _ = run
    ids = {"request_id": set(), "user_id": set(), "item_id": set()}
    for path in (root / "logs").glob("*/date=*/*.jsonl.gz"):
        with gzip.open(path, "rt") as f:
            for line in f:
                row = json.loads(line)
                for column, seen in ids.items():
                    seen.add(str(row[column]))
    pattern = re.compile(rb"[a-z]2026\d{4}-\d{6}")  # the simulator's request ids
    assert ids["request_id"] and all(pattern.fullmatch(r.encode()) for r in ids["request_id"])
    for path in (root / "export" / "actr" / "1").rglob("*"):
        if path.is_file():
            found = {m.decode() for m in pattern.findall(path.read_bytes())} & ids["request_id"]
            assert not found, f"request ids {sorted(found)[:3]} in {path}"
    warmup = read_warmup(os.path.join(report["export"], "assets.extra", WARMUP_FILE))
    values = {v.decode() for r in warmup
              for e in tf.make_ndarray(r.predict_log.request.inputs["examples"])
              for f in tf.train.Example.FromString(e).features.feature.values()
              for v in f.bytes_list.value}
    assert values and not values & (ids["request_id"] | ids["user_id"] | ids["item_id"])


def test_rerun_of_a_finished_day_does_nothing_and_force_reuses_what_exists(run_copy, logged):
    root, config, first, _ = run_copy
    again = run_daily(load_config(str(config)), DATE)
    assert again == json.loads(json.dumps(again)) and again["export"] == first["export"]
    assert any("nothing to do" in line for line in logged.messages)
    assert sorted(os.listdir(root / "export" / "actr"))[:1] == ["1"]
    report = run_daily(load_config(str(config)), DATE, force=True)
    assert report["steps"]["build"]["partitions_built"] == 0
    assert report["steps"]["tpm"]["status"] == "skipped"
    assert report["steps"]["cpm"]["status"] == "skipped"
    assert report["export"].endswith(os.path.join("actr", "2"))
    assert report["gate"]["serving"]["path"].endswith(os.path.join("actr", "1"))
    # the serving version and the candidate are scored on the same share of D, not on all of D
    assert report["gate"]["serving"]["rows"] == report["steps"]["actr"]["evaluation"]["rows"] < 100
    assert report["gate"]["candidate"]["rows"] == report["gate"]["serving"]["rows"]
    assert report["gate"]["serving"]["paired"]["clicks"] == report["metrics"]["clicks"]


def test_a_second_run_on_the_same_work_folder_is_refused(run):
    _, config, _, _ = run
    cfg = load_config(str(config))
    with work_lock(cfg.lock), pytest.raises(Busy, match="another daily run holds"):
        run_daily(cfg, DATE + dt.timedelta(days=1))


def test_predict_prints_one_probability_per_row(run, tmp_path, capsys):
    root, _, report, _ = run
    with gzip.open(root / "logs" / "ad" / f"date={DATE}" / "part-00000.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(3), f, strict=False)]
    rows.append({"user_id": "never-seen", "price": "not a number"})
    path = tmp_path / "rows.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows) + '[1, 2]\n"a string"\n'
    path.write_bytes(text.encode() + b'{"user_id": "caf\xe9"}\n' + (json.dumps(rows[0]) + "\n").encode())
    with pytest.raises(SystemExit) as e:
        main(["predict", f"--model={root / 'export' / 'actr'}", f"--input={path}"])
    out = capsys.readouterr()
    values = out.out.split()
    assert len(values) == 8 and values[3:7] == ["nan"] * 4 and values[7] == values[0]
    assert all(0 < float(v) < 1 for v in values[:3])
    assert "rows.jsonl:4: skipped" in out.err and "'price'" in out.err
    assert "rows.jsonl:5: skipped: expected an object of columns, got list" in out.err
    assert "rows.jsonl:6: skipped" in out.err and "rows.jsonl:7: skipped: byte 16 is not UTF-8" in out.err
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        main(["predict", f"--model={root / 'export' / 'actr'}", f"--input={path}", "--batch_size=0"])
    assert e.value.code == 2 and "'0' is not a positive integer" in capsys.readouterr().err


def test_predict_on_a_corrupt_version_says_so_in_one_line(run, tmp_path, capsys):
    import shutil

    root, _, _, _ = run
    version = tmp_path / "actr" / "1"
    shutil.copytree(root / "export" / "actr" / "1", version)
    data = next((version / "variables").glob("variables.data-*"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(b ^ 0xFF for b in raw[len(raw) // 2: len(raw) // 2 + 64])
    data.write_bytes(bytes(raw))
    path = tmp_path / "rows.jsonl"
    path.write_text('{"user_id": "u1"}\n')
    with pytest.raises(SystemExit) as e:
        main(["predict", f"--model={version}", f"--input={path}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    assert f"error: {version}: the SavedModel cannot be loaded" in err and "Fix:" in err


def test_exit_codes_and_the_alert_command(run_copy, tmp_path, capsys):
    root, config, _, _ = run_copy
    alerted = tmp_path / "alert.json"
    with_alert = root / "alerting.yaml"
    with_alert.write_text(config.read_text() + f"alert: cat > {alerted} && echo $ECDCTR_OUTCOME "
                          f"$ECDCTR_DATE $ECDCTR_REPORT > {alerted}.env\n")
    with pytest.raises(SystemExit) as e:  # the day is done: nothing to do, no alert
        main(["daily", f"--config={with_alert}", f"--date={DATE}"])
    assert e.value.code == 4 and not alerted.exists()
    assert json.loads(capsys.readouterr().out)["outcome"] == "done"
    later = DATE + dt.timedelta(days=2)  # no ad logs of that day (the world ends at D + 1): fails
    with pytest.raises(SystemExit) as e:
        main(["daily", f"--config={with_alert}", f"--date={later}"])
    err = capsys.readouterr().err
    assert e.value.code == 1, err
    assert f"ecdctr daily: error: {later} failed: " in err and "evaluation day" in err
    sent = json.loads(alerted.read_text())
    assert sent["outcome"] == "failed" and sent["date"] == later.isoformat()
    assert sent["steps"]["actr"]["status"] == "failed"
    report = root / "work" / "reports" / f"{later}.json"
    assert alerted.with_suffix(".json.env").read_text().split() == ["failed", later.isoformat(),
                                                                   str(report)]
    assert json.loads(report.read_text())["outcome"] == "failed"


def test_outcomes_map_to_exit_codes():
    from pipelines.daily import OUTCOMES, outcome

    assert outcome({"status": "ok", "published": True}) == "published"
    assert outcome({"status": "ok", "published": False}) == "rejected"
    assert outcome({"status": "failed"}) == "failed"
    assert outcome({"status": "ok", "published": True, "degraded": ["cpm failed"]}) == "degraded"
    assert OUTCOMES == {"published": 0, "failed": 1, "rejected": 3, "done": 4, "degraded": 5,
                        "worker": 0}


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "ecdctr", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "daily" in out.stdout


def test_daily_without_ad_logs_on_the_date_says_what_is_missing(run_copy):
    _, config, _, _ = run_copy
    later = DATE + dt.timedelta(days=2)  # conftest's world ends the day after DATE
    with pytest.raises(DailyError, match=rf"ad traffic of {later} \(the evaluation day\) is not built"):
        run_daily(load_config(str(config)), later)


def test_versions_rollback_and_the_hold_on_the_next_run(run_copy, capsys):
    root, config, _, _ = run_copy
    export = root / "export"
    with pytest.raises(SystemExit) as e:
        main(["versions", f"--export={export}"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and f"{DATE}" in out and "served (highest)" in out
    with pytest.raises(SystemExit) as e:
        main(["rollback", f"--export={export}", "--to=7"])
    assert e.value.code == 2 and "no published version 7" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["rollback", f"--export={export}", "--to=1"])
    assert e.value.code == 0
    with pytest.raises(SystemExit):
        main(["versions", f"--export={export}", "--json"])
    listed = json.loads(capsys.readouterr().out)
    newest = listed["versions"][-1]
    assert newest["rollback_of"] == 1 and newest["date"] == DATE.isoformat()
    assert listed["hold"]["to"] == 1 and listed["hold"]["version"] == newest["version"]
    # the next run trains and gates, but publishes nothing over the rollback: rejected, exit 3
    with pytest.raises(SystemExit) as e:
        main(["daily", f"--config={config}", f"--date={DATE}", "--force"])
    assert e.value.code == 3
    report = json.loads((root / "work" / "reports" / f"{DATE}.json").read_text())
    assert report["outcome"] == "rejected" and not report["published"]
    assert any("a rollback to version 1" in r and "--release" in r for r in report["gate"]["reasons"])
    served = json.loads(capsys.readouterr().out)
    assert served["outcome"] == "rejected"
    # a hold cut in half fails closed: shown by versions, and the next run is held still
    hold = export / "actr" / "rollback.json"
    hold.write_text(hold.read_text()[:len(hold.read_text()) // 2])
    with pytest.raises(SystemExit):
        main(["versions", f"--export={export}"])
    assert f"rollback hold damaged: {hold}: damaged (not JSON" in capsys.readouterr().out
    # the run above showed that these reasons reject a trained candidate; the damaged hold is one
    reasons = operational_reasons(load_config(str(config)), [])
    assert len(reasons) == 1 and reasons[0].startswith(f"{hold}: damaged (not JSON")
    assert "--release" in reasons[0]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["rollback", f"--export={export}", "--release"])
    assert e.value.code == 0 and not (export / "actr" / "rollback.json").exists()


def test_a_model_that_learned_from_a_drifted_day_is_not_published(run_copy, capsys):
    from ecdctr.data.drift import drift_path

    root, config, _, _ = run_copy
    drifted = DATE - dt.timedelta(days=2)  # learned: a day of the A-CTR's window
    path = drift_path(str(root / "work"), "ad", drifted)
    saved = open(path).read()
    try:
        with open(path, "w") as f:
            json.dump({"warnings": ["gender: collapsed, one token holds 100% of the rows"]}, f)
        with pytest.raises(SystemExit) as e:
            main(["daily", f"--config={config}", f"--date={DATE}", "--force"])
        assert e.value.code == 3
        report = json.loads((root / "work" / "reports" / f"{DATE}.json").read_text())
        assert drifted.isoformat() in report["steps"]["actr"]["trained_days"]
        reason = next(r for r in report["gate"]["reasons"] if "data drift" in r)
        assert "gender: collapsed" in reason and "gate.max_drift is 0" in reason
        assert not report["published"]
    finally:
        with open(path, "w") as f:
            f.write(saved)
        capsys.readouterr()


def test_the_served_version_is_watched_from_the_second_day_and_history_shows_it(run_copy, capsys,
                                                                               tmp_path):
    """The next day's run scores the version serving since the first day on the new day's
    traffic (the first day had none); `ecdctr history` prints, exports and filters the series."""
    root, config, first, _ = run_copy
    work, base = root / "work", root / "export" / "actr"
    assert history.SERVED not in first and first["steps"]["watch"]["status"] == "skipped"
    after = DATE + dt.timedelta(days=1)  # conftest's world holds this next day too
    serving = describe_versions(str(base))[-1]["version"]  # every version is of DATE's runs
    with recorded():
        report = run_daily(load_config(str(config)), after)
    served = report[history.SERVED]
    assert served["version"] == serving and served["path"] == str(base / str(serving))
    assert served["rows"] == 100 and 0 <= served["clicks"] < 100
    assert {"auc", "auc_ci", "gauc", "gauc_ci", "logloss", "calibration_ratio", "calibration_ci",
            "calibration_error", "per_domain_auc", "per_domain_calibration"} <= set(served)
    assert report["steps"]["watch"]["status"] == "ok"
    assert json.loads((work / "reports" / f"{after}.json").read_text())[history.SERVED][
        "version"] == serving
    assert (work / "reports" / "served.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = tf.io.gfile.glob(str(work / "boards" / "served" / "events.out.tfevents.*"))
    steps = {(v.tag, e.step) for f in events for e in tf.compat.v1.train.summary_iterator(f)
             for v in e.summary.value}
    assert ("served/logloss", after.toordinal()) in steps

    with pytest.raises(SystemExit) as e:
        main(["history", f"--work={work}"])
    table = capsys.readouterr().out.splitlines()
    assert e.value.code == 0 and table[0].split()[:3] == ["date", "version", "auc"]
    assert len(table) == 2 and table[1].split()[:2] == [after.isoformat(), str(serving)]
    png, board = tmp_path / "history.png", tmp_path / "board"
    with pytest.raises(SystemExit) as e:
        main(["history", f"--work={work}", "--json", f"--png={png}", f"--tensorboard={board}"])
    rows = json.loads(capsys.readouterr().out)
    assert e.value.code == 0 and [r["date"] for r in rows] == [after.isoformat()]
    assert rows[0]["logloss"] == pytest.approx(served["logloss"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tf.io.gfile.glob(str(board / "events.out.tfevents.*"))
    with pytest.raises(SystemExit) as e:
        main(["history", f"--work={work}", "--json", f"--start={after + dt.timedelta(days=1)}"])
    assert e.value.code == 0 and json.loads(capsys.readouterr().out) == []


def test_a_zero_click_ad_day_publishes_judged_on_what_is_defined(run_copy, world, tmp_path):
    """The next day's ad logs rewritten with no click at all: `daily` still publishes, its gate
    says the AUC was not compared (no click: no AUC) and judged LogLoss, calibration and the
    infra check, and nothing in the report on disk is NaN."""
    root, config, _, _ = run_copy
    after = DATE + dt.timedelta(days=1)
    logs = tmp_path / "logs"
    for source in ("natural", "ad"):
        (logs / source).mkdir(parents=True)
        for day in os.listdir(os.path.join(world, source)):
            if not (source == "ad" and day == f"date={after}"):
                (logs / source / day).symlink_to(os.path.join(world, source, day))
    quiet = logs / "ad" / f"date={after}"
    quiet.mkdir()
    for name in os.listdir(os.path.join(world, "ad", f"date={after}")):
        with gzip.open(os.path.join(world, "ad", f"date={after}", name), "rt") as f:
            rows = [{**json.loads(line), "click": 0} for line in f if line.strip()]
        with gzip.open(quiet / name, "wt") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    assert rows
    config.write_text(config.read_text().replace(f"logs: {world}\n", f"logs: {logs}\n"))
    with recorded():
        report = run_daily(load_config(str(config)), after)
    assert report["outcome"] == "published" and report["published"], report.get("gate")
    checks = report["gate"]["checks"]
    assert not checks["auc"]["ran"] and "0 clicks" in checks["auc"]["why"]
    assert all(checks[name]["ran"] for name in ("logloss", "calibration", "infra"))
    assert report["steps"]["actr"]["metrics"]["actr"]["clicks"] == 0

    def no_nan(text: str) -> float:
        raise AssertionError(f"{text} in the report of {after}")
    json.loads((root / "work" / "reports" / f"{after}.json").read_text(), parse_constant=no_nan)
