"""What is due on day D (pipelines/daily/schedule.py), from dates and a folder of outputs."""

import datetime as dt
import json

from ecdctr.config import Schedule
from pipelines.daily.model_store import ModelStore
from pipelines.daily.schedule import Due, due, period

THURSDAY = dt.date(2026, 1, 15)


def _store(root, **windows):
    """A model store holding one whole output per name, trained on the window given."""
    for name, window in windows.items():
        (root / name).mkdir(parents=True)
        (root / name / "meta.json").write_text(json.dumps(
            {"kind": "cpm", "model_name": "cpm", "tpm_snapshots": [], "window": window}))
    return ModelStore(str(root))


def test_period_names_the_output_folder_of_the_period_holding_the_day():
    schedule = Schedule()  # TPM monthly from the 1st, CPM weekly from Monday
    assert period(schedule, "tpm", THURSDAY) == "2026-01"
    assert period(schedule, "cpm", THURSDAY) == "2026-01-12"
    assert period(Schedule(cpm_weekday=3), "cpm", THURSDAY) == "2026-01-15"
    assert period(Schedule(cpm_weekday=4), "cpm", THURSDAY) == "2026-01-09"
    assert period(Schedule(tpm_day=20), "tpm", THURSDAY) == "2025-12"  # from 2025-12-20
    assert period(Schedule(tpm="weekly"), "tpm", THURSDAY) == "2026-01-12"
    assert period(Schedule(cpm="monthly"), "cpm", THURSDAY) == "2026-01-01"
    assert period(Schedule(cpm="daily"), "cpm", THURSDAY) == "2026-01-15"
    assert period(Schedule(tpm="once"), "tpm", THURSDAY) is None


def test_a_step_is_due_until_its_period_has_a_whole_output(tmp_path):
    empty = _store(tmp_path / "empty")
    assert due(Schedule(), "cpm", THURSDAY, empty) == Due("weekly", "2026-01-12", "2026-01-12")
    store = _store(tmp_path / "cpm", **{"2026-01-05": ["2025-12-31", "2026-01-04"],
                                        "2026-01-12": ["2026-01-07", "2026-01-11"]})
    skipped = due(Schedule(), "cpm", THURSDAY, store)
    assert skipped.folder is None and skipped.period == "2026-01-12"
    assert skipped.reason == f"{tmp_path / 'cpm' / '2026-01-12'} exists (weekly period 2026-01-12)"
    assert due(Schedule(), "cpm", dt.date(2026, 1, 19), store).folder == "2026-01-19"  # a new week
    (tmp_path / "cpm" / "2026-01-12" / "meta.json").unlink()  # a killed save: not whole
    assert due(Schedule(), "cpm", THURSDAY, store).folder == "2026-01-12"


def test_once_is_due_while_no_output_trained_before_the_day_exists(tmp_path):
    once = Schedule(tpm="once")
    assert due(once, "tpm", THURSDAY, _store(tmp_path / "none")) == Due("once", None, "2026-01-15")
    # an output trained through the day itself does not count: the day stays held out
    later = _store(tmp_path / "later", **{"2026-01-15": ["2025-12-01", "2026-01-15"]})
    assert due(once, "tpm", THURSDAY, later).folder == "2026-01-15"
    store = _store(tmp_path / "tpm", **{"2026-01-02": ["2025-12-01", "2026-01-01"]})
    skipped = due(once, "tpm", THURSDAY, store)
    assert skipped.folder is None and skipped.frequency == "once"
    assert skipped.reason == f"{tmp_path / 'tpm' / '2026-01-02'} exists (schedule once)"
