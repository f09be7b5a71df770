"""A worker that is not the chief waits for it: for its build of the days, for each model it
saves, and for it to finish the day. The chief's report of D, written since this run began,
says how far it got; a report that says failed ends the wait."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from ecdctr.io import storage
from ecdctr.io.jsonio import read_json
from ecdctr.training.checkpoint import META
from pipelines.daily.report import DailyError

logger = logging.getLogger(__name__)


class ChiefProgress:
    """What this worker (`task`, as TF_CONFIG names it) sees of the chief's run of `date`: the
    chief's report at `report`, counted once written at or after `since` (a time.time())."""

    def __init__(self, report: str, task: str, date: dt.date, wait_seconds: float, since: float,
                 poll_seconds: float = 1.0):
        self.report, self.task, self.date = report, task, date
        self.wait_seconds, self.since, self.poll_seconds = wait_seconds, since, poll_seconds

    def wait(self, what: str, ready: Callable[[], bool]) -> None:
        """Polls until ready(), at most wait_seconds (distribute.wait_seconds); DailyError when
        the chief's report says failed or the time is up."""
        started = time.perf_counter()
        logger.info(f"{self.task}: waiting for the chief to {what}")
        while not ready():
            if self.status() == "failed":
                raise DailyError(f"the chief's run of {self.date} failed ({self.report}) while "
                                 f"this worker waited for it to {what}")
            if time.perf_counter() - started > self.wait_seconds:
                raise DailyError(f"{self.task} waited {self.wait_seconds}s for the chief to "
                                 f"{what}. Fix: check the chief's log (task chief, or worker 0 "
                                 f"without one); raise distribute.wait_seconds if it is slow.")
            time.sleep(self.poll_seconds)

    def status(self) -> str | None:
        """The status of the chief's report of the day, None until it writes one in this run."""
        if storage.exists(self.report) and storage.mtime(self.report) >= self.since:
            return read_json(self.report).get("status")
        return None

    def wait_for_build(self) -> None:
        """Until the chief's report of the day says its build is done."""

        def built() -> bool:
            try:
                return read_json(self.report)["steps"]["build"]["status"] == "ok"
            except (OSError, ValueError, KeyError, TypeError):
                return False

        self.wait(f"build the days before {self.date} ({self.report} says build ok)", built)

    def wait_for_save(self, folder: str) -> None:
        """Until the chief saved the model folder this worker trained with it."""
        self.wait(f"save {folder}", lambda: storage.exists(storage.join(folder, META)))

    def wait_for_finish(self) -> None:
        """Until the chief's report of the day says ok: a worker that leaves first looks like
        a crash to the cluster's health checks."""
        self.wait(f"finish {self.date}", lambda: self.status() == "ok")
