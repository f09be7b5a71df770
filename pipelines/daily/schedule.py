"""What is due on day D. The run config's `schedule` says how often TPM and CPM retrain: a step
is due when its output for D's period (D's month for a monthly TPM, the week holding D for a
weekly CPM, D itself for a daily one) is missing; `once` is due while no output trained before
D exists. The A-CTR is due every day."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ecdctr.config import Schedule
from pipelines.daily.model_store import ModelStore


@dataclass(frozen=True)
class Due:
    """A step's place in the schedule of D. `folder`: the name of the output it must write, or
    None when it is not due (`reason` says which output D's period already has). `frequency`
    and `period` (D's period, None for `once`) go to the report."""

    frequency: str
    period: str | None
    folder: str | None
    reason: str = ""


def period(schedule: Schedule, step: str, date: dt.date) -> str | None:
    """The name of date's period for step ("tpm" or "cpm"): its output folder's name. A
    monthly TPM's is the month (YYYY-MM) its period starts in, every other the period's first
    day; None for `once`."""
    start = schedule.period_start(step, date)
    if start is None:
        return None
    if step == "tpm" and schedule.tpm == "monthly":
        return start.strftime("%Y-%m")
    return start.isoformat()


def due(schedule: Schedule, step: str, date: dt.date, store: ModelStore) -> Due:
    """Whether step must train on date, given the outputs it has in store."""
    frequency = getattr(schedule, step)
    key = period(schedule, step, date)
    if key is None:
        usable = store.usable(date)
        if usable:
            return Due(frequency, key, None, f"{store.path(usable[-1][0])} exists (schedule once)")
        return Due(frequency, key, date.isoformat())
    if any(name == key for name, _ in store.complete()):
        return Due(frequency, key, None, f"{store.path(key)} exists ({frequency} period {key})")
    return Due(frequency, key, key)
