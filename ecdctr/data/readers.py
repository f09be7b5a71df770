"""Raw impression logs, read: one log file (JSON lines, a JSON array, CSV, Parquet, any of them
gzipped but Parquet) as rows, JSON decoding, and the row check the build and `ecdctr spec check`
share. Reads go through Beam's FileSystems, so the build's workers never load TensorFlow."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import io
import json
import math
import zlib
from collections.abc import Iterator
from typing import Any

from ecdctr.data.rows import ParsedRow, RowEncoder, RowError
from ecdctr.io import beam_files, storage
from ecdctr.spec.feature_spec import Spec

MAX_RAW_CHARS = 10_000  # raw rows in quarantine records are cut here

# A row as read_log_file yields it: (line, kind, payload). kind is TEXT (payload: the raw line,
# bytes), VALUE (a decoded row: dict from CSV or Parquet, any JSON value from a JSON array) or
# ERROR (payload: (reason, message, raw row or None)).
TEXT, VALUE, ERROR = "text", "value", "error"


_GZIP_ERRORS = (EOFError, OSError, zlib.error)


class FileCounters:
    """What reading one log file counted beside its rows."""

    def __init__(self) -> None:
        self.blank_lines = 0
        self.line = 0  # the last physical line (or Parquet row) read completely


def _read_json_lines(stream: Any, path: str, counters: FileCounters,
                     allow_array: bool) -> Iterator[tuple[int, str, Any]]:
    line_no = 0
    decided = not allow_array
    for raw in stream:
        line_no += 1
        counters.line = line_no
        if not raw.strip():
            counters.blank_lines += 1
            continue
        if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        if not decided:  # a .json file holds JSON lines or one array of rows
            decided = True
            if raw.lstrip()[:1] == b"[":
                yield from _read_json_array(raw + stream.read(), path)
                return
        yield line_no, TEXT, raw.rstrip(b"\r\n")


def _read_json_array(data: bytes, path: str) -> Iterator[tuple[int, str, Any]]:
    try:
        rows = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        yield 1, ERROR, ("not_utf8", f"{path}: the JSON array is not UTF-8: {e}",
                         data[:MAX_RAW_CHARS])
        return
    except (ValueError, RecursionError) as e:
        yield 1, ERROR, ("invalid_json", f"{path}: the file starts with '[' but is not a JSON "
                                         f"array: {e}", data[:MAX_RAW_CHARS])
        return
    if not isinstance(rows, list):
        yield 1, ERROR, ("invalid_json", f"{path}: not a JSON array", data[:MAX_RAW_CHARS])
        return
    for index, row in enumerate(rows, 1):  # "line" = position of the row in the array
        yield index, VALUE, row


def _read_csv(stream: Any, path: str, counters: FileCounters) -> Iterator[tuple[int, str, Any]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    header: list[str] | None = None
    while True:
        before = reader.line_num
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, ERROR, ("malformed_csv", f"{path}: line {reader.line_num}: {e}",
                                           None)
            if reader.line_num == before:
                return  # the reader cannot move on
            continue
        counters.line = reader.line_num
        if not cells:
            counters.blank_lines += 1
            continue
        if header is None:
            header = [c.strip() for c in cells]
            continue
        line = reader.line_num
        try:
            "".join(cells).encode("utf-8")
        except UnicodeEncodeError:
            readable = [c.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                        for c in cells]
            yield line, ERROR, ("not_utf8", f"{path}: line {line} is not valid UTF-8",
                                dict(zip(header, readable, strict=False)))
            continue
        if len(cells) != len(header):
            yield line, ERROR, ("malformed_csv", f"{path}: line {line} has {len(cells)} fields, "
                                                 f"the header has {len(header)}", cells)
            continue
        yield line, VALUE, dict(zip(header, cells, strict=True))


def _plain_parquet_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # a timestamp column: epoch seconds, naive = UTC
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp())
    return value


def _read_parquet(handle: Any, path: str) -> Iterator[tuple[int, str, Any]]:
    import pyarrow.parquet as pq  # only the workers that read Parquet pay for the import

    count = 0
    try:
        if not handle.seekable():
            handle = io.BytesIO(handle.read())
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                count += 1
                yield count, VALUE, {k: _plain_parquet_value(v) for k, v in row.items()}
    except Exception as e:  # noqa: BLE001  pyarrow raises many types for broken files
        where = f"after row {count}" if count else "at the start"
        yield count + 1, ERROR, ("unreadable_file", f"{path}: Parquet file unreadable {where}: "
                                                    f"{type(e).__name__}: {e}", None)


def read_log_file(path: str, counters: FileCounters) -> Iterator[tuple[int, str, Any]]:
    """Rows of one log file as (line, kind, payload); a truncated gzip ends with one error row."""
    name = storage.basename(path).lower()
    gz = name.endswith(".gz")
    fmt = (name[:-3] if gz else name).rsplit(".", 1)[-1]
    handle = beam_files.open_raw(path)
    with handle:
        if fmt == "parquet":
            yield from _read_parquet(handle, path)
            return
        stream = gzip.GzipFile(fileobj=handle, mode="rb") if gz else handle
        try:
            if fmt == "csv":
                yield from _read_csv(stream, path, counters)
            else:
                yield from _read_json_lines(stream, path, counters, allow_array=fmt == "json")
        except _GZIP_ERRORS as e:
            if not gz:
                raise
            last = counters.line
            yield last + 1, ERROR, (
                "truncated_gzip", f"{path}: the gzip stream breaks after line {last} "
                                  f"({type(e).__name__}: {e}); the rest of the file is unreadable",
                None)


def decode_json(payload: bytes) -> Any:
    """A JSON line's value, or RowError (not_utf8, invalid_json)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError("not_utf8", f"byte {payload[e.start:e.start + 1]!r} at position {e.start} "
                                   f"is not valid UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise RowError("invalid_json", f"invalid JSON: {e}") from None


def jsonable(value: Any) -> Any:
    """A copy of a decoded row that json.dumps accepts strictly (long strings cut)."""
    if isinstance(value, str):
        return value[:MAX_RAW_CHARS]
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")[:MAX_RAW_CHARS]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)[:MAX_RAW_CHARS]


class RowChecker:
    """Validates and encodes rows as the build does (shared with `ecdctr spec check`)."""

    def __init__(self, spec: Spec):
        self.encode = RowEncoder(spec)  # = RowParser.parse, then ExampleEncoder

    def check(self, kind: str, payload: Any, day: dt.date) -> tuple[ParsedRow, bytes]:
        """(typed row, serialized Example) of a row read by read_log_file, or RowError with
        the quarantine reason (an unexpected exception becomes reason internal_error)."""
        try:
            if kind == ERROR:
                raise RowError(payload[0], payload[1])
            return self.encode(decode_json(payload) if kind == TEXT else payload, day)
        except RowError:
            raise
        except Exception as e:  # noqa: BLE001  keep the accounting whole; the reason shows it
            raise RowError("internal_error", f"unexpected {type(e).__name__}: {e}") from None
