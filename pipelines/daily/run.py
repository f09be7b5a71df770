"""run_daily: one daily run of a date: its report, its lock, its alert, around DailyJob."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

from ecdctr.config import RunConfig
from ecdctr.io import lock as file_lock
from ecdctr.io import storage
from ecdctr.io.jsonio import write_json
from ecdctr.spec.feature_spec import load_spec
from ecdctr.training.distribute import create, serve
from pipelines.daily.job import DailyJob
from pipelines.daily.report import (
    ALERT_ON,
    alert_unreported,
    finished_report,
    outcome,
    report_path,
    send_alert,
    tracked,
)

logger = logging.getLogger(__name__)


def work_lock(path: str) -> contextlib.AbstractContextManager[None]:
    """Refuses a second daily run of the same work folder while one runs (ecdctr.io.lock on
    the config's `lock`, <work>/.daily.lock for a local work folder)."""
    return file_lock.exclusive(path, "another daily run")


def run_daily(config: RunConfig, date: dt.date, force: bool = False) -> dict:
    """Runs every step due for `date` and writes <work>/reports/<date>.json. A day whose
    report says ok is not run again unless `force`; a day whose run was killed resumes."""
    distribution = create(config.distribute, config.work)  # first: before any TF op
    if distribution is not None and not distribution.runs_pipeline:
        serve(distribution)  # a parameter_server worker or ps task: until it is stopped
        return {"date": date.isoformat(), "status": "served", "task": str(distribution.task),
                "outcome": "worker"}
    path = report_path(config, date)
    try:
        done = None if force else finished_report(path)
    except storage.StorageError as e:
        alert_unreported(config, date, path, e)
        raise
    if done is not None:
        logger.info(f"{date} is done (report {path} says ok); nothing to do. Use --force to run it again.")
        return {**done, "outcome": "done"}
    spec = load_spec(config.spec)
    report: dict = {"date": date.isoformat(), "config": config.path, "status": "running",
                    "spec_fingerprint": spec.fingerprint, "steps": {}}
    if distribution is not None and not distribution.is_chief:
        report["task"] = str(distribution.task)
        with tracked(report, lambda: logger.info(f"{distribution.task}: {report['status']}")):
            DailyJob(config, spec, date, report, force, distribution).run()
        report["outcome"] = "worker"  # the chief's report and exit code say how the day went
        return report

    def written() -> None:
        report["outcome"] = outcome(report)
        try:
            write_json(path, report)
        except storage.StorageError as e:  # the alert (below), the log and the exit code say it
            report["outcome"], report["error"] = "failed", f"StorageError: {e}"
            logger.error(f"the report could not be written to {path}: {e}")
            raise
        logger.info(f"report written to {path}")

    with work_lock(config.lock or storage.join(config.work, ".daily.lock")):
        try:
            with tracked(report, written):
                DailyJob(config, spec, date, report, force, distribution).run()
        finally:
            if report["outcome"] in ALERT_ON:
                send_alert(config, report, path)
    return report
