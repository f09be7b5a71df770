"""The model folders of one kind (pipelines/daily/model_store.py) and the leftovers of killed
runs (pipelines/daily/leftovers.py), on plain folders."""

import datetime as dt
import json
import os
import subprocess
import sys

from pipelines.daily.leftovers import remove_leftovers
from pipelines.daily.model_store import ModelStore


def _output(root, name, window, **meta):
    (root / name).mkdir(parents=True)
    body = {"kind": "cpm", "model_name": "cpm", "tpm_snapshots": [], "window": window, **meta}
    (root / name / "meta.json").write_text(json.dumps(body))


def test_complete_lists_whole_current_outputs_by_the_last_day_they_learned(tmp_path, logged):
    _output(tmp_path, "2026-01-12", ["2026-01-01", "2026-01-11"])
    _output(tmp_path, "2026-01-05", ["2026-01-01", "2026-01-11"])  # same last day: by name
    _output(tmp_path, "2026-01", ["2025-12-01", "2025-12-31"])
    (tmp_path / "2026-01-13").mkdir()  # no meta.json: a save cut short
    (tmp_path / "notes").mkdir()
    (tmp_path / "2025-12-29").mkdir()  # written before model folders described themselves
    (tmp_path / "2025-12-29" / "meta.json").write_text(json.dumps({"window": ["a", "b"]}))
    store = ModelStore(str(tmp_path))
    assert [name for name, _ in store.complete()] == ["2026-01", "2026-01-05", "2026-01-12"]
    store.complete()
    assert logged.messages == [f"{tmp_path / '2025-12-29'} was written by an older ecdctr and cannot be "
                     f"rebuilt: ignored (retrained when due; delete it to free the disk)"]
    assert store.usable(dt.date(2026, 1, 11)) == [("2026-01", store.complete()[0][1])]
    assert len(store.usable(dt.date(2026, 1, 12))) == 3


def test_prune_keeps_the_newest_and_the_protected(tmp_path, logged):
    for day in range(1, 7):
        _output(tmp_path, f"2026-01-0{day}", [f"2026-01-0{day}", f"2026-01-0{day}"])
    store = ModelStore(str(tmp_path))
    store.prune(keep=2, protect={"2026-01-02"})
    assert sorted(os.listdir(tmp_path)) == ["2026-01-02", "2026-01-05", "2026-01-06"]
    assert logged.messages == [f"removed old {tmp_path / f'2026-01-0{d}'}" for d in (1, 3, 4)]


def test_remove_unfinished_deletes_tmp_folders_and_meta_temp_files(tmp_path, logged):
    _output(tmp_path, "2026-01-05", ["2026-01-01", "2026-01-04"])
    (tmp_path / "2026-01-05" / "meta.json.tmp-123").write_text("{")
    (tmp_path / "2026-01-12.tmp" / "weights").mkdir(parents=True)
    ModelStore(str(tmp_path)).remove_unfinished()
    assert os.listdir(tmp_path) == ["2026-01-05"]
    assert os.listdir(tmp_path / "2026-01-05") == ["meta.json"]
    assert logged.messages == [f"removing leftovers of an interrupted run: {tmp_path / '2026-01-12.tmp'}"]


def test_leftovers_of_dead_processes_go_those_of_live_ones_stay(tmp_path, logged):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(gone.stdout)
    export, reports, backups = tmp_path / "export", tmp_path / "reports", tmp_path / "backup"
    for folder in (export / f".staging-x-{dead}", export / f".staging-x-{os.getpid()}",
                   export / "1", backups / "2026-01-14" / "actr", backups / "2026-01-15" / "actr"):
        folder.mkdir(parents=True)
    reports.mkdir()
    (reports / f"2026-01-15.json.tmp-{dead}").write_text("{")
    (reports / f"2026-01-15.json.tmp-{os.getpid()}").write_text("{")
    (reports / "2026-01-14.json").write_text("{}")
    store = ModelStore(str(tmp_path / "models"))
    remove_leftovers([store], str(export), str(reports), str(backups), dt.date(2026, 1, 15))
    assert sorted(os.listdir(export)) == [".staging-x-" + str(os.getpid()), "1"]
    assert sorted(os.listdir(reports)) == ["2026-01-14.json", f"2026-01-15.json.tmp-{os.getpid()}"]
    assert os.listdir(backups) == ["2026-01-15"]
    assert logged.messages == [
        f"removing the backup of an interrupted run of 2026-01-14: {backups / '2026-01-14'}",
        f"removing leftovers of an interrupted run: {export / f'.staging-x-{dead}'}",
        f"removing leftovers of an interrupted run: {reports / f'2026-01-15.json.tmp-{dead}'}"]


def test_a_damaged_meta_json_is_named_and_its_output_taken_as_missing(tmp_path, logged):
    _output(tmp_path, "2026-01-05", ["2026-01-01", "2026-01-04"])
    for name, text in (("2026-01-06", "[1, 2]"), ("2026-01-07", ""), ("2026-01-08", '{"kind": ')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(text)
    store = ModelStore(str(tmp_path))
    assert [name for name, _ in store.complete()] == ["2026-01-05"]  # no traceback
    assert store.meta("2026-01-06") is None and store.meta("2026-01-05")["kind"] == "cpm"
    warned = [r.getMessage() for r in logged.records if r.levelname == "WARNING"]
    for name, what in (("2026-01-06", "a JSON list, not an object"), ("2026-01-07", "empty"),
                       ("2026-01-08", "not JSON")):
        assert any(m.startswith(f"{tmp_path / name / 'meta.json'}: damaged ({what}")
                   and "taken as missing" in m for m in warned), (name, warned)
