"""Artifacts that prove themselves: a built day's shards, a TPM snapshot's tables, a model
folder's files and the rollback hold are checked before they are trusted; a damaged one is
named and made again (or, for the hold, keeps new versions out). Each kind is damaged three
ways where it applies: truncated, garbage, valid JSON of the wrong shape."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
import tensorflow as tf
from test_build import D1, D2, SPEC, partition, read_examples, read_stats, row, write_jsonl

from ecdctr.data import built_days
from ecdctr.data.datasets import make_dataset, partition_files
from ecdctr.io.jsonio import DamagedFile
from pipelines.build import build


def _built(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two ad days of 40 rows each, built; the first day's one shard."""
    logs, work = tmp_path / "logs", tmp_path / "work"
    for day in (D1, D2):
        write_jsonl(partition(logs, "ad", day) / "a.jsonl",
                    [row(f"{day}-{i}", day, click=i % 3 == 0, user_id=f"u{i}") for i in range(40)])
    build(SPEC, str(logs), str(work))
    (shard,) = (work / "examples" / "ad" / f"date={D1}").glob("*.tfrecord.gz")
    return logs, work, shard


def test_the_build_records_each_shards_size_and_crc32c(tmp_path):
    _, work, shard = _built(tmp_path)
    record = read_stats(work, "ad", D1)["shard_files"][shard.name]
    data = shard.read_bytes()
    import google_crc32c

    assert record == {"size": len(data), "crc32c": google_crc32c.Checksum(data).hexdigest().decode()}
    assert built_days.day_damage(str(work), "ad", D1, content=True) is None


@pytest.mark.parametrize("damage, what", [
    (lambda p: os.truncate(p, p.stat().st_size // 2), "truncated"),
    (lambda p: p.write_bytes(bytes(255 - b for b in p.read_bytes())), "content changed"),
    (lambda p: p.unlink(), "missing")])
def test_a_damaged_shard_is_named_and_its_day_rebuilt_from_its_logs(tmp_path, logged, damage, what):
    logs, work, shard = _built(tmp_path)
    damage(shard)
    if what != "content changed":  # sizes are checked before a window's days are read
        logged.clear()
        assert built_days.sound_days(str(work), "ad", [D1, D2]) == [D2]
        assert logged.messages[0].startswith(f"ad 2024-03-01 left out: {shard}: ")
        assert what in logged.messages[0] and logged.messages[0].endswith(
            "rebuilds ad 2024-03-01 from its logs")
    logged.clear()
    rebuilt = build(SPEC, str(logs), str(work), skip_built=True)
    assert [(r["source"], r["date"]) for r in rebuilt] == [("ad", D1.isoformat())]
    assert any(m.startswith(f"rebuilding ad 2024-03-01 from its logs: {shard}: ") and what in m
               for m in logged.messages), logged.messages
    assert len(read_examples(work, "ad", D1)) == 40
    assert built_days.day_damage(str(work), "ad", D1, content=True) is None


@pytest.mark.parametrize("text", ["", "[1, 2]", '{"shard_files": [1, 2]}'])
def test_a_damaged_stats_file_makes_its_day_rebuilt(tmp_path, logged, text):
    logs, work, _ = _built(tmp_path)
    stats = work / "stats" / "ad" / f"{D1}.json"
    stats.write_text(text)
    assert built_days.day_damage(str(work), "ad", D1).startswith(f"{stats}: damaged")
    rebuilt = build(SPEC, str(logs), str(work), skip_built=True)
    assert [r["date"] for r in rebuilt] == [D1.isoformat()]
    assert "shard_files" in read_stats(work, "ad", D1)


def test_a_day_built_before_shards_were_recorded_is_read_unchecked(tmp_path, logged):
    logs, work, shard = _built(tmp_path)
    for day in (D1, D2):
        stats = work / "stats" / "ad" / f"{day}.json"
        stats.write_text(json.dumps({k: v for k, v in json.loads(stats.read_text()).items()
                                     if k != "shard_files"}))
    assert partition_files(str(work), "ad", [D1]) == [str(shard)]
    logged.clear()
    assert build(SPEC, str(logs), str(work), skip_built=True) == []
    said = [m for m in logged.messages if "before shard sizes and hashes were recorded" in m]
    assert said == ["2 built day(s) (2024-03-01 .. 2024-03-02) were built before shard sizes and "
                    "hashes were recorded: their shards are read unchecked; a build without "
                    "--skip_built over them adds the records"]


def test_a_data_loss_while_reading_names_the_file_and_the_fix(tmp_path):
    _, work, shard = _built(tmp_path)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the content check or TF's CRC sees it
    shard.write_bytes(bytes(data))

    @built_days.names_data_loss
    def read(work: str, parts: list) -> int:
        files = partition_files(work, "ad", [d for _, d in parts])
        return sum(1 for _ in make_dataset(SPEC, files, 8))

    with pytest.raises(DamagedFile) as e:
        read(str(work), [("ad", D1), ("ad", D2)])
    message = str(e.value)
    assert message.startswith(f"{shard}: content changed since written")
    assert "Fix: run `ecdctr daily`" in message
    assert len(message) < 400 and "Traceback" not in message


def test_tf_reports_a_damaged_shard_as_data_loss(tmp_path):
    """The premise of names_data_loss: TensorFlow's own checks (record CRC, gzip) raise
    DataLossError on a damaged shard."""
    _, work, shard = _built(tmp_path)
    os.truncate(shard, shard.stat().st_size - 40)
    with pytest.raises(tf.errors.DataLossError):
        for _ in tf.data.TFRecordDataset([str(shard)], compression_type="GZIP"):
            pass


# -- model folders and TPM snapshots ---------------------------------------------------------

def _folder(root: Path, name: str, last_day: str, **files: bytes) -> Path:
    """A model folder as save_checkpoint leaves it: its files, then meta.json recording them."""
    from ecdctr.training.checkpoint import file_records

    folder = root / name
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    meta = {"kind": "cpm", "model_name": "cpm", "tpm_snapshots": [],
            "window": ["2026-01-01", last_day], "files": file_records(str(folder))}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _snapshot(root: Path, name: str, last_day: str, rows: int = 50) -> Path:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ones((rows, 4), np.float32))
    manifest = {"sha256": "x", "entities": {"user": {"feature": "user_id", "rows": rows, "dim": 4}}}
    return _folder(root, name, last_day, **{
        "manifest.json": json.dumps(manifest).encode(), "user.npy": buffer.getvalue(),
        "user.keys.json": json.dumps([f"u{i}" for i in range(rows)]).encode(),
        "weights/ckpt.index": b"index", "weights/ckpt.data-00000-of-00001": b"w" * 1000})


def _garble(path: Path) -> None:
    path.write_bytes(bytes(255 - b for b in path.read_bytes()))


@pytest.mark.parametrize("damage, what", [
    (lambda f: os.truncate(f / "weights" / "ckpt.data-00000-of-00001", 10), "truncated"),
    (lambda f: (f / "weights" / "ckpt.index").unlink(), "missing"),
    (lambda f: _garble(f / "weights" / "ckpt.data-00000-of-00001"), "content changed"),
    (lambda f: (f / "meta.json").write_text(json.dumps({**json.loads((f / "meta.json").read_text()),
                                                        "files": [1, 2]})), "files is not")])
def test_a_damaged_model_folder_is_named_and_skipped_for_the_previous_one(tmp_path, logged, damage,
                                                                          what):
    from pipelines.daily.model_store import ModelStore

    _snapshot(tmp_path, "2026-01-05", "2026-01-04")
    newest = _snapshot(tmp_path, "2026-01-12", "2026-01-11")
    damage(newest)
    store = ModelStore(str(tmp_path))
    name, _ = store.newest(store.usable(dt.date(2026, 1, 13)))
    assert name == "2026-01-05"
    assert list(store.damaged) == ["2026-01-12"] and what in store.damaged["2026-01-12"]
    warned = [m for m in logged.messages if m.endswith("is taken as missing (the previous one is "
                                                        "used) and made again when due")]
    assert len(warned) == 1 and str(newest) in warned[0] and what in warned[0]
    assert [n for n, _ in store.complete()] == ["2026-01-05"]  # from now on, as missing
    store.saved("2026-01-12")  # made again
    assert "2026-01-12" not in store.damaged


def test_a_folder_written_before_file_records_is_read_unchecked(tmp_path):
    from ecdctr.training.checkpoint import folder_damage
    from pipelines.daily.model_store import ModelStore

    folder = _snapshot(tmp_path, "2026-01-05", "2026-01-04")
    meta = json.loads((folder / "meta.json").read_text())
    del meta["files"]
    (folder / "meta.json").write_text(json.dumps(meta))
    os.truncate(folder / "weights" / "ckpt.index", 1)
    assert folder_damage(str(folder), meta, content=True) is None
    store = ModelStore(str(tmp_path))
    assert store.newest(store.complete())[0] == "2026-01-05"


def _truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("records, damage, what", [
    (True, _truncate_half, r"\d+ bytes, [\d,]+ written \(truncated\)"),
    (True, _garble, "content changed since written"), (False, _truncate_half, "damaged \\(")])
def test_a_damaged_snapshot_table_is_named_never_a_bare_numpy_error(tmp_path, records, damage, what):
    import re

    from ecdctr.training.checkpoint import load_snapshot

    folder = _snapshot(tmp_path, "2026-01", "2026-01-04")
    assert load_snapshot(str(folder)).tables["user_id"][1].shape == (50, 4)
    if not records:  # a snapshot saved before file records: numpy's own check, named
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "files"}))
    damage(folder / "user.npy")
    with pytest.raises(DamagedFile) as e:
        load_snapshot(str(folder))
    assert re.match(re.escape(f"{folder / 'user.npy'}: ") + what, str(e.value)), str(e.value)
    assert str(e.value).count(str(folder / "user.npy")) == 1
    assert str(e.value).endswith(f"TPM snapshot {folder} is damaged. Fix: none needed: `ecdctr "
                                 f"daily` takes it as missing, uses the previous one and retrains "
                                 f"it when due (delete it to free the disk)")


def test_load_checkpoint_refuses_a_folder_whose_files_do_not_match_its_meta(tmp_path):
    from ecdctr.training.checkpoint import load_checkpoint

    folder = _snapshot(tmp_path, "2026-01-05", "2026-01-04")
    os.truncate(folder / "weights" / "ckpt.index", 2)
    with pytest.raises(DamagedFile, match=r"ckpt.index: 2 bytes, 5 written \(truncated\): model folder"):
        load_checkpoint(str(folder))


def test_the_note_of_a_cpm_without_snapshots_names_the_damaged_ones():
    from pipelines import tpm_notes

    reason = tpm_notes.no_snapshot_reason([], dt.date(2026, 1, 5), False, 1,
                                          {"2026-01": "work/tpm/2026-01/user.npy: 3 bytes"})
    assert reason.startswith("the TPM snapshot(s) 2026-01 are damaged and left out "
                             "(work/tpm/2026-01/user.npy: 3 bytes)")


# -- the rollback hold -----------------------------------------------------------------------

HOLDS = [("", "empty"), ('{"to": 3, "vers', "not JSON"), ("[3]", "a JSON list, not an object"),
         ('{"to": "3", "version": 4, "at": "now"}', "not a rollback hold")]


@pytest.mark.parametrize("text, what", HOLDS)
def test_a_damaged_rollback_hold_keeps_new_versions_out_and_says_how_to_fix_it(tmp_path, text, what,
                                                                               logged):
    from types import SimpleNamespace

    from ecdctr.serving.export import held, release
    from pipelines.daily.publish import operational_reasons

    hold = tmp_path / "export" / "actr" / "rollback.json"
    hold.parent.mkdir(parents=True)
    hold.write_text(text)
    with pytest.raises(DamagedFile, match=what):
        held(str(hold.parent))
    config = SimpleNamespace(work=str(tmp_path / "work"), export=str(tmp_path / "export"),
                             gate=SimpleNamespace(max_drift=0))
    (reason,) = operational_reasons(config, [])
    assert reason.startswith(f"{hold}: damaged ({what}") and (
        f"Fix: `ecdctr rollback --export={tmp_path / 'export'} --release`" in reason)
    assert logged.records[-1].levelname == "ERROR" and logged.messages[-1] == reason
    assert release(str(hold.parent))["damaged"].startswith(f"{hold}: damaged")
    assert not hold.exists() and operational_reasons(config, []) == []


def test_a_whole_rollback_hold_still_holds(tmp_path):
    from types import SimpleNamespace

    from pipelines.daily.publish import operational_reasons

    hold = tmp_path / "export" / "actr" / "rollback.json"
    hold.parent.mkdir(parents=True)
    hold.write_text(json.dumps({"to": 3, "version": 5, "at": "2026-01-12T03:00:00+0000"}))
    config = SimpleNamespace(work=str(tmp_path / "work"), export=str(tmp_path / "export"),
                             gate=SimpleNamespace(max_drift=0))
    (reason,) = operational_reasons(config, [])
    assert reason.startswith("a rollback to version 3 (served as version 5) is in force")


# -- an evaluation or validation day without rows ----------------------------------------------

def test_a_day_whose_rows_were_all_quarantined_is_named_before_anything_trains(tmp_path, logged):
    from pipelines.held_out import Evaluation, choose_validation, unjudgeable

    logs, work = tmp_path / "logs", tmp_path / "work"
    write_jsonl(partition(logs, "ad", D1) / "a.jsonl", [row(f"r{i}", D1, click=7) for i in range(5)])
    write_jsonl(partition(logs, "ad", D2) / "a.jsonl",
                [row(f"s{i}", D2, click=i % 2) for i in range(60)])
    build(SPEC, str(logs), str(work))
    said = unjudgeable(str(work), ("ad", D1), Evaluation(0.2, ("ad", D1), 0, 0))
    assert said == (f"ad {D1}, the day the model is judged on, has no rows to judge it on: its 5 "
                    f"rows read were all quarantined (bad_label 5). Fix: see why in "
                    f"{work / 'quarantine' / 'ad' / f'date={D1}'} and fix the day's logs; the next "
                    f"run of the day rebuilds it (the days after it run as usual)")
    assert unjudgeable(str(work), ("ad", D1), None) == said
    assert unjudgeable(str(work), ("ad", D2), None) is None
    assert "its evaluation share (20% of its requests) holds none of its 60 rows" in unjudgeable(
        str(work), ("ad", D2), Evaluation(0.2, ("ad", D2), 0, 0))
    # a fit whose newest day is empty validates on the days before it
    validation = choose_validation(SPEC, str(work), [("ad", D1), ("ad", D2)], 0.5, 1)
    assert validation is not None and validation.days == (("ad", D2),)
    logged.clear()
    assert choose_validation(SPEC, str(work), [("ad", D1)], 0.5, 1) is None
    assert logged.messages == [f"no validation: the held-out 50% of the requests of ad {D1} holds 0 "
                               f"rows and 0 clicks (an AUC needs both classes); the fit runs its "
                               f"epochs without early stopping"]
