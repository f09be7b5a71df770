"""Tests of the Beam build job: round trip, bad rows, atomic rebuilds."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import math
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from conftest import recorded

from ecdctr.data.log_partitions import LOG_SUFFIXES
from ecdctr.io import beam_files
from ecdctr.spec.feature_spec import load_spec
from pipelines.build import (
    SLICE_BYTES,
    Day,
    build,
    build_days,
    built_partitions,
    discovery,
    find_days,
    pipeline_runner,
)
from pipelines.build.dofn import BuildDay
from pipelines.build.stats import DayStats

SPEC = load_spec(str(Path(__file__).resolve().parents[1] / "features" / "default.yaml"))
D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)


def ts(day: dt.date, hour: int = 12) -> int:
    return int(dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC).timestamp())


def row(rid: str, day: dt.date, click: int = 0, **extra) -> dict:
    base = {"request_id": rid, "ts": ts(day), "click": click, "user_id": "u1", "item_id": "i1",
            "gender": "f", "age_level": "3", "city_tier": "1", "scenario": "feed",
            "position": "1", "user_segment": "new", "category": "c1", "brand": "b1",
            "price": 9.5, "hist_categories": ["c1", "c2"]}
    base.update(extra)
    return base


def partition(logs: Path, source: str, day: dt.date) -> Path:
    folder = logs / source / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_jsonl(path: Path, rows: list, gz: bool = False) -> None:
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_csv(path: Path, header: list[str], lines: list[list], gz: bool = False) -> None:
    text = ",".join(header) + "\n" + "".join(",".join(map(str, cells)) + "\n" for cells in lines)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())


def csv_cells(r: dict, header: list[str]) -> list[str]:
    return ["|".join(r[c]) if isinstance(r[c], list) else str(r[c]) for c in header]


def read_examples(work: Path, source: str, day: dt.date) -> dict[str, dict]:
    files = sorted(str(p) for p in (work / "examples" / source / f"date={day}").glob("*.tfrecord.gz"))
    desc = {"request_id": tf.io.FixedLenFeature([], tf.string),
            "ts": tf.io.FixedLenFeature([], tf.int64),
            "click": tf.io.FixedLenFeature([], tf.int64),
            "price": tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
            "hist_categories": tf.io.VarLenFeature(tf.string)}
    for col in ("user_id", "item_id", "gender", "age_level", "city_tier", "scenario", "position",
                "user_segment", "category", "brand"):
        desc[col] = tf.io.FixedLenFeature([], tf.string, default_value="")
    out = {}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(100):
        parsed = tf.io.parse_example(batch, desc)
        hist = tf.sparse.to_dense(parsed.pop("hist_categories"), default_value=b"").numpy()
        for i in range(len(batch)):
            values = {k: v[i].numpy() for k, v in parsed.items()}
            values = {k: v.decode() if isinstance(v, bytes) else v.item() for k, v in values.items()}
            values["hist_categories"] = [h.decode() for h in hist[i] if h]
            out[values["request_id"]] = values
    return out


def read_stats(work: Path, source: str, day: dt.date) -> dict:
    return json.loads((work / "stats" / source / f"{day}.json").read_text())


def read_quarantine(work: Path, source: str, day: dt.date) -> list[dict]:
    path = work / "quarantine" / source / f"date={day}" / "part-00000.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_row(example: dict, raw: dict) -> None:
    for key, value in raw.items():
        if key == "price":
            assert example[key] == pytest.approx(float(value))
        elif key == "hist_categories":
            expected = value.split("|") if isinstance(value, str) else value
            assert example[key] == expected
        elif key in ("ts", "click"):
            assert example[key] == int(value)
        else:
            assert example[key] == str(value), key


# ---------------------------------------------------------------- round trip and bad rows

GOOD = {
    ("natural", D1): [row("n1-a", D1, 1), row("n1-b", D1, user_id="u2", hist_categories=["c3"]),
                      row("n1-c", D1, price=2.0, scenario="search"),
                      row("n1-d", D1, 1, user_id=7), row("n1-e", D1)],
    ("natural", D2): [row("n2-a", D2, 1), row("n2-b", D2, hist_categories=["x", "y", "z"])],
    ("ad", D1): [row("a1-a", D1), row("a1-b", D1, 1, price=100.25)],
    ("ad", D2): [row("a2-a", D2, 1), row("a2-b", D2, item_id="i9")],
}
HEADER = ["request_id", "ts", "click", "user_id", "item_id", "gender", "age_level", "city_tier",
          "scenario", "position", "user_segment", "category", "brand", "price", "hist_categories"]


def make_round_trip_logs(logs: Path) -> None:
    n1 = partition(logs, "natural", D1)
    rows = GOOD[("natural", D1)]
    write_jsonl(n1 / "a.jsonl", [rows[0], "", rows[1], "   ", rows[2]])
    write_jsonl(n1 / "b.jsonl.gz", rows[3:], gz=True)
    (n1 / "README.txt").write_text("not a log")
    n2 = partition(logs, "natural", D2)
    write_csv(n2 / "c.csv", HEADER, [csv_cells(r, HEADER) for r in GOOD[("natural", D2)]])
    a1 = partition(logs, "ad", D1)
    pq.write_table(pa.Table.from_pylist(GOOD[("ad", D1)]), a1 / "d.parquet")
    a2 = partition(logs, "ad", D2)
    rows = GOOD[("ad", D2)]
    write_csv(a2 / "e.csv.gz", HEADER, [csv_cells(rows[0], HEADER)], gz=True)
    (a2 / "f.json").write_text(json.dumps([rows[1]]))
    partition(logs, "ad", dt.date(2024, 3, 5))  # a partition folder without log files
    late = partition(logs, "ad", dt.date(2024, 3, 20))  # outside the requested window
    write_jsonl(late / "late.jsonl", [row("late", dt.date(2024, 3, 20))])


def truncated_gzip(path: Path, lines: list[str], keep: int) -> None:
    """Gzips lines, flushed after the first `keep`, and cuts the file a little after that."""
    with open(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb") as gz:
            gz.write("".join(line + "\n" for line in lines[:keep]).encode())
            gz.flush(zlib.Z_SYNC_FLUSH)
            cut = raw.tell()
            gz.write("".join(line + "\n" for line in lines[keep:]).encode())
    data = path.read_bytes()
    path.write_bytes(data[:cut + 3])


BAD_REASONS = {"invalid_json": 1, "not_utf8": 1, "not_an_object": 1, "missing_label": 1,
               "bad_label": 1, "missing_timestamp": 1, "timestamp_outside_partition": 1,
               "wrong_type": 1, "non_finite": 2, "malformed_csv": 1, "truncated_gzip": 1,
               "duplicate_request_id": 2, "unreadable_file": 1}
BAD_GOOD_IDS = {"csv-good", "tr-1", "tr-2", "tr-3", "extra-1", "dup-1", "good-1", "good-2"}


def make_bad_logs(logs: Path) -> None:
    p = partition(logs, "natural", D3)
    ok = row("x", D3)
    write_jsonl(p / "invalid.jsonl", ['{"request_id": "bad-json", "click": '])
    (p / "latin1.jsonl").write_bytes(b'{"request_id": "caf\xe9", "click": 0}\n')
    write_jsonl(p / "array.jsonl", ["[1, 2, 3]"])
    write_jsonl(p / "nolabel.jsonl", [{k: v for k, v in row("nolabel", D3).items() if k != "click"}])
    write_jsonl(p / "label2.jsonl", [row("label2", D3, click=2)])
    write_jsonl(p / "nots.jsonl", [{k: v for k, v in row("nots", D3).items() if k != "ts"}])
    write_jsonl(p / "otherday.jsonl", [row("otherday", D3, ts=ts(D3 + dt.timedelta(days=1)))])
    write_jsonl(p / "textprice.jsonl", [row("textprice", D3, price="cheap")])
    write_jsonl(p / "nanprice.jsonl", [json.dumps(row("nanprice", D3, price=float("nan")))])
    write_jsonl(p / "infprice.jsonl", [json.dumps(row("infprice", D3, price=float("inf")))])
    write_csv(p / "malformed.csv", HEADER, [csv_cells({**ok, "request_id": "csv-good"}, HEADER),
                                            csv_cells({**ok, "request_id": "csv-bad"}, HEADER)
                                            + ["surplus"]])
    (p / "empty.jsonl").write_bytes(b"")
    truncated_gzip(p / "truncated.jsonl.gz",
                   [json.dumps(row(f"tr-{i}", D3)) for i in range(1, 6)], keep=3)
    write_jsonl(p / "extra.jsonl", [row("extra-1", D3, color="red")])
    write_jsonl(p / "dup.jsonl", [row("dup-1", D3, user_id="first"), row("dup-1", D3)])
    write_jsonl(p / "dup2.jsonl", [row("dup-1", D3, user_id="other-file")])
    (p / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    write_jsonl(p / "good.jsonl", [row("good-1", D3, 1), row("good-2", D3)])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    logs, work = root / "logs", root / "work"
    make_round_trip_logs(logs)
    make_bad_logs(logs)
    with recorded() as records:
        results = build(SPEC, str(logs), str(work), end=dt.date(2024, 3, 10))
    return work, results, [r.getMessage() for r in records]


def test_round_trip_examples_equal_input(built):
    work, _, _ = built
    for (source, day), rows in GOOD.items():
        examples = read_examples(work, source, day)
        assert sorted(examples) == sorted(r["request_id"] for r in rows)
        for r in rows:
            assert_same_row(examples[r["request_id"]], r)


def test_round_trip_stats_and_counts(built):
    work, results, messages = built
    assert [(s["source"], s["date"]) for s in results] == [
        ("ad", "2024-03-01"), ("ad", "2024-03-02"), ("natural", "2024-03-01"),
        ("natural", "2024-03-02"), ("natural", "2024-03-03")]
    stats = read_stats(work, "natural", D1)
    assert stats == next(s for s in results if (s["source"], s["date"]) == ("natural", "2024-03-01"))
    assert (stats["rows_read"], stats["rows_written"], stats["rows_quarantined"]) == (5, 5, 0)
    assert stats["blank_lines"] == 2 and stats["clicks"] == 2 and stats["ctr"] == pytest.approx(0.4)
    assert [os.path.basename(f) for f in stats["files"]] == ["a.jsonl", "b.jsonl.gz"]
    assert stats["domains"] == {"feed|1|new": {"rows": 4, "clicks": 2},
                                "search|1|new": {"rows": 1, "clicks": 0}}
    price = stats["numeric"]["price"]
    assert price["count"] == 5 and price["sum"] == pytest.approx(4 * 9.5 + 2.0)
    assert price["sumsq"] == pytest.approx(4 * 9.5**2 + 4.0)
    assert (price["min"], price["max"]) == (2.0, 9.5)
    assert stats["spec_fingerprint"] == SPEC.fingerprint and stats["shards"] == 1
    counts = work / "counts" / "natural" / "date=2024-03-01"
    assert (counts / "user_id.tsv").read_text() == "u1\t3\n7\t1\nu2\t1\n"
    assert (counts / "hist_categories.tsv").read_text() == "c1\t4\nc2\t4\nc3\t1\n"
    assert sorted(p.name for p in counts.iterdir()) == sorted(
        f"{f.name}.tsv" for f in SPEC.features if f.uses_vocab)
    assert not (counts / "brand.tsv").exists()  # hashed, no vocabulary
    hist = (work / "counts" / "natural" / "date=2024-03-02" / "hist_categories.tsv").read_text()
    assert hist == "c1\t1\nc2\t1\nx\t1\ny\t1\nz\t1\n"
    ad = read_stats(work, "ad", D2)
    assert (ad["rows_read"], ad["rows_written"], ad["clicks"]) == (2, 2, 1)
    assert read_quarantine(work, "ad", D2) == []
    assert built_partitions(str(work), "natural") == [D1, D2, D3]
    assert built_partitions(str(work), "ad") == [D1, D2]  # 03-05 has no logs, 03-20 is too late
    log = "\n".join(messages)
    assert "README.txt: not a log file" in log and "holds no log files" in log
    assert "natural 2024-03-03: read 23 = written 8 + quarantined 15" in log
    assert "rows/s" in log and "total: read" in log
    assert not os.listdir(work / ".staging")


def test_bad_rows_are_quarantined_with_reasons(built):
    work, _, _ = built
    stats = read_stats(work, "natural", D3)
    assert stats["quarantine_reasons"] == BAD_REASONS
    assert stats["rows_read"] == 23
    assert stats["rows_read"] == stats["rows_written"] + stats["rows_quarantined"]
    assert stats["rows_quarantined"] == sum(BAD_REASONS.values())
    assert stats["dropped_columns"] == {"color": 1}
    assert [os.path.basename(f) for f in stats["empty_files"]] == ["empty.jsonl"]
    examples = read_examples(work, "natural", D3)
    assert set(examples) == BAD_GOOD_IDS
    assert examples["dup-1"]["user_id"] == "first"  # the smallest (file, line) wins
    records = read_quarantine(work, "natural", D3)
    assert len(records) == stats["rows_quarantined"]
    by_reason = {}
    for r in records:
        assert set(r) == {"source", "date", "file", "line", "reason", "message", "row"}
        by_reason.setdefault(r["reason"], []).append(r)
    (trunc,) = by_reason["truncated_gzip"]
    assert "truncated.jsonl.gz" in trunc["message"] and "after line 3" in trunc["message"]
    (utf8,) = by_reason["not_utf8"]
    assert utf8["row"] == '{"request_id": "caf\\xe9", "click": 0}' and utf8["line"] == 1
    (malformed,) = by_reason["malformed_csv"]
    assert malformed["line"] == 3 and malformed["row"][-1] == "surplus"
    dups = sorted((os.path.basename(r["file"]), r["line"]) for r in by_reason["duplicate_request_id"])
    assert dups == [("dup.jsonl", 2), ("dup2.jsonl", 1)]
    assert '"price": "cheap"' in by_reason["wrong_type"][0]["row"]  # JSON rows keep their text
    for r in records:
        if r["reason"] not in ("truncated_gzip", "unreadable_file"):
            assert r["row"], r
    for result in built[1]:
        assert result["rows_read"] == result["rows_written"] + result["rows_quarantined"]


# ---------------------------------------------------------------- rebuilds


def crash(self, *args):
    raise OSError("disk on fire")


def weighted_bytes(*paths: Path) -> int:
    """The input bytes a day's shard count comes from: stored sizes, .gz ones counted 8x."""
    return sum(p.stat().st_size * (8 if p.name.endswith(".gz") else 1) for p in paths)


def test_rebuild_replaces_a_day_and_skip_built_keeps_it(tmp_path, monkeypatch, logged):
    logs, work = tmp_path / "logs", tmp_path / "work"
    day = partition(logs, "ad", D1)
    write_jsonl(day / "a.jsonl", [row(f"old-{i}", D1, user_id="old") for i in range(4)]
                + ["not json"])
    size = weighted_bytes(day / "a.jsonl")
    first = build(SPEC, str(logs), str(work), sources=["ad"], shard_bytes=size // 3 + 1)
    examples_dir = work / "examples" / "ad" / "date=2024-03-01"
    assert sorted(p.name for p in examples_dir.iterdir()) == [
        f"part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    assert first[0]["rows_written"] == 4 and len(read_examples(work, "ad", D1)) == 4
    assert len(read_quarantine(work, "ad", D1)) == 1

    (day / "a.jsonl").unlink()
    write_jsonl(day / "b.jsonl", [row("new-1", D1, user_id="new")])
    before = read_stats(work, "ad", D1)
    with monkeypatch.context() as patch:  # a crash inside the pipeline publishes nothing
        patch.setattr(DayStats, "write_counts", crash)
        with pytest.raises(Exception, match="disk on fire"):
            build(SPEC, str(logs), str(work), sources=["ad"])
    assert read_stats(work, "ad", D1) == before and len(read_examples(work, "ad", D1)) == 4
    assert len(os.listdir(work / ".staging")) == 1  # the crashed run's junk
    logged.clear()
    second = build(SPEC, str(logs), str(work), sources=["ad"])
    assert sorted(p.name for p in examples_dir.iterdir()) == ["part-00000-of-00001.tfrecord.gz"]
    assert list(read_examples(work, "ad", D1)) == ["new-1"]
    assert read_quarantine(work, "ad", D1) == []
    assert (work / "counts" / "ad" / "date=2024-03-01" / "user_id.tsv").read_text() == "new\t1\n"
    stats = read_stats(work, "ad", D1)
    assert stats == second[0] and stats["rows_read"] == 1 and stats["files"][0].endswith("b.jsonl")
    assert os.listdir(work / ".staging") == []
    assert any("leftovers of an unfinished build" in m for m in logged.messages)

    write_jsonl(partition(logs, "ad", D2) / "a.jsonl", [row("d2", D2)])
    third = build(SPEC, str(logs), str(work), sources=["ad"], skip_built=True)
    assert [s["date"] for s in third] == ["2024-03-02"]  # day 1's logs did not change: kept
    assert read_stats(work, "ad", D1) == stats
    assert built_partitions(str(work), "ad") == [D1, D2]
    assert build(SPEC, str(logs), str(work), sources=["ad"], skip_built=True) == []


def test_no_partitions_is_an_error(tmp_path):
    (tmp_path / "logs" / "natural").mkdir(parents=True)
    with pytest.raises(ValueError, match="date=YYYY-MM-DD"):
        build(SPEC, str(tmp_path / "logs"), str(tmp_path / "work"))


def test_multi_processing_runner_gives_the_same_days(tmp_path):
    logs = tmp_path / "logs"
    day = partition(logs, "natural", D1)
    write_jsonl(day / "a.jsonl", [row(f"r{i}", D1, i % 2) for i in range(30)] + ["{"])
    write_jsonl(day / "b.jsonl.gz", [row("r3", D1), row("b1", D1, price="x")], gz=True)
    args = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    size = weighted_bytes(day / "a.jsonl", day / "b.jsonl.gz")
    results = build(SPEC, str(logs), str(tmp_path / "work"), beam_args=args,
                    shard_bytes=size // 4 + 1)
    (stats,) = results
    assert (stats["rows_read"], stats["rows_written"], stats["shards"]) == (33, 30, 4)
    assert stats["quarantine_reasons"] == {"duplicate_request_id": 1, "invalid_json": 1,
                                           "wrong_type": 1}
    assert stats["clicks"] == 15
    assert sorted(read_examples(tmp_path / "work", "natural", D1)) == sorted(
        f"r{i}" for i in range(30))
    # in 2 slices on 2 worker processes: their partial stats cross processes to be merged
    (sliced,) = build(SPEC, str(logs), str(tmp_path / "sliced"), beam_args=args,
                      shard_bytes=size // 4 + 1, slice_bytes=size // 2 + 1)
    assert sliced.pop("slices") == 2
    for key in ("built_at", "seconds", "numeric"):
        sliced.pop(key), stats.pop(key)
    assert sliced == stats
    for shard in range(4):
        name = Path("examples") / "natural" / f"date={D1}" / f"part-{shard:05d}-of-00004.tfrecord.gz"
        assert (tmp_path / "sliced" / name).read_bytes() == (tmp_path / "work" / name).read_bytes()


def test_default_runner_runs_in_process_without_prism(built):
    # Beam's DirectRunner would first try Prism, which downloads a binary at run time.
    _, _, messages = built
    assert any("DirectRunner (in-process FnApiRunner)" in m for m in messages)
    runner, _ = pipeline_runner(PipelineOptions([]))
    assert isinstance(runner, FnApiRunner)
    assert pipeline_runner(PipelineOptions(["--runner=FlinkRunner"])) == (None, "FlinkRunner")


def test_unreadable_log_files_are_reported_never_silently_dropped(tmp_path, logged):
    import signal

    logs, work = tmp_path / "logs", tmp_path / "work"
    folder = partition(logs, "natural", D1)
    write_jsonl(folder / "good.jsonl", [row("r1", D1), row("r2", D1)])
    (folder / "dangling.jsonl").symlink_to(folder / "gone.jsonl")
    (folder / "loop.jsonl").symlink_to(folder / "loop.jsonl")
    (folder / "folder.jsonl").mkdir()
    os.mkfifo(folder / "pipe.jsonl")  # reading it would block the build forever
    only_bad = partition(logs, "natural", D2)
    (only_bad / "dangling.jsonl.gz").symlink_to(only_bad / "gone.jsonl.gz")

    def hung(*_):
        raise TimeoutError("the build hung on an unreadable log file")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(300)
    try:
        results = build(SPEC, str(logs), str(work))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [(r["source"], r["date"]) for r in results] == [("natural", D1.isoformat())]
    stats = read_stats(work, "natural", D1)
    assert stats["rows_read"] == stats["rows_written"] == 2
    reasons = {os.path.basename(f["path"]): f["reason"] for f in stats["unreadable_files"]}
    assert set(reasons) == {"dangling.jsonl", "loop.jsonl", "folder.jsonl", "pipe.jsonl"}
    assert reasons["dangling.jsonl"].startswith("a dangling symlink")
    assert reasons["loop.jsonl"].startswith("a symlink loop")
    assert reasons["folder.jsonl"] == "a folder" and reasons["pipe.jsonl"].startswith("a FIFO")
    errors = [r.getMessage() for r in logged.records if r.levelno == logging.ERROR]
    assert sum("is not a readable log file" in m for m in errors) == 5
    assert f"skipping partition {only_bad}: it holds no readable log files" in errors


def test_late_logs_rebuild_their_day_and_say_so(tmp_path, logged):
    logs, work = tmp_path / "logs", tmp_path / "work"
    folder = partition(logs, "ad", D1)
    write_jsonl(folder / "a.jsonl", [row("r1", D1), row("r2", D1)])
    build(SPEC, str(logs), str(work))
    stats = read_stats(work, "ad", D1)
    assert [os.path.basename(p) for p, _, _ in stats["inputs"]] == ["a.jsonl"]
    logged.clear()
    assert build(SPEC, str(logs), str(work), skip_built=True) == []
    assert any("skipping ad 2024-03-01: already built" in m for m in logged.messages)
    write_jsonl(folder / "late.jsonl", [row("r3", D1, click=1)])  # arrives after the build
    logged.clear()
    results = build(SPEC, str(logs), str(work), skip_built=True)
    assert [(r["source"], r["date"]) for r in results] == [("ad", D1.isoformat())]
    assert any("rebuilding ad 2024-03-01: its logs changed since it was built (added late.jsonl)"
               in m for m in logged.messages)
    assert read_stats(work, "ad", D1)["rows_written"] == 3 and len(read_examples(work, "ad", D1)) == 3
    write_jsonl(folder / "a.jsonl", [row("r1", D1), row("r2", D1), row("r4", D1)])  # rewritten
    os.utime(folder / "a.jsonl", (1, 1))
    logged.clear()
    build(SPEC, str(logs), str(work), skip_built=True)
    assert any("(changed a.jsonl)" in m for m in logged.messages)
    assert read_stats(work, "ad", D1)["rows_written"] == 4


def test_shards_hold_the_plain_writers_examples_in_file_and_line_order(tmp_path):
    # The plain writer's json.loads -> RowParser.parse -> to_example, with the build's rules:
    # the first row of a request id is kept, shard = crc32(request id) % shards.
    from ecdctr.data.rows import RowParser, to_example

    logs = tmp_path / "logs"
    day = partition(logs, "natural", D1)
    first = [row(f"r{i}", D1, i % 2, user_id=f"u{i % 3}", price=i + 0.25) for i in range(12)]
    second = [row("r3", D1, user_id="dup"), row("s1", D1, hist_categories=[]), "{"]
    second += [row(f"s{i}", D1, item_id=f"i{i}") for i in range(2, 7)]
    write_jsonl(day / "a.jsonl.gz", first, gz=True)
    write_jsonl(day / "b.jsonl", second)
    size = weighted_bytes(day / "a.jsonl.gz", day / "b.jsonl")
    (stats,) = build(SPEC, str(logs), str(tmp_path / "work"), shard_bytes=size // 5 + 1)
    parser, shards = RowParser(SPEC), stats["shards"]
    assert shards == 5
    expected: list[list[bytes]] = [[] for _ in range(shards)]
    seen = set()
    for r in first + second:
        if isinstance(r, str) or r["request_id"] in seen:
            continue
        seen.add(r["request_id"])
        parsed = parser.parse(json.loads(json.dumps(r)), D1)
        expected[zlib.crc32(parsed.request_id.encode()) % shards].append(to_example(SPEC, parsed))
    folder = tmp_path / "work" / "examples" / "natural" / f"date={D1}"
    for shard in range(shards):
        path = folder / f"part-{shard:05d}-of-{shards:05d}.tfrecord.gz"
        written = [tf.train.Example.FromString(r.numpy())
                   for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]
        assert written == expected[shard], shard
    assert stats["quarantine_reasons"] == {"duplicate_request_id": 1, "invalid_json": 1}


def test_a_log_that_grows_after_it_was_found_is_built_as_read(tmp_path, logged):
    """The shard count comes from the sizes found before the pipeline runs, not from a
    reading pass: a log file that grows in between does not fail the build; the day holds
    every row read, once, in the shards made for the size found, and its recorded inputs
    make the next --skip_built build rebuild it."""
    logs, work = tmp_path / "logs", tmp_path / "work"
    log_file = partition(logs, "ad", D1) / "a.jsonl"
    write_jsonl(log_file, [row(f"r{i}", D1) for i in range(4)])
    found = log_file.stat().st_size
    options = beam_files.configure((), (str(logs), str(work)))
    plan = find_days(str(logs), str(work), ["natural", "ad"], None, None,
                     shard_bytes=found // 4 + 1)
    with open(log_file, "a") as f:  # between finding the day and reading it
        f.write("".join(json.dumps(row(f"late{i}", D1)) + "\n" for i in range(3)))
    (stats,) = build_days(SPEC, plan, str(work), options)
    assert built_partitions(str(work), "ad") == [D1] and stats["shards"] == 4
    assert stats["rows_read"] == stats["rows_written"] == 7
    assert stats["inputs"][0][1] == found < log_file.stat().st_size
    files = sorted((work / "examples" / "ad" / f"date={D1}").glob("part-*"))
    assert len(files) == 4 and sum(1 for f in files for _ in tf.data.TFRecordDataset(
        str(f), compression_type="GZIP")) == 7
    logged.clear()
    (again,) = build(SPEC, str(logs), str(work), shard_bytes=found // 4 + 1, skip_built=True)
    assert any("changed a.jsonl" in m for m in logged.messages)
    assert again["shards"] == math.ceil(log_file.stat().st_size / (found // 4 + 1)) > 4
    assert again["rows_read"] == 7


def test_shard_count_comes_from_the_input_sizes_gz_and_parquet_weighted():
    inputs = [["/l/a.jsonl", 100, 1.0], ["/l/b.JSONL.GZ", 10, 1.0], ["/l/c.parquet", 5, 1.0],
              ["/l/d.csv", None, None]]
    assert discovery.shard_count(inputs, 220) == 1  # 100 + 8 * 10 + 8 * 5 = 220 bytes
    assert discovery.shard_count(inputs, 219) == 2
    assert discovery.shard_count(inputs, 1) == 220
    assert discovery.shard_count([], 1) == 1


def test_a_sliced_day_is_byte_for_byte_the_one_pass_day(tmp_path, logged):
    """A day built in slices by request-id hash (a tiny slice_bytes) holds the same shard
    files, quarantine records, token counts and stats as one pass over it."""
    logs = tmp_path / "logs"
    make_bad_logs(logs)
    p = partition(logs, "natural", D3)
    many = [row(f"m{i}", D3, i % 2, user_id=f"u{i % 7}", price=i / 3, hist_categories=[f"h{i % 5}"])
            for i in range(60)]
    odd = [row(7, D3), row("7", D3, user_id="str-seven"), row("é-id", D3), row("", D3),
           row(True, D3), row(" ", D3), row("m5", D3, user_id="late-dup"), row(1.5, D3)]
    write_jsonl(p / "many.jsonl", many[:30] + odd)
    write_csv(p / "many.csv", HEADER, [csv_cells(r, HEADER) for r in many[30:] + many[:3]])
    files = [f for f in p.iterdir() if f.name.endswith(LOG_SUFFIXES)]
    size = sum(discovery.input_bytes(str(f), f.stat().st_size) for f in files)
    runs = {}
    for name, slice_bytes in (("one", SLICE_BYTES), ("sliced", size // 3 + 1)):
        logged.clear()
        (stats,) = build(SPEC, str(logs), str(tmp_path / name), shard_bytes=size // 6 + 1,
                         slice_bytes=slice_bytes)
        runs[name] = (tmp_path / name, stats, logged.messages)
    (one, one_stats, _), (sliced, sliced_stats, messages) = runs["one"], runs["sliced"]
    assert sliced_stats["slices"] == 3 and "slices" not in one_stats
    assert sliced_stats["shards"] == one_stats["shards"] == 6
    assert any("in 3 slices by request-id hash (6 shards)" in m for m in messages)
    folder = Path("examples") / "natural" / f"date={D3}"
    names = sorted(f.name for f in (one / folder).iterdir())
    assert names == sorted(f.name for f in (sliced / folder).iterdir()) and len(names) == 6
    for name in names:
        assert (one / folder / name).read_bytes() == (sliced / folder / name).read_bytes(), name
    assert len(read_examples(one, "natural", D3)) == len(BAD_GOOD_IDS) + 60 + 2

    def quarantine(work: Path) -> list[dict]:
        records = [json.loads(line) for f in (work / "quarantine" / "natural" / f"date={D3}")
                   .glob("part-*.jsonl") for line in f.read_text().splitlines()]
        return sorted(records, key=lambda r: (r["file"], r["line"]))

    parts = sorted(f.name for f in (sliced / "quarantine" / "natural" / f"date={D3}").iterdir())
    assert parts == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    assert quarantine(sliced) == quarantine(one) and len(quarantine(one)) > 20
    counts = Path("counts") / "natural" / f"date={D3}"
    names = sorted(f.name for f in (one / counts).iterdir())
    assert names == sorted(f.name for f in (sliced / counts).iterdir())
    for name in names:
        assert (one / counts / name).read_text() == (sliced / counts / name).read_text(), name
    for stats in (one_stats, sliced_stats):
        stats.pop("built_at"), stats.pop("seconds"), stats.pop("slices", None)
        assert stats["rows_read"] == stats["rows_written"] + stats["rows_quarantined"]
    one_numeric, sliced_numeric = one_stats.pop("numeric"), sliced_stats.pop("numeric")
    assert sliced_stats == one_stats
    for column, values in one_numeric.items():  # float sums added per slice: within rounding
        assert sliced_numeric[column] == pytest.approx(values, rel=1e-12), column
    (five,) = build(SPEC, str(logs), str(tmp_path / "five"), shard_bytes=size // 5 + 1,
                    slice_bytes=size // 3 + 1)
    assert five["shards"] == 6 and five["slices"] == 3  # 5 shards, rounded up to 3's multiple


def test_slice_count_comes_from_the_input_sizes():
    inputs = [["a.jsonl", 100, 0.0], ["b.jsonl.gz", 10, 0.0]]  # 180 weighted bytes
    assert discovery.slice_count(inputs, 181) == 1
    assert discovery.slice_count(inputs, 180) == 1
    assert discovery.slice_count(inputs, 179) == 2
    assert discovery.slice_count(inputs, 60) == 3


def test_a_worker_builds_a_day_without_loading_tensorflow(tmp_path):
    """What a Beam worker runs (the build's DoFn unpickled, a day read, checked, encoded and
    written) never imports TensorFlow, whose import costs each worker seconds."""
    logs = partition(tmp_path / "logs", "ad", D1)
    write_jsonl(logs / "a.jsonl", [row("r1", D1), row("r1", D1), "not json"])
    day = Day("ad", D1.isoformat(), (str(logs / "a.jsonl"),), shards=2)
    (tmp_path / "worker.pickle").write_bytes(
        pickle.dumps(BuildDay(SPEC, [day], str(tmp_path / "staging"))))
    code = ("import pickle, sys\n"
            f"worker = pickle.loads(open({str(tmp_path / 'worker.pickle')!r}, 'rb').read())\n"
            "worker.setup()\n"
            "list(worker.process((0, 0)))\n"
            "assert 'tensorflow' not in sys.modules, 'a build worker loaded TensorFlow'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    stats = json.loads((tmp_path / "staging" / "stats" / "ad" / f"{D1}.json").read_text())
    assert stats["rows_written"] == 1 and stats["quarantine_reasons"] == {
        "duplicate_request_id": 1, "invalid_json": 1}
