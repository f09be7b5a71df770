"""Beam job: raw impression logs -> tf.train.Example shards, quarantine, token counts, day stats."""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import datetime as dt
import errno
import gzip
import io
import json
import math
import os
import stat
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from ecdctr.data import drift
from ecdctr.data.rows import ParsedRow, RowEncoder, RowError
from ecdctr.io import lock as file_lock
from ecdctr.io import storage
from ecdctr.spec.feature_spec import Spec

SOURCES = ("natural", "ad")
LOG_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".csv.gz", ".parquet")
SHARD_BYTES = 64 << 20  # default input bytes per TFRecord shard of a day (see _shard_count)
# A day of at least this many weighted input bytes is built in slices by request-id hash
# (see _slice_count). The simulator's JSON rows weigh ~330 bytes each (285 bytes a row,
# gzip 6.9x, weighted 8x), small rows and so many rows a byte: 2 GiB is ~6.5M of them,
# whose per-row state (~250 bytes a row measured: request ids, token counters) stays
# ~1.6 GB on the worker building a slice; wider production rows give fewer rows a slice.
SLICE_BYTES = 2 << 30
COMPRESSED_WEIGHT = 8  # a .gz or .parquet byte counts as this many (JSON and CSV gzip ~8-10x)
MAX_RAW_CHARS = 10_000  # raw rows in quarantine records are cut here
PUBLISHED = ("examples", "quarantine", "counts")  # per-day folders swapped in by rename
STAGING = ".staging"
LAYOUT = "<logs>/<source>/date=YYYY-MM-DD/*.jsonl[.gz] | *.json[.gz] | *.csv[.gz] | *.parquet"

# Row elements between the read and validate steps: (file index, line, kind, payload); the
# index points into the run's list of (source, date, path), which every step holds. kind is
# "text" (payload: the raw line, bytes), "value" (a decoded row: dict from CSV or Parquet, any
# JSON value from a JSON array) or "error" (payload: (reason, message, raw row or None)).
TEXT, VALUE, ERROR = "text", "value", "error"


# ---------------------------------------------------------------- layout and small helpers

def _day_dir(root: str, kind: str, source: str, date: str) -> str:
    return storage.join(root, kind, source, f"date={date}")


def _stats_file(root: str, source: str, date: str) -> str:
    return storage.join(root, "stats", source, f"{date}.json")


def _shard_name(shard: int, shards: int) -> str:
    return f"part-{shard:05d}-of-{shards:05d}.tfrecord.gz"


def _input_bytes(path: str, size: int | None) -> int:
    """A log file's weight in the shard count: its stored size, compressed files (.gz,
    .parquet) counted COMPRESSED_WEIGHT times, so a day gets about as many shards stored
    either way."""
    name = path.lower()
    return (size or 0) * (COMPRESSED_WEIGHT if name.endswith((".gz", ".parquet")) else 1)


def _weighted_bytes(inputs: list) -> int:
    """A day's weighted input bytes from its inputs as found (path, size, mtime)."""
    return sum(_input_bytes(path, size) for path, size, _ in inputs)


def _shard_count(inputs: list, shard_bytes: int) -> int:
    """A day's shard count from its inputs as found (path, size, mtime), read from no file:
    ceil(weighted input bytes / shard_bytes), at least 1. The same inputs give the same
    count, and the sizes it comes from are in the day's stats ("inputs")."""
    return max(1, math.ceil(_weighted_bytes(inputs) / shard_bytes))


def _slice_count(inputs: list, slice_bytes: int) -> int:
    """In how many slices a day is built: 1 below slice_bytes weighted input bytes (the
    measure of _shard_count), else ceil(bytes / slice_bytes)."""
    total = _weighted_bytes(inputs)
    return 1 if total < slice_bytes else math.ceil(total / slice_bytes)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked crc32c of the length, data, masked crc32c of data."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", _masked_crc(length)), data,
                     struct.pack("<I", _masked_crc(data))))


def _jsonable(value: Any) -> Any:
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
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)[:MAX_RAW_CHARS]


# ---------------------------------------------------------------- files, through Beam's FileSystems
# Workers and driver reach every data path through FileSystems (local, s3 via boto3, gs, hdfs),
# so workers never load tensorflow-io. Object stores have no folders and no atomic rename.

def _create(path: str) -> Any:
    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _write_bytes(path: str, data: bytes, sync: bool = False) -> None:
    """Writes a whole file; sync=True also fsyncs it where the file system allows."""
    if not data and storage.scheme(path) == "s3":
        _put_empty_s3_object(path)
        return
    with _create(path) as f:
        f.write(data)
        if sync:  # a local file: durable before it is renamed into place
            with contextlib.suppress(AttributeError, OSError, ValueError):  # no file descriptor
                f.flush()
                os.fsync(f.fileno())


_S3_CLIENTS: dict[int, tuple[Any, Any]] = {}  # id(options) -> (options, boto3 client)


def _put_empty_s3_object(path: str) -> None:
    """Beam's S3 writer always uploads in parts and S3 refuses a multipart upload without
    parts, so an empty object is one plain PUT, through a boto3 client made from the options
    Beam's S3 file system holds (kept: making one takes 50-200 ms here)."""
    from apache_beam.io.aws.clients.s3.boto3_client import Client

    options = getattr(FileSystems.get_filesystem(path), "_options", None)
    if options is None:
        options = PipelineOptions(storage.beam_s3_options())
    if id(options) not in _S3_CLIENTS:
        _S3_CLIENTS[id(options)] = (options, Client(options).client)
    bucket, _, key = path[len("s3://"):].partition("/")
    _S3_CLIENTS[id(options)][1].put_object(Bucket=bucket, Key=key, Body=b"")


def _read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _has_dirs(path: str) -> bool:
    """Whether path's file system has real folders (local, HDFS) rather than key prefixes."""
    return FileSystems.get_filesystem(path).has_dirs()


def _makedirs(path: str) -> None:
    if _has_dirs(path) and not FileSystems.exists(path):
        FileSystems.mkdirs(path)


def _match(patterns: list[str]) -> list[str]:
    """Paths matching any of the patterns (`**` crosses folders), sorted."""
    results = FileSystems.match(patterns) if patterns else []
    return sorted({m.path for result in results for m in result.metadata_list})


def _files_under(folder: str) -> list[str]:
    """Every file below folder, at any depth (none if it does not exist)."""
    return _match([storage.join(folder, "**")])


def _delete_tree(folder: str) -> None:
    """Deletes folder and everything below it, if it exists."""
    if _has_dirs(folder):
        if FileSystems.exists(folder):
            FileSystems.delete([folder])
        return
    files = _files_under(folder)
    if files:
        FileSystems.delete(files)


def _move_folder(source: str, destination: str) -> None:
    """Renames folder source to destination, which must not exist (file systems with folders:
    local, HDFS; object stores are handled by _publish_objects)."""
    _makedirs(storage.dirname(destination))
    FileSystems.rename([source], [destination])


# ---------------------------------------------------------------- readers (one file -> rows)

_GZIP_ERRORS = (EOFError, OSError, zlib.error)


class _FileCounters:
    def __init__(self) -> None:
        self.blank_lines = 0
        self.line = 0  # the last physical line (or Parquet row) read completely


def _read_json_lines(stream: Any, path: str, counters: _FileCounters,
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


def _read_csv(stream: Any, path: str, counters: _FileCounters) -> Iterator[tuple[int, str, Any]]:
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


def read_log_file(path: str, counters: _FileCounters) -> Iterator[tuple[int, str, Any]]:
    """Rows of one log file as (line, kind, payload); a truncated gzip ends with one error row."""
    name = storage.basename(path).lower()
    gz = name.endswith(".gz")
    fmt = (name[:-3] if gz else name).rsplit(".", 1)[-1]
    handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
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


# ---------------------------------------------------------------- one partition in one pass

# (source, date, its log files in path order, shards, slices); shards is a multiple of slices
DayRef = tuple[str, str, list[str], int, int]


class _RowChecker:
    """Validates and encodes rows as the build does (shared with `ecdctr spec check`)."""

    def __init__(self, spec: Spec):
        self.encode = RowEncoder(spec)  # = RowParser.parse, then ExampleEncoder

    def check(self, kind: str, payload: Any, day: dt.date) -> tuple[ParsedRow, bytes]:
        """(typed row, serialized Example) of a row read by read_log_file, or RowError with
        the quarantine reason (an unexpected exception becomes reason internal_error)."""
        try:
            if kind == ERROR:
                raise RowError(payload[0], payload[1])
            return self.encode(_decode_json(payload) if kind == TEXT else payload, day)
        except RowError:
            raise
        except Exception as e:  # noqa: BLE001  keep the accounting whole; the reason shows it
            raise RowError("internal_error", f"unexpected {type(e).__name__}: {e}") from None


def _quarantine_record(source: str, date: str, path: str, line: int, reason: str, message: str,
                       raw: Any) -> str:
    """One line of a day's quarantine file (JSON, no newline)."""
    return json.dumps({"source": source, "date": date, "file": path, "line": line,
                       "reason": reason, "message": message, "row": _jsonable(raw)},
                      allow_nan=False)


def _decode_json(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError("not_utf8", f"byte {payload[e.start:e.start + 1]!r} at position {e.start} "
                                   f"is not valid UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise RowError("invalid_json", f"invalid JSON: {e}") from None


def _numeric_columns(spec: Spec) -> list[str]:
    columns: list[str] = []
    for f in spec.features:
        if f.kind == "numeric" and f.column not in columns:
            columns.append(f.column)
    return columns


class _Shards:
    """The GZIP TFRecord shards of one day, each opened at its first record and written
    about 1 MB at a time, through FileSystems."""

    def __init__(self, folder: str, shards: int, stack: contextlib.ExitStack):
        self.folder, self.shards, self.stack = folder, shards, stack
        self.files: list[Any] = [None] * shards
        self.buffers: list[list[bytes]] = [[] for _ in range(shards)]
        self.sizes = [0] * shards

    def write(self, shard: int, record: bytes) -> None:
        frame = tfrecord_frame(record)
        self.buffers[shard].append(frame)
        self.sizes[shard] += len(frame)
        if self.sizes[shard] > 1 << 20:
            self.flush(shard)

    def flush(self, shard: int) -> None:
        if self.files[shard] is None:
            raw = self.stack.enter_context(_create(
                storage.join(self.folder, _shard_name(shard, self.shards))))
            self.files[shard] = self.stack.enter_context(
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0))
        self.files[shard].write(b"".join(self.buffers[shard]))
        self.buffers[shard], self.sizes[shard] = [], 0

    def close(self) -> None:
        for shard in range(self.shards):
            if self.buffers[shard]:
                self.flush(shard)


def _slice_of(kind: str, payload: Any, request_id: Callable[[dict], str],
              slices: int) -> tuple[int, str, Any]:
    """(slice, kind, payload) of a row read by read_log_file in a day built in `slices`
    slices: crc32(request id) % slices, the request id as RowParser reads it (`request_id`:
    RowParser.request_id), so the slice
    of a row that is written divides its shard (crc32 % shards, shards a multiple of
    slices); slice 0 for a row without a valid request id. A JSON line comes back decoded
    (kind VALUE), unless it does not decode: then it is slice 0's, as it was."""
    if kind == TEXT:
        try:
            decoded = _decode_json(payload)
        except Exception:  # noqa: BLE001  slice 0 checks it again and quarantines it
            return 0, kind, payload
        kind, payload = VALUE, decoded
    if kind != VALUE or not isinstance(payload, dict):
        return 0, kind, payload
    try:
        key = request_id(payload)
    except RowError:
        return 0, kind, payload
    return zlib.crc32(key.encode("utf-8")) % slices, kind, payload


@contextlib.contextmanager
def _disk_errors(staging: str, source: str, date: str) -> Iterator[None]:
    """A full or read-only disk: the error names the day's staging folder (gzip's do not)."""
    try:
        yield
    except OSError as e:
        if e.filename or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise OSError(e.errno, e.strerror, _day_dir(staging, "examples", source, date)) from e


def _merge_partials(partials: list[dict]) -> dict:
    """The partial stats of a day's slices (in slice order) -> the day's: counts added, min
    and max taken, float sums added in slice order (equal to one pass's within rounding).
    Files, empty files and blank lines: slice 0's (every slice reads every file)."""
    first = partials[0]
    merged = {"files": first["files"], "empty_files": first["empty_files"],
              "blank_lines": first["blank_lines"], "shards": first["shards"],
              "slices": len(partials)}
    for key in ("rows_read", "rows_written", "clicks", "rows_quarantined"):
        merged[key] = sum(p[key] for p in partials)
    for key in ("quarantine_reasons", "dropped_columns"):
        merged[key] = dict(sum((collections.Counter(p[key]) for p in partials),
                               collections.Counter()))
    domains: dict[str, list[int]] = {}
    numeric: dict[str, list] = {}
    for p in partials:
        for key, (rows, clicks) in p["domains"].items():
            d = domains.setdefault(key, [0, 0])
            d[0] += rows
            d[1] += clicks
        for column, (count, total, total_sq, low, high) in p["numeric"].items():
            acc = numeric.get(column)
            if acc is None:
                numeric[column] = [count, total, total_sq, low, high]
            else:
                acc[0] += count
                acc[1] += total
                acc[2] += total_sq
                acc[3] = min(acc[3], low)
                acc[4] = max(acc[4], high)
    merged["domains"] = {k: tuple(v) for k, v in domains.items()}
    merged["numeric"] = {c: tuple(v) for c, v in numeric.items()}
    counts = [(name, collections.Counter()) for name, _ in first["counts"]]
    for p in partials:
        for (_, total), (_, part) in zip(counts, p["counts"], strict=True):
            total.update(part)
    merged["counts"] = counts
    return merged


def _write_counts(staging: str, source: str, date: str, partial: dict) -> None:
    """Token counts of each vocabulary feature -> `token<TAB>count` lines, count desc then
    token (a token with a line break cannot be a vocabulary line: it is left out)."""
    skipped = 0
    for name, counts in partial.pop("counts"):
        if not counts:
            continue
        ranked = sorted(((t, n) for t, n in counts.items() if "\n" not in t and "\r" not in t),
                        key=lambda kv: (-kv[1], kv[0]))
        path = storage.join(_day_dir(staging, "counts", source, date), f"{name}.tsv")
        _write_bytes(path, "".join(f"{t}\t{n}\n" for t, n in ranked).encode("utf-8"))
        skipped += len(counts) - len(ranked)
    if skipped:
        partial["tokens_with_line_breaks"] = skipped


def _write_partial(staging: str, source: str, date: str, partial: dict) -> None:
    """A day's token counts and partial stats (which _finish_day reads) into staging."""
    _write_counts(staging, source, date, partial)
    _write_bytes(_stats_file(staging, source, date),
                 json.dumps(_jsonable(partial), sort_keys=True).encode("utf-8"))


class _BuildDay(beam.DoFn):
    """One slice k of S of a (source, date) partition -> its example shards, quarantine file,
    token counts and partial stats, all written to the staging folder in one pass over the
    day's files: each row is read, validated, encoded and written once, in (file, line)
    order, into the shard count the driver set from the files' sizes. Of rows sharing a
    request id the first is kept; later ones are quarantined (the day's request ids are the
    only per-row state). A day of S > 1 slices (a large one, see _slice_count) is read by S
    calls, each keeping the rows of request-id hash k (see _slice_of): it writes the shards
    j with j % S == k and quarantine part-0000k.jsonl, and yields (day, (k, partial stats
    and token counts)) for _MergeSlices; a day of one slice writes its counts and stats."""

    def __init__(self, spec: Spec, days: list[DayRef], staging: str):
        self.spec = spec
        self.days = days
        self.staging = staging

    def setup(self) -> None:
        self.checker = _RowChecker(self.spec)
        self.vocab_features = [f for f in self.spec.features if f.uses_vocab]
        self.numeric_columns = _numeric_columns(self.spec)
        # domain_key(spec, row), inlined: the domain features' (column, default)
        self.domain_columns = [(f.column, f.default) for f in self.spec.domain_features]

    def process(self, element: tuple[int, int]) -> Iterator[Any]:
        day_id, part = element
        source, date, paths, shards, slices = self.days[day_id]
        with _disk_errors(self.staging, source, date):
            with contextlib.ExitStack() as stack:
                partial = self._write_day(source, date, paths, shards, stack, part, slices)
            if slices > 1:
                yield day_id, (part, partial)
            else:
                _write_partial(self.staging, source, date, partial)

    def _write_day(self, source: str, date: str, paths: list[str], shards: int,
                   stack: contextlib.ExitStack, part: int = 0, slices: int = 1) -> dict:
        check, day = self.checker.check, dt.date.fromisoformat(date)
        request_id_of = self.checker.encode.parser.request_id
        out = _Shards(_day_dir(self.staging, "examples", source, date), shards, stack)
        quarantine: list[Any] = []  # the open quarantine file, once there is a record

        def quarantined(path: str, line: int, reason: str, message: str, raw: Any) -> None:
            if not quarantine:
                quarantine.append(stack.enter_context(_create(storage.join(
                    _day_dir(self.staging, "quarantine", source, date), f"part-{part:05d}.jsonl"))))
            reasons[reason] += 1
            record = _quarantine_record(source, date, path, line, reason, message, raw)
            quarantine[0].write(record.encode("utf-8") + b"\n")

        kept: dict[str, int] = {}  # request id -> file number << 40 | line (no GC-tracked tuple)
        reasons: collections.Counter = collections.Counter()
        dropped: collections.Counter = collections.Counter()
        domains: dict[str, list[int]] = {}
        numeric = [(c, [0, 0.0, 0.0, math.inf, -math.inf]) for c in self.numeric_columns]
        # token counts: values gathered per feature, counted by one call per 64k rows
        counts = [(f.column, collections.Counter(), []) for f in self.vocab_features]
        domain_columns = self.domain_columns

        def count_tokens() -> None:
            for _, counter, tokens in counts:
                counter.update(tokens)
                tokens.clear()
        empty, rows_read, blank_lines, clicks = [], 0, 0, 0
        for file_no, path in enumerate(paths):
            counters = _FileCounters()
            rows = seen = 0
            for line, kind, payload in read_log_file(path, counters):
                seen += 1
                checked = payload
                if slices > 1:
                    mine, kind, checked = _slice_of(kind, payload, request_id_of, slices)
                    if mine != part:
                        continue
                rows += 1
                if not rows & 0xFFFF:  # bounded memory: count the gathered tokens
                    count_tokens()
                try:
                    parsed, serialized = check(kind, checked, day)
                except RowError as e:
                    quarantined(path, line, e.reason, str(e), payload[2] if kind == ERROR
                                else payload)
                    continue
                request_id = parsed.request_id
                first = kept.get(request_id)
                if first is not None:
                    quarantined(path, line, "duplicate_request_id",
                                f"request_id {request_id[:100]!r} already seen at "
                                f"{paths[first >> 40]}:{first & (1 << 40) - 1}; the first "
                                f"occurrence is kept", payload)
                    continue
                kept[request_id] = file_no << 40 | line
                out.write(zlib.crc32(request_id.encode("utf-8")) % shards, serialized)
                label, values = parsed.label, parsed.values
                clicks += label
                domain = "|".join([str(values.get(c, default))
                                   for c, default in domain_columns]) or "all"
                d = domains.get(domain)
                if d is None:
                    domains[domain] = [1, label]
                else:
                    d[0] += 1
                    d[1] += label
                for column, acc in numeric:
                    x = values.get(column)
                    if x is not None:
                        acc[0] += 1
                        acc[1] += x
                        acc[2] += x * x
                        if x < acc[3]:
                            acc[3] = x
                        if x > acc[4]:
                            acc[4] = x
                for column, _, tokens in counts:
                    value = values.get(column)
                    if value is not None:
                        if value.__class__ is str:
                            tokens.append(value)
                        else:
                            tokens.extend(value)
                if parsed.dropped_columns:
                    dropped.update(parsed.dropped_columns)
            count_tokens()
            rows_read += rows
            blank_lines += counters.blank_lines
            if not seen:
                empty.append(path)
        out.close()
        return {"files": list(paths), "empty_files": empty, "rows_read": rows_read,
                "blank_lines": blank_lines, "shards": shards, "rows_written": len(kept),
                "clicks": clicks, "rows_quarantined": sum(reasons.values()),
                "quarantine_reasons": dict(reasons), "dropped_columns": dict(dropped),
                "domains": {k: tuple(v) for k, v in domains.items()},
                "numeric": {c: tuple(s) for c, s in numeric if s[0]},
                "counts": [(f.name, counter) for f, (_, counter, _)
                           in zip(self.vocab_features, counts, strict=True)]}


class _MergeSlices(beam.DoFn):
    """A sliced day's (day, [(slice, partial stats and token counts)]) -> its token counts and
    partial stats in staging, as one pass over the day writes them."""

    def __init__(self, days: list[DayRef], staging: str):
        self.days = days
        self.staging = staging

    def process(self, element: tuple[int, Any]) -> Iterator[Any]:
        day_id, parts = element
        source, date, _, _, slices = self.days[day_id]
        partials = [partial for _, partial in sorted(parts, key=lambda kv: kv[0])]
        if len(partials) != slices:
            raise RuntimeError(f"{source} {date}: {len(partials)} of {slices} slices built")
        with _disk_errors(self.staging, source, date):
            _write_partial(self.staging, source, date, _merge_partials(partials))
        return iter(())


def _pipeline(p: beam.Pipeline, spec: Spec, days: list[DayRef], staging: str) -> None:
    """Every slice of a day (one for most days) is one element, built by one _BuildDay call;
    Reshuffle spreads them over the workers (the DirectRunner deals them out in order: pass
    the largest days first). The partial stats of sliced days meet in _MergeSlices."""
    _ = (p
         | "Days" >> beam.Create([(i, k) for i, day in enumerate(days) for k in range(day[4])])
         | "SpreadDays" >> beam.Reshuffle()
         | "BuildDays" >> beam.ParDo(_BuildDay(spec, days, staging))
         | "GroupSlices" >> beam.GroupByKey()
         | "MergeSlices" >> beam.ParDo(_MergeSlices(days, staging)))


# ---------------------------------------------------------------- driver

def built_partitions(work: str, source: str) -> list[dt.date]:
    """Dates whose stats file exists (= the day was built completely)."""
    dates = []
    for path in storage.glob(_stats_file(work, source, "*")):
        try:
            dates.append(dt.date.fromisoformat(storage.basename(path)[:-len(".json")]))
        except ValueError:
            continue
    return sorted(dates)


def _find_partitions(logs: str, sources: Sequence[str], start: dt.date | None,
                     end: dt.date | None, log: Callable[[str], None],
                     unreadable: dict[tuple[str, str], list[dict]],
                     inputs: dict[tuple[str, str], list] | None = None,
                     ) -> dict[tuple[str, str], list[str]]:
    """(source, date) -> its log files, for partition folders within [start, end]. Log files
    that cannot be read (see _unreadable) are left out and recorded in `unreadable`; `inputs`
    gets each partition's [path, size, modification time] list."""
    found: dict[tuple[str, str], list[str]] = {}
    metadata: dict[str, list] = {}
    for source in sources:
        pattern = storage.join(logs, source, "date=*", "*")
        folders: dict[str, list[str]] = collections.defaultdict(list)
        for m in FileSystems.match([pattern])[0].metadata_list:
            folders[storage.dirname(m.path)].append(m.path)
            metadata[m.path] = [m.size_in_bytes, round(m.last_updated_in_seconds or 0, 3)]
        local = storage.join(logs, source)
        if not storage.is_remote(logs):  # folders without files are invisible to FileSystems.match
            for name in storage.listdir(local):
                if name.startswith("date=") and storage.isdir(storage.join(local, name)):
                    folders.setdefault(storage.join(local, name), [])
        if not folders:
            log(f"no partitions for source {source!r}: nothing matches {pattern}")
        for folder in sorted(folders):
            name = storage.basename(folder)
            try:
                date = dt.date.fromisoformat(name[len("date="):])
            except ValueError:
                log(f"skipping {folder}: the folder name is not date=YYYY-MM-DD")
                continue
            if (start and date < start) or (end and date > end):
                continue
            paths = sorted(set(folders[folder]) | set(_local_entries(folder)))
            logs_here = [p for p in paths if storage.basename(p).lower().endswith(LOG_SUFFIXES)]
            bad = [(p, reason) for p in logs_here if (reason := _unreadable(p))]
            for p, reason in bad:
                log(f"error: {p} is not a readable log file ({reason}); it is left out of "
                    f"{source} {date} and listed in the day's stats as unreadable_files. Fix: "
                    f"replace it with the log file, then rebuild the day")
            if bad:
                unreadable[(source, date.isoformat())] = [{"path": p, "reason": r} for p, r in bad]
                logs_here = [p for p in logs_here if p not in dict(bad)]
            for p in paths:
                if p not in logs_here:
                    log(f"skipping {p}: not a log file (expected one of {', '.join(LOG_SUFFIXES)})")
            if not logs_here:
                log(f"{'error: ' if bad else ''}skipping partition {folder}: it holds no "
                    f"{'readable ' if bad else ''}log files")
                continue
            found[(source, date.isoformat())] = logs_here
            if inputs is not None:
                inputs[(source, date.isoformat())] = [[p, *metadata.get(p, [None, None])]
                                                      for p in logs_here]
    return found


def _changed_inputs(before: list, now: list) -> str:
    """What changed between the inputs a day was built from and those there now ('' if none):
    files added, removed, or with another size or modification time (late data)."""
    old = {p: (size, mtime) for p, size, mtime in before}
    new = {p: (size, mtime) for p, size, mtime in now}
    parts = [f"{label} {', '.join(storage.basename(p) for p in sorted(paths))}"
             for label, paths in (("added", set(new) - set(old)), ("removed", set(old) - set(new)),
                                  ("changed", {p for p in set(old) & set(new) if old[p] != new[p]}))
             if paths]
    return "; ".join(parts)


def _local_entries(folder: str) -> list[str]:
    """Every entry of a local partition folder, files or not (FileSystems.match leaves out
    what it cannot stat: dangling symlinks, symlink loops)."""
    if storage.is_remote(folder):
        return []
    try:
        return [os.path.join(folder, name) for name in os.listdir(folder)]
    except OSError:
        return []


def _unreadable(path: str) -> str | None:
    """Why a local log path cannot be read as a file (None: it can, or it is remote): a
    dangling symlink, a symlink loop, a folder, a FIFO (reading it would block the build
    forever), a device or socket, or no read permission."""
    if storage.is_remote(path):
        return None
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except OSError as e:
        kind = "a symlink loop" if e.errno == errno.ELOOP else (
            "a dangling symlink" if os.path.islink(path) else e.strerror)
        return f"{kind}: {e.strerror}"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if not stat.S_ISREG(mode):
        return "not a regular file (a device or socket)"
    if not os.access(path, os.R_OK):
        return "no read permission"
    return None


def _clean_staging(work: str, log: Callable[[str], None]) -> None:
    root = storage.join(work, STAGING)
    if storage.is_remote(root):  # object stores: the runs that left files behind
        prefix = root.rstrip("/") + "/"
        names = {path[len(prefix):].split("/", 1)[0] for path in _files_under(root)}
    else:
        names = set(storage.listdir(root))
    for name in sorted(names):
        log(f"deleting leftovers of an unfinished build: {storage.join(root, name)}")
        _delete_tree(storage.join(root, name))


def _complete_day(spec: Spec, run_dir: str, staged: set[str], source: str, date: str,
                  shards: int) -> None:
    """Fills what the pipeline writes only when there is data: empty shards, quarantine, counts.
    staged: the files the pipeline wrote (one listing, not one request per file)."""
    examples = _day_dir(run_dir, "examples", source, date)
    _makedirs(examples)
    for shard in range(shards):
        path = storage.join(examples, _shard_name(shard, shards))
        if path not in staged:
            with _create(path) as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0):
                pass
    _makedirs(_day_dir(run_dir, "quarantine", source, date))
    quarantine = storage.join(_day_dir(run_dir, "quarantine", source, date), "part-00000.jsonl")
    if quarantine not in staged:
        _write_bytes(quarantine, b"")
    counts = _day_dir(run_dir, "counts", source, date)
    _makedirs(counts)
    for f in spec.features:
        path = storage.join(counts, f"{f.name}.tsv")
        if f.uses_vocab and path not in staged:
            _write_bytes(path, b"")


def _final_stats(spec: Spec, partial: dict, source: str, date: str, shards: int,
                 seconds: float) -> dict:
    written = partial.get("rows_written", 0)
    clicks = partial.get("clicks", 0)
    numeric = {}
    for column in _numeric_columns(spec):
        count, total, total_sq, low, high = partial.get("numeric", {}).get(
            column, (0, 0.0, 0.0, None, None))
        numeric[column] = {"count": count, "sum": total, "sumsq": total_sq,
                           "min": low if count else None, "max": high if count else None}
    stats = {
        "source": source, "date": date,
        "files": sorted(partial.get("files", [])),
        "empty_files": sorted(partial.get("empty_files", [])),
        "rows_read": partial.get("rows_read", 0),
        "rows_written": written,
        "rows_quarantined": partial.get("rows_quarantined", 0),
        "quarantine_reasons": dict(sorted(partial.get("quarantine_reasons", {}).items())),
        "dropped_columns": dict(sorted(partial.get("dropped_columns", {}).items())),
        "blank_lines": partial.get("blank_lines", 0),
        "clicks": clicks,
        "ctr": clicks / written if written else 0.0,
        "domains": {k: {"rows": v[0], "clicks": v[1]}
                    for k, v in sorted(partial.get("domains", {}).items())},
        "numeric": numeric,
        "shards": shards,
        "spec_fingerprint": spec.fingerprint,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }
    if partial.get("slices", 1) > 1:
        stats["slices"] = partial["slices"]
    if partial.get("tokens_with_line_breaks"):
        stats["tokens_with_line_breaks"] = partial["tokens_with_line_breaks"]
    return stats


def _publish(work: str, run_dir: str, days: list[dict]) -> None:
    """Puts the built days in place. A day's stats file lands after all its data, so it marks
    a whole day: readers (built_partitions) take a day without it as not built."""
    if _has_dirs(work):
        for stats in days:
            _publish_day(work, run_dir, stats)
    else:
        _publish_objects(work, run_dir, days)


def _publish_day(work: str, run_dir: str, stats: dict) -> None:
    """Where folders exist (local, HDFS): each folder of the day swapped in by renames."""
    source, date = stats["source"], stats["date"]
    final_stats = _stats_file(work, source, date)
    if FileSystems.exists(final_stats):
        FileSystems.delete([final_stats])  # the day counts as unbuilt until its new stats land
    replaced = storage.join(run_dir, "replaced")
    for kind in PUBLISHED:
        final = _day_dir(work, kind, source, date)
        if FileSystems.exists(final):
            _move_folder(final, _day_dir(replaced, kind, source, date))
        _move_folder(_day_dir(run_dir, kind, source, date), final)
    _makedirs(storage.dirname(final_stats))
    tmp = f"{final_stats}.tmp-{os.getpid()}"  # a reader sees the whole file or none
    _write_bytes(tmp, json.dumps(stats, indent=1).encode("utf-8"), sync=True)
    FileSystems.rename([tmp], [final_stats])
    _delete_tree(replaced)


def _publish_objects(work: str, run_dir: str, days: list[dict]) -> None:
    """Object stores (no folders, no atomic rename), all days at once, since every request
    costs: their old stats go, then their old objects, the new ones are moved in (copy, then
    delete) and the stats files are written last, each one PUT that appears whole."""
    keys = [(s["source"], s["date"]) for s in days]
    sources = sorted({source for source, _ in keys})
    wanted = {_stats_file(work, source, date) for source, date in keys}
    old_stats = [p for p in _match([_stats_file(work, s, "*") for s in sources]) if p in wanted]
    if old_stats:
        FileSystems.delete(old_stats)
    folders = tuple(_day_dir(work, kind, source, date) + "/"
                    for kind in PUBLISHED for source, date in keys)
    trees = [storage.join(work, kind, source, "**") for kind in PUBLISHED for source in sources]
    old = [p for p in _match(trees) if p.startswith(folders)]
    if old:
        FileSystems.delete(old)
    prefix = run_dir.rstrip("/") + "/"
    new = [p for p in _files_under(run_dir) if p[len(prefix):].split("/", 1)[0] in PUBLISHED]
    if new:
        FileSystems.rename(new, [storage.join(work, p[len(prefix):]) for p in new])
    for stats in days:
        _write_bytes(_stats_file(work, stats["source"], stats["date"]),
                     json.dumps(stats, indent=1).encode("utf-8"))


def _pipeline_args(beam_args: Sequence[str], paths: Sequence[str]) -> list[str]:
    """beam_args, plus Beam's S3 options from the standard AWS variables when a path is on
    s3:// (each only if beam_args does not set it already)."""
    args = list(beam_args)
    if any(storage.scheme(p) == "s3" for p in paths):
        given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        args += [o for o in storage.beam_s3_options() if o.split("=", 1)[0] not in given]
    return args


@contextlib.contextmanager
def build_lock(work: str, lock: str | None, log: Callable[[str], None]) -> Iterator[None]:
    """Refuses a second build on the same work folder while one runs: a flock on `lock` (a
    local file) or, if None and work is local, on <work>/.build.lock. A remote work folder
    without `lock` is not locked (object stores have no flock): a warning says so."""
    if lock is None and storage.is_remote(work):
        log(f"warning: {work} is not a local folder and no lock file was given, so this build "
            f"takes no lock; running one build at a time on it is the operator's job")
        yield
        return
    path = lock or storage.join(work, ".build.lock")
    with file_lock.exclusive(path, f"another build in {work}"):
        yield


def _pipeline_runner(options: PipelineOptions) -> tuple[Any, str]:
    """The runner to use and its name for the log. Beam's DirectRunner first tries Prism,
    which downloads a binary at run time; the local default is therefore the DirectRunner's
    own in-process engine (FnApiRunner), which honours --direct_num_workers and
    --direct_running_mode. Any other --runner is passed through as given."""
    name = options.view_as(StandardOptions).runner
    if name in (None, "DirectRunner"):
        return FnApiRunner(), "DirectRunner (in-process FnApiRunner)"
    return None, name


def build(spec: Spec, logs: str, work: str, start: dt.date | None = None,
          end: dt.date | None = None, sources: Sequence[str] = SOURCES,
          beam_args: Sequence[str] = (), skip_built: bool = False,
          log: Callable[[str], None] = print, shard_bytes: int = SHARD_BYTES,
          lock: str | None = None, slice_bytes: int = SLICE_BYTES) -> list[dict]:
    """Runs ONE Apache Beam pipeline over all (source, date) partitions of raw logs found under
    logs/<source>/date=YYYY-MM-DD/ within [start, end] (inclusive; None = unbounded), returns the
    per-partition stats dicts (also written to disk). skip_built=True leaves partitions whose stats
    file already exists alone. A day's examples are split by hash of request_id into
    ceil(input bytes / shard_bytes) shards (at least 1; see _shard_count: the sizes of its
    log files as found, .gz and .parquet ones weighted COMPRESSED_WEIGHT times). A day of
    at least slice_bytes such bytes is built in S = ceil(bytes / slice_bytes) slices by
    request-id hash, each on one worker reading the whole day, its shard count rounded up to
    a multiple of S (see _BuildDay): the same Examples in the same shards as one pass.

    `logs` and `work` may be local folders or URIs on any Beam file system (s3://, gs://,
    hdfs://); on a cluster both must be reachable from the workers. The workers write into
    <work>/.staging/<run id>/; the driver then publishes each day (see _publish). Beam's S3
    options are added from the AWS variables when a path is on s3://. `lock`: a local lock
    file (see build_lock)."""
    if start and end and start > end:
        raise ValueError(f"start {start} is after end {end}")
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    if slice_bytes < 1:
        raise ValueError(f"slice_bytes must be >= 1, got {slice_bytes}")
    logs, work = storage.absolute(logs), storage.absolute(work)
    options = PipelineOptions(_pipeline_args(beam_args, (logs, work)))
    FileSystems.set_options(options)  # the driver's own FileSystems calls reach the same stores
    unreadable: dict[tuple[str, str], list[dict]] = {}
    inputs: dict[tuple[str, str], list] = {}
    partitions = _find_partitions(logs, sources, start, end, log, unreadable, inputs)
    if not partitions:
        window = f" between {start or '-inf'} and {end or '+inf'}" if start or end else ""
        raise ValueError(f"no log partitions found under {logs!r} for sources {list(sources)}"
                         f"{window}. Expected layout: {LAYOUT}")
    if skip_built:
        built = {(s, d.isoformat()) for s in sources for d in built_partitions(work, s)}
        for key in sorted(set(partitions) & built):
            before = json.loads(_read_bytes(_stats_file(work, *key))).get("inputs")
            changed = _changed_inputs(before, inputs[key]) if before is not None else ""
            if changed:  # late data: logs arrived or changed after the day was built
                log(f"rebuilding {key[0]} {key[1]}: its logs changed since it was built ({changed})")
                continue
            log(f"skipping {key[0]} {key[1]}: already built (stats file exists)")
            del partitions[key]
        if not partitions:
            log("nothing to build: every partition found is already built")
            return []
    sizes = {key: sum(size or 0 for _, size, _ in inputs.get(key, [])) for key in partitions}
    days: list[DayRef] = []
    for (s, d), paths in sorted(partitions.items(), key=lambda kv: (-sizes[kv[0]], kv[0])):
        found = inputs.get((s, d), [])
        slices = _slice_count(found, slice_bytes)
        shards = math.ceil(_shard_count(found, shard_bytes) / slices) * slices
        if slices > 1:
            log(f"{s} {d}: {_weighted_bytes(found):,} weighted input bytes >= slice_bytes {slice_bytes:,}: "
                f"built in {slices} slices by request-id hash ({shards} shards), each reading "
                f"the whole day")
        days.append((s, d, paths, shards, slices))
    per_source = collections.Counter(s for s, _ in partitions)
    log(f"found {sum(len(p) for p in partitions.values())} log files in {len(partitions)} "
        f"partitions ("
        + ", ".join(f"{s}: {n} days" for s, n in sorted(per_source.items())) + ")")
    _makedirs(work)
    with build_lock(work, lock, log):
        _clean_staging(work, log)
        run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        run_dir = storage.join(work, STAGING, run_id)
        _makedirs(run_dir)
        seconds = _run_pipeline(spec, days, run_dir, options, log)
        staged = set(_files_under(run_dir))
        results = [_finish_day(spec, run_dir, staged, source, date, seconds)
                   for source, date in sorted(partitions)]
        for stats in results:
            stats["unreadable_files"] = unreadable.get((stats["source"], stats["date"]), [])
            stats["inputs"] = inputs.get((stats["source"], stats["date"]), [])
        _publish(work, run_dir, results)
        _delete_tree(run_dir)
    _report(results, seconds, log)
    for source in sorted({r["source"] for r in results}):  # each new day vs the days before it
        days = [dt.date.fromisoformat(r["date"]) for r in results if r["source"] == source]
        drift.check_days(work, spec, source, days, built_partitions(work, source), log)
    return results


def _run_pipeline(spec: Spec, days: list[DayRef], run_dir: str, options: PipelineOptions,
                  log: Callable[[str], None]) -> float:
    runner, runner_name = _pipeline_runner(options)
    log(f"pipeline starting ({runner_name}), staging in {run_dir}")
    began = time.monotonic()
    pipeline = beam.Pipeline(runner=runner, options=options)
    _pipeline(pipeline, spec, days, run_dir)
    pipeline.run().wait_until_finish()
    seconds = time.monotonic() - began
    log(f"pipeline finished in {seconds:.1f} s")
    return seconds


def _finish_day(spec: Spec, run_dir: str, staged: set[str], source: str, date: str,
                seconds: float) -> dict:
    """The day's final stats from the pipeline's partial ones; checks that every row is counted."""
    partial = json.loads(_read_bytes(_stats_file(run_dir, source, date)))
    # The shard count comes from the files' sizes when they were found; when a log file grew
    # since, the day holds the rows read, in that many shards (every row once), and the
    # inputs recorded at discovery make the next --skip_built build rebuild it.
    shards = partial["shards"]
    stats = _final_stats(spec, partial, source, date, shards, seconds)
    if stats["rows_read"] != stats["rows_written"] + stats["rows_quarantined"]:
        raise RuntimeError(
            f"{source} {date}: rows_read {stats['rows_read']} != rows_written "
            f"{stats['rows_written']} + rows_quarantined {stats['rows_quarantined']}; "
            f"nothing was published (staging left in {run_dir})")
    _complete_day(spec, run_dir, staged, source, date, shards)
    return stats


def _report(results: list[dict], seconds: float, log: Callable[[str], None]) -> None:
    total_read = sum(s["rows_read"] for s in results)
    log(f"published {len(results)} partitions: {total_read} rows read in {seconds:.1f} s, "
        f"{total_read / max(seconds, 1e-9):,.0f} rows/s")
    for s in results:
        reasons = ", ".join(f"{k} {v}" for k, v in s["quarantine_reasons"].items())
        log(f"  {s['source']} {s['date']}: read {s['rows_read']} = written {s['rows_written']} "
            f"+ quarantined {s['rows_quarantined']}" + (f" ({reasons})" if reasons else "")
            + (f"; empty files: {len(s['empty_files'])}" if s["empty_files"] else ""))
    log(f"  total: read {total_read} = written {sum(s['rows_written'] for s in results)} "
        f"+ quarantined {sum(s['rows_quarantined'] for s in results)} "
        f"in {len(results)} partitions")
