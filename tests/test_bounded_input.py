"""Bounded input: a line longer than the spec's max_line_bytes is quarantined (build, spec
check) or skipped (predict, query) without ever being held, and blank lines are cheap."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import tracemalloc
import zlib
from pathlib import Path

import pytest
import yaml

from ecdctr.cli import spec_commands
from ecdctr.data.readers import ERROR, TEXT, VALUE, FileCounters, read_log_file
from ecdctr.data.rows import RowParser
from ecdctr.io.lines import BLOCK, LineReader
from ecdctr.serving.client import read_examples
from ecdctr.spec.feature_spec import load_spec
from ecdctr.spec.validation import ConfigError
from pipelines.build import build

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "features" / "default.yaml")
DAY = dt.date(2024, 3, 1)
BOUND = 64 * 1024
BOMB_BYTES = 10 * 1024 * 1024


def _row(rid: str) -> dict:
    ts = int(dt.datetime(DAY.year, DAY.month, DAY.day, 12, tzinfo=dt.UTC).timestamp())
    return {"request_id": rid, "ts": ts, "click": 0, "user_id": "u1", "item_id": "i1",
            "gender": "f", "age_level": "3", "city_tier": "1", "scenario": "feed",
            "position": "1", "user_segment": "new", "category": "c1", "brand": "b1",
            "price": 9.5, "hist_categories": ["c1"]}


def _gzip_stream(path: Path, chunks) -> None:
    """Writes a .gz from byte chunks without holding the whole content."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        for chunk in chunks:
            f.write(chunk)


def _bomb(path: Path, before: list[dict], after: list[dict]) -> None:
    """A .jsonl.gz: rows, then one line of BOMB_BYTES zero bytes with no newline for most of
    it, then rows."""
    head = "".join(json.dumps(r) + "\n" for r in before).encode()
    tail = "\n" + "".join(json.dumps(r) + "\n" for r in after)
    zeros = bytes(1 << 20)
    _gzip_stream(path, [head] + [zeros] * (BOMB_BYTES >> 20) + [tail.encode()])


def _spec(tmp_path: Path, bound: int = BOUND) -> str:
    doc = yaml.safe_load(Path(DEFAULT).read_text())
    doc["max_line_bytes"] = bound
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_lines_come_whole_blank_ones_counted_long_ones_dropped():
    data = b"a\r\n\n  \n\t\r\nbb\n" + b"x" * 50 + b"\ncc\n\n" + b"y" * 30
    lines = LineReader(io.BytesIO(data), limit=20)
    got = list(lines)
    assert got == [(1, b"a"), (5, b"bb"), (6, None), (7, b"cc"), (9, None)]
    assert lines.blank_lines == 4 and lines.line == 9
    assert lines.too_long_bytes == 30 and lines.too_long_prefix == b"y" * 30
    assert list(LineReader(io.BytesIO(b"last  "), limit=20)) == [(1, b"last  ")]
    assert list(LineReader(io.BytesIO(b""), limit=20)) == []


def test_a_line_without_end_is_read_in_blocks_and_never_held():
    stream = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(bytes(BOMB_BYTES) + b"\nok\n", 1)))
    tracemalloc.start()
    try:
        lines = LineReader(stream, limit=BOUND)
        got = list(lines)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == [(1, None), (2, b"ok")]
    assert lines.too_long_bytes == BOMB_BYTES
    assert peak < 4 * (BOUND + BLOCK), f"peak {peak} bytes held for a {BOMB_BYTES}-byte line"


def test_the_line_bound_is_a_validated_spec_key_outside_the_fingerprint(tmp_path):
    assert load_spec(DEFAULT).max_line_bytes == 1 << 20
    spec = load_spec(_spec(tmp_path))
    assert spec.max_line_bytes == BOUND
    assert spec.fingerprint == load_spec(DEFAULT).fingerprint
    with pytest.raises(ConfigError, match="max_line_bytes"):
        load_spec(_spec(tmp_path, bound=10))


@pytest.mark.parametrize("name", ["a.jsonl.gz", "a.csv.gz", "a.json.gz"])
def test_log_reader_gives_one_error_row_for_a_bomb_line(tmp_path, name):
    path = tmp_path / name
    if name.startswith("a.csv"):
        _gzip_stream(path, [b"request_id,ts\nr1,1\n"] + [bytes(1 << 20)] * 10 + [b"\nr2,2\n"])
    else:
        _bomb(path, [_row("r1")], [_row("r2")])
    counters = FileCounters()
    rows = list(read_log_file(str(path), counters, BOUND))
    header = 1 if "csv" in name else 0
    kind = VALUE if header else TEXT
    assert [(line, k) for line, k, _ in rows] == [(1 + header, kind), (2 + header, ERROR),
                                                  (3 + header, kind)]
    reason, message, raw = rows[1][2]
    assert reason == "line_too_long"
    assert f"line {2 + header} is longer than {BOUND} bytes ({BOMB_BYTES} bytes)" in message
    assert "max_line_bytes" in message and len(raw) <= 200
    assert counters.line == 3 + header


def test_a_json_array_file_is_bounded_too(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([_row(str(i)) for i in range(3000)]))
    rows = list(read_log_file(str(path), FileCounters(), 1024))
    assert len(rows) == 1 and rows[0][1] == ERROR and rows[0][2][0] == "line_too_long"
    assert len(list(read_log_file(str(path), FileCounters(), BOUND))) == 3000


def test_build_quarantines_the_bomb_line_and_the_counts_add_up(tmp_path):
    folder = tmp_path / "logs" / "ad" / f"date={DAY}"
    folder.mkdir(parents=True)
    _bomb(folder / "part-0.jsonl.gz", [_row("r1")], [_row("r2")])
    work = tmp_path / "work"
    build(load_spec(_spec(tmp_path)), str(tmp_path / "logs"), str(work))
    stats = json.loads((work / "stats" / "ad" / f"{DAY}.json").read_text())
    assert (stats["rows_read"], stats["rows_written"], stats["rows_quarantined"]) == (3, 2, 1)
    assert stats["quarantine_reasons"] == {"line_too_long": 1}
    records = [json.loads(line) for line in
               (work / "quarantine" / "ad" / f"date={DAY}" / "part-00000.jsonl").open()]
    assert [(r["line"], r["reason"]) for r in records] == [(2, "line_too_long")]


def test_spec_check_and_predict_skip_the_bomb_line(tmp_path):
    folder = tmp_path / "logs" / "ad" / f"date={DAY}"
    folder.mkdir(parents=True)
    _bomb(folder / "part-0.jsonl.gz", [_row("r1")], [_row("r2")])
    report, status = spec_commands.check(_spec(tmp_path), str(tmp_path / "logs"), days=1, rows=10)
    ad = report["logs"]["sources"]["ad"]
    assert status == 1 and ad["rows_sampled"] == 3 and ad["rows_quarantined"] == 1
    assert list(ad["quarantine_reasons"]) == ["line_too_long"]
    rows, problems = read_examples(str(folder / "part-0.jsonl.gz"),
                                   RowParser(load_spec(_spec(tmp_path))))
    assert [r is None for r in rows] == [False, True, False]
    assert len(problems) == 1 and ":2: skipped: " in problems[0]
    assert f"longer than {BOUND} bytes" in problems[0]


def test_blank_lines_are_counted_in_bulk(tmp_path):
    """2 Mi blank lines between two rows: both rows read, every blank line counted."""
    path = tmp_path / "blank.jsonl.gz"
    blanks = 2 << 20
    _gzip_stream(path, [json.dumps(_row("r1")).encode() + b"\n", b"\n" * blanks,
                        json.dumps(_row("r2")).encode() + b"\n"])
    counters = FileCounters()
    rows = list(read_log_file(str(path), counters, BOUND))
    assert [line for line, _, _ in rows] == [1, blanks + 2]
    assert counters.blank_lines == blanks
    assert zlib.crc32(rows[1][2]) == zlib.crc32(json.dumps(_row("r2")).encode())


def test_csv_keeps_empty_lines_inside_quoted_fields(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b'request_id,note\r\nr1,"one\r\n\r\ntwo"\r\n\r\nr2,x\r\n')
    counters = FileCounters()
    rows = list(read_log_file(str(path), counters, BOUND))
    assert [(line, payload) for line, _, payload in rows] == [
        (4, {"request_id": "r1", "note": "one\r\n\r\ntwo"}), (6, {"request_id": "r2", "note": "x"})]
    assert counters.blank_lines == 1 and counters.line == 6
