"""The daily job's report bookkeeping (pipelines/daily/report.py) and a worker's wait for the
chief (pipelines/daily/cluster.py), on plain files."""

import datetime as dt
import json
import logging
import os
import time
import types

import pytest

from pipelines.daily.cluster import ChiefProgress
from pipelines.daily.report import DailyError, StepRecorder, first_error, send_alert

DATE = dt.date(2026, 1, 15)


def test_steps_are_recorded_and_saved_as_they_run(tmp_path, logged):
    path = tmp_path / "report.json"
    report: dict = {"status": "running", "steps": {}}
    record = StepRecorder(report, str(path))
    with record.step("build") as entry:
        assert json.loads(path.read_text())["steps"]["build"] == {"status": "running"}
        entry["partitions_built"] = 3
    with record.step("tpm") as entry:
        entry.update(status="skipped", reason="not due")
    saved = json.loads(path.read_text())
    assert saved["steps"]["build"]["status"] == "ok" and saved["steps"]["build"]["partitions_built"] == 3
    assert saved["steps"]["tpm"]["status"] == "skipped" and "seconds" in saved["steps"]["tpm"]
    lines = logged.messages
    assert lines[0] == "== build ==" and lines[1].startswith("== build: ok in ")


def test_a_degradable_step_that_fails_degrades_the_day_unless_in_a_cluster(tmp_path, logged):
    report: dict = {"status": "running", "steps": {}}
    with StepRecorder(report, None).degradable("cpm"):
        raise OSError("disk full")
    assert report["steps"]["cpm"] == {"status": "failed", "error": "OSError: disk full",
                                      "seconds": report["steps"]["cpm"]["seconds"]}
    assert report["degraded"] == ["cpm failed (OSError: disk full); the A-CTR uses the newest "
                                  "earlier output"]
    last = logged.records[-1]
    assert (last.levelno, last.getMessage()) == (logging.ERROR, report["degraded"][0])
    assert not list(tmp_path.iterdir())  # a worker's recorder writes nothing
    with pytest.raises(OSError), StepRecorder(report, None, degrade=False).degradable("tpm"):
        raise OSError("disk full")


def test_an_observing_step_that_fails_is_recorded_and_the_day_goes_on(caplog):
    report: dict = {"status": "running", "steps": {}}
    with caplog.at_level(logging.INFO), StepRecorder(report, None).observing("watch"):
        raise OSError("bucket unreachable")
    assert report["steps"]["watch"]["status"] == "failed" and "degraded" not in report
    last = caplog.records[-1]
    assert last.levelno == logging.ERROR and last.getMessage() == (
        "watch failed (OSError: bucket unreachable); the day goes on without it")
    # a rejected day's alert names the gate's reasons, not the watch
    report["gate"] = {"reasons": ["auc dropped"]}
    assert first_error(report) == "auc dropped"


def test_first_error_names_the_failed_step_else_the_degraded_steps_or_the_gate():
    steps = {"build": {"status": "ok"}, "cpm": {"status": "failed", "error": "ValueError: x"}}
    assert first_error({"steps": steps}) == "cpm: ValueError: x"
    assert first_error({"steps": {}, "degraded": ["tpm failed", "cpm failed"]}) == "tpm failed; cpm failed"
    assert first_error({"steps": {}, "gate": {"reasons": ["auc dropped"]}}) == "auc dropped"


def _chief(tmp_path, since, seconds=5.0):
    return ChiefProgress(str(tmp_path / "report.json"), "worker:1", DATE, seconds, since, poll_seconds=0.01)


def test_a_worker_waits_for_the_chiefs_report_of_this_run(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"status": "ok", "steps": {"build": {"status": "ok"}}}))
    old = time.time() - 60
    os.utime(path, (old, old))  # the report of an earlier run of the day
    assert _chief(tmp_path, since=time.time()).status() is None
    with pytest.raises(DailyError, match=r"worker:1 waited 0.05s for the chief to finish 2026-01-15"):
        _chief(tmp_path, since=time.time(), seconds=0.05).wait_for_finish()
    chief = _chief(tmp_path, since=old - 1)
    chief.wait_for_build()
    chief.wait_for_finish()
    (tmp_path / "cpm").mkdir()
    (tmp_path / "cpm" / "meta.json").write_text("{}")
    chief.wait_for_save(str(tmp_path / "cpm"))
    path.write_text(json.dumps({"status": "failed", "steps": {"build": {"status": "running"}}}))
    with pytest.raises(DailyError, match="the chief's run of 2026-01-15 failed"):
        chief.wait_for_build()


def test_an_alert_that_times_out_is_killed_with_everything_it_started(tmp_path, caplog):
    pid_file = tmp_path / "sleeper.pid"
    config = types.SimpleNamespace(alert=f"sleep 250 & echo $! > {pid_file}; wait")
    report = {"date": "2026-01-02", "outcome": "failed", "status": "failed", "steps": {}}
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        send_alert(config, report, str(tmp_path / "r.json"), timeout=2)
    assert time.monotonic() - started < 30
    assert any(r.levelname == "ERROR" and r.getMessage().startswith("the alert command failed to run")
               for r in caplog.records), caplog.records
    sleeper = int(pid_file.read_text())
    for _ in range(50):  # the kill is delivered at once; reaping by init may take a moment
        try:
            os.kill(sleeper, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{sleeper}/stat") as stat:
            if stat.read().split()[2] == "Z":
                break
        time.sleep(0.1)
    else:
        pytest.fail(f"the alert's child {sleeper} still runs after the timeout")


def test_a_damaged_report_is_named_and_the_day_runs_again(tmp_path, caplog):
    from pipelines.daily.report import finished_report

    path = tmp_path / "2026-01-02.json"
    assert finished_report(str(path)) is None  # no report: not done
    path.write_text(json.dumps({"status": "ok", "date": "2026-01-02"}))
    assert finished_report(str(path))["date"] == "2026-01-02"
    path.write_text(json.dumps({"status": "failed"}))
    assert finished_report(str(path)) is None
    for text, what in (("", "empty"), ("[]", "a JSON list, not an object"), ('{"st', "not JSON")):
        path.write_text(text)
        with caplog.at_level(logging.INFO):
            assert finished_report(str(path)) is None
        last = caplog.records[-1]
        assert last.levelname == "WARNING" and last.getMessage().startswith(
            f"{path}: damaged ({what}") and last.getMessage().endswith("the day is run again")
