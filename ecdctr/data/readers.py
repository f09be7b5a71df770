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
from ecdctr.io.lines import DEFAULT_MAX_LINE_BYTES, LineReader
from ecdctr.spec.feature_spec import Spec

MAX_RAW_CHARS = 10_000  # raw rows in quarantine records are cut here
ARRAY_LINES = 64  # a .json file holding one array is read whole: up to 64 x max_line_bytes

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


def _too_long(path: str, lines: LineReader, number: int) -> tuple[int, str, Any]:
    return number, ERROR, (
        "line_too_long", f"{path}: line {number} is longer than {lines.limit} bytes "
                         f"({lines.too_long_bytes} bytes); it is skipped. Fix: if such rows are "
                         f"real, raise max_line_bytes in the feature spec", lines.too_long_prefix)


def _read_json_lines(stream: Any, path: str, counters: FileCounters, allow_array: bool,
                     limit: int) -> Iterator[tuple[int, str, Any]]:
    lines = LineReader(stream, limit)
    if allow_array and lines.peek().removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"[":
        yield from _read_json_array(lines, path)  # a .json file: JSON lines or one array
        return
    for line_no, raw in lines:
        counters.line, counters.blank_lines = line_no, lines.blank_lines
        if raw is None:
            yield _too_long(path, lines, line_no)
            continue
        if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        yield line_no, TEXT, raw
    counters.line, counters.blank_lines = lines.line, lines.blank_lines


def _read_json_array(lines: LineReader, path: str) -> Iterator[tuple[int, str, Any]]:
    """The rows of a file holding one JSON array, read whole: it may be at most
    ARRAY_LINES times the line bound."""
    limit = ARRAY_LINES * lines.limit
    data = lines.rest(limit)
    if data is None:
        yield 1, ERROR, ("line_too_long", f"{path}: the JSON array is longer than {limit} bytes "
                                          f"({ARRAY_LINES} x max_line_bytes); the file is skipped. "
                                          f"Fix: write the rows as JSON lines", None)
        return
    data = data.removeprefix(codecs.BOM_UTF8)
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


def _csv_text(lines: LineReader, too_long: list[int]) -> Iterator[str]:
    """The lines csv.reader parses: decoded, each with its end of line (a quoted field may span
    lines); an over-long line is an empty one, its number put in too_long."""
    for number, raw in lines:
        if raw is None:
            too_long.append(number)
            yield "\n"
            continue
        text = raw.decode("utf-8", "surrogateescape")
        yield (text[1:] if number == 1 and text.startswith("\ufeff") else text) + "\n"


def _read_csv(stream: Any, path: str, counters: FileCounters,
              limit: int) -> Iterator[tuple[int, str, Any]]:
    lines = LineReader(stream, limit, verbatim=True)
    too_long: list[int] = []
    reader = csv.reader(_csv_text(lines, too_long))
    header: list[str] | None = None
    while True:
        before = reader.line_num
        try:
            cells = next(reader)
        except StopIteration:
            counters.line = lines.line
            return
        except csv.Error as e:
            yield lines.line, ERROR, ("malformed_csv", f"{path}: line {lines.line}: {e}", None)
            if reader.line_num == before:
                return  # the reader cannot move on
            continue
        line = counters.line = lines.line
        if too_long:
            yield _too_long(path, lines, too_long.pop())
            continue
        if not cells:
            counters.blank_lines += 1
            continue
        if header is None:
            header = [c.strip() for c in cells]
            continue
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


def read_log_file(path: str, counters: FileCounters,
                  max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, str, Any]]:
    """Rows of one log file as (line, kind, payload); a truncated gzip ends with one error row,
    a line longer than max_line_bytes is one error row (line_too_long) and is never held."""
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
                yield from _read_csv(stream, path, counters, max_line_bytes)
            else:
                yield from _read_json_lines(stream, path, counters, fmt == "json", max_line_bytes)
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
        self.max_line_bytes = spec.max_line_bytes

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
