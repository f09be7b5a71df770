"""The day's report: where it lives, how the run and each of its steps record their status as
they go, what the day came to (its outcome and the exit code `ecdctr daily` gives it) and the
alert a bad day sends."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator

from ecdctr.config import RunConfig
from ecdctr.io import storage
from ecdctr.io.jsonio import DamagedFile, json_safe, read_json_object, write_json
from ecdctr.serving.gate import run_child

logger = logging.getLogger(__name__)


# What a day's run came to, and the exit code `ecdctr daily` gives it (README "Exit codes").
OUTCOMES = {"published": 0, "failed": 1, "rejected": 3, "done": 4, "degraded": 5, "worker": 0}
ALERT_ON = ("failed", "rejected", "degraded")
ALERT_SECONDS = 120
OBSERVING = ("watch",)  # steps that change no model: their failure neither fails nor degrades


class DailyError(RuntimeError):
    """The daily job cannot run for this date; the message says what is missing."""


def report_path(config: RunConfig, date: dt.date) -> str:
    """Where the report of day `date` lives."""
    return storage.join(config.work, "reports", f"{date.isoformat()}.json")


@contextlib.contextmanager
def tracked(entry: dict, done: Callable[[], None]) -> Iterator[None]:
    """Status bookkeeping of the report and of each step: `ok` unless the block set another
    status (e.g. skipped), `failed` with the error if it raised (a TensorFlow error that a
    failing store caused becomes the StorageError naming it); the seconds it took; then
    `done` (write the report, log), whatever happened."""
    started = time.perf_counter()
    try:
        yield
        if entry["status"] == "running":
            entry["status"] = "ok"
    except Exception as e:
        entry["status"] = "failed"
        explained = storage.explain(e)  # a TensorFlow reader's error on a failing store
        entry["error"] = f"{type(explained or e).__name__}: {explained or e}"
        if explained is not None:
            raise explained from e
        raise
    finally:
        entry["seconds"] = round(time.perf_counter() - started, 1)
        done()


class StepRecorder:
    """Records the steps of a run in its report (`report["steps"][name]`), saved to `path` as
    each step starts and ends, so a killed run's report shows how far it got. `path` is None
    for a worker that is not the chief (only the chief's report is written); `degrade` is
    False in a cluster, which fails together (see degradable)."""

    def __init__(self, report: dict, path: str | None, degrade: bool = True):
        self.report, self.path, self.degrade = report, path, degrade

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict]:
        """The entry of step `name` for the block: logged and saved when it starts and ends."""
        entry: dict = {"status": "running"}
        self.report["steps"][name] = entry
        self.save()
        logger.info(f"== {name} ==")

        def done() -> None:
            logger.info(f"== {name}: {entry['status']} in {entry['seconds']}s ==")
            self.save()

        with tracked(entry, done):
            yield entry

    @contextlib.contextmanager
    def degradable(self, name: str) -> Iterator[dict]:
        """A step whose failure is logged and recorded in report["degraded"] rather than
        raised, so the day goes on with the outputs of earlier days."""
        try:
            with self.step(name) as entry:
                yield entry
        except Exception as e:  # noqa: BLE001  (recorded in the report, the day goes on)
            if not self.degrade or isinstance(e, storage.StorageError):
                raise  # a failing store fails the night: the later steps need it too
            reason = f"{name} failed ({type(e).__name__}: {e}); the A-CTR uses the newest earlier output"
            self.report.setdefault("degraded", []).append(reason)
            logger.error(reason)
            self.save()

    @contextlib.contextmanager
    def observing(self, name: str) -> Iterator[dict]:
        """A step that only observes (it changes no model): its failure is logged and recorded
        in its entry, and the day goes on with the same outcome."""
        try:
            with self.step(name) as entry:
                yield entry
        except Exception as e:  # noqa: BLE001  (recorded in the step's entry, the day goes on)
            logger.error(f"{name} failed ({type(e).__name__}: {e}); the day goes on without it")

    def save(self) -> None:
        """The report so far (status "running"): shows how far a killed run got (the chief's)."""
        if self.path is not None:
            write_json(self.path, self.report)


def outcome(report: dict) -> str:
    """published (a new version is served), degraded (published, but the TPM or CPM step
    failed and the A-CTR used earlier outputs), rejected (the gate kept the candidate out),
    failed (a step failed: see the report) or done (nothing was left to do)."""
    if report.get("status") == "failed":
        return "failed"
    if report.get("status") == "ok":
        if not report.get("published"):
            return "rejected"
        return "degraded" if report.get("degraded") else "published"
    return report.get("outcome", "failed")


def send_alert(config: RunConfig, report: dict, path: str, timeout: float = ALERT_SECONDS) -> None:
    """Runs the config's `alert` command (a shell command line) for a failed or rejected day:
    the report on its standard input and ECDCTR_DATE, ECDCTR_OUTCOME, ECDCTR_REPORT (the
    report's path), ECDCTR_ERROR in its environment, in a process group of its own that is
    killed whole at `timeout` seconds. Its own failure is logged, never raised: the day's
    outcome stands."""
    if not config.alert:
        return
    env = {**os.environ, "ECDCTR_DATE": report["date"], "ECDCTR_OUTCOME": report["outcome"],
           "ECDCTR_REPORT": path, "ECDCTR_ERROR": first_error(report)}
    try:
        done = run_child(["/bin/sh", "-c", config.alert], timeout, env=env,
                         stdin=json.dumps(json_safe(report)))
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.error(f"the alert command failed to run ({e})")
        return
    if done.returncode != 0:
        logger.error(f"the alert command exited {done.returncode}: {done.stderr.strip()[-500:]}")
    else:
        logger.info(f"alert sent ({report['outcome']}) by: {config.alert}")


def alert_unreported(config: RunConfig, date: dt.date, path: str, error: Exception) -> None:
    """A run that failed before it had a report to write (its store failing when the last
    report was looked up): the error goes to the log and the alert, from a report made here,
    and the exit code says failed (the caller raises)."""
    logger.error(f"{date} failed before its report could be written to {path}: {error}")
    report = {"date": date.isoformat(), "config": config.path, "status": "failed",
              "outcome": "failed", "error": f"{type(error).__name__}: {error}", "steps": {}}
    send_alert(config, report, path)


def finished_report(path: str) -> dict | None:
    """The day's report at path when it says the day is done (status ok); None when there is
    none, it says otherwise, or it is damaged (a warning names it, and the day runs again)."""
    if not storage.exists(path):
        return None
    try:
        report = read_json_object(path)
    except DamagedFile as e:
        logger.warning(f"{e}: the day is run again")
        return None
    return report if report.get("status") == "ok" else None


def first_error(report: dict) -> str:
    """What went wrong first, for the alert: the first failed step's error, else the run's
    error, the degraded steps or the gate's reasons (at most 1,000 characters each). A failed
    observing step (watch) is not what went wrong with the day's model."""
    for name, step in report.get("steps", {}).items():
        if step.get("status") == "failed" and name not in OBSERVING:
            return f"{name}: {step.get('error', '')}"[:1000]
    return (report.get("error", "")[:1000] or "; ".join(report.get("degraded", []))[:1000]
            or "; ".join(report.get("gate", {}).get("reasons", [])))


def _figure(value: float | None, interval: list | None) -> str:
    if value is None or value != value:  # None or NaN: not defined on these rows
        return "-"
    if not interval or None in interval:
        return f"{value:.4f}"
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def figures_line(figures: dict) -> str:
    """An evaluator's figures in one log line: LogLoss, AUC and GAUC with their 95% intervals
    (`-` where not defined), the calibration ratio (predicted over observed clicks) with its
    interval, and the clicks behind them."""
    return (f"logloss {figures['logloss']:.4f} AUC {_figure(figures['auc'], figures.get('auc_ci'))} "
            f"GAUC {_figure(figures['gauc'], figures.get('gauc_ci'))} over "
            f"{figures['gauc_groups']} users, calibration ratio "
            f"{_figure(figures.get('calibration_ratio'), figures.get('calibration_ci'))} "
            f"({figures['clicks']:,} clicks, CTR {figures['ctr']:.4f}, mean prediction "
            f"{figures['mean_prediction']:.4f})")
