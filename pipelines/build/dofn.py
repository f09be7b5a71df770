"""The Beam steps of the build: each day (or slice of a large day) read, checked, encoded and
written to staging in one pass by one worker; the slices of a day merged. The workers load no
TensorFlow: files go through Beam's FileSystems, records are framed here."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from ecdctr.data.readers import (
    ERROR,
    TEXT,
    VALUE,
    FileCounters,
    RowChecker,
    decode_json,
    jsonable,
    read_log_file,
)
from ecdctr.data.rows import RowError
from ecdctr.io import beam_files, layout, storage
from ecdctr.io.tfrecord import ShardWriter
from ecdctr.spec.feature_spec import Spec
from pipelines.build.discovery import Day
from pipelines.build.stats import DayStats


def quarantine_record(source: str, date: str, path: str, line: int, reason: str, message: str,
                      raw: Any) -> str:
    """One line of a day's quarantine file (JSON, no newline)."""
    return json.dumps({"source": source, "date": date, "file": path, "line": line,
                       "reason": reason, "message": message, "row": jsonable(raw)},
                      allow_nan=False)


def slice_of(kind: str, payload: Any, request_id: Callable[[dict], str],
             slices: int) -> tuple[int, str, Any]:
    """(slice, kind, payload) of a row read by read_log_file in a day built in `slices`
    slices: crc32(request id) % slices, the request id as RowParser reads it (`request_id`:
    RowParser.request_id), so the slice of a row that is written divides its shard (crc32 %
    shards, shards a multiple of slices); slice 0 for a row without a valid request id. A
    JSON line comes back decoded (kind VALUE), unless it does not decode: then it is slice
    0's, as it was."""
    if kind == TEXT:
        try:
            decoded = decode_json(payload)
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
def _disk_errors(staging: str, day: Day) -> Iterator[None]:
    """A full or read-only disk: the error names the day's staging folder (gzip's do not)."""
    try:
        yield
    except OSError as e:
        if e.filename or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise OSError(e.errno, e.strerror,
                      layout.examples_folder(staging, day.source, day.date)) from e


class _SliceWriter:
    """Slice `part` of a day being written: its shards, its quarantine file (opened at its
    first record) and its stats. Of rows sharing a request id the first is kept; later ones
    are quarantined (the day's request ids are the only per-row state)."""

    def __init__(self, day: Day, part: int, staging: str, checker: RowChecker, stats: DayStats,
                 stack: contextlib.ExitStack):
        self.day, self.part, self.stats, self.stack = day, part, stats, stack
        self.check, self.date = checker.check, dt.date.fromisoformat(day.date)
        self.request_id_of = checker.encode.parser.request_id
        self.max_line_bytes = checker.max_line_bytes
        self.shards = ShardWriter(layout.examples_folder(staging, day.source, day.date),
                                  day.shards, stack)
        self.quarantine_path = storage.join(layout.quarantine_folder(staging, day.source, day.date),
                                            f"part-{part:05d}.jsonl")
        self.quarantine_file: Any = None
        self.kept: dict[str, int] = {}  # request id -> file number << 40 | line (no GC-tracked tuple)

    def read_file(self, file_no: int, path: str) -> None:
        """Takes this slice's rows of one log file, in line order."""
        counters = FileCounters()
        rows = seen = 0
        slices, part = self.day.slices, self.part
        for line, kind, payload in read_log_file(path, counters, self.max_line_bytes):
            seen += 1
            checked = payload
            if slices > 1:
                mine, kind, checked = slice_of(kind, payload, self.request_id_of, slices)
                if mine != part:
                    continue
            rows += 1
            self.take(file_no, path, line, kind, payload, checked)
        self.stats.file_read(path, rows, counters.blank_lines, empty=not seen)

    def take(self, file_no: int, path: str, line: int, kind: str, payload: Any,
             checked: Any) -> None:
        """One row: written to its shard, or quarantined (as read: `payload`)."""
        try:
            parsed, serialized = self.check(kind, checked, self.date)
        except RowError as e:
            self.quarantine(path, line, e.reason, str(e), payload[2] if kind == ERROR else payload)
            return
        request_id = parsed.request_id
        first = self.kept.get(request_id)
        if first is not None:
            self.quarantine(path, line, "duplicate_request_id",
                            f"request_id {request_id[:100]!r} already seen at "
                            f"{self.day.paths[first >> 40]}:{first & (1 << 40) - 1}; the first "
                            f"occurrence is kept", payload)
            return
        self.kept[request_id] = file_no << 40 | line
        self.shards.write(zlib.crc32(request_id.encode("utf-8")) % self.day.shards, serialized)
        self.stats.add(parsed)

    def quarantine(self, path: str, line: int, reason: str, message: str, raw: Any) -> None:
        """Writes one quarantine record."""
        if self.quarantine_file is None:
            self.quarantine_file = self.stack.enter_context(beam_files.create(self.quarantine_path))
        self.stats.quarantined(reason)
        record = quarantine_record(self.day.source, self.day.date, path, line, reason, message, raw)
        self.quarantine_file.write(record.encode("utf-8") + b"\n")


class _StagingDoFn(beam.DoFn):
    """A DoFn of the build: it reaches the logs and staging through Beam's FileSystems with
    the pipeline's own options (S3 endpoint and keys, ...). Runners on Beam's SDK harness give
    the harness's FileSystems those options; others do not (DaskRunner: its workers would use
    boto3's defaults), so setup() gives them, the same on every runner."""

    def __init__(self, spec: Spec, days: list[Day], staging: str,
                 options: PipelineOptions | None = None):
        self.spec = spec
        self.days = days
        self.staging = staging
        self.options = options

    def setup(self) -> None:
        if self.options is not None:
            FileSystems.set_options(self.options)


class BuildDay(_StagingDoFn):
    """One slice k of S of a day -> its example shards, quarantine file, token counts and
    stats, all written to the staging folder in one pass over the day's files: each row is
    read, validated, encoded and written once, in (file, line) order, into the shard count
    the driver set from the files' sizes. A day of S > 1 slices (a large one, see
    discovery.slice_count) is read by S calls, each keeping the rows of request-id hash k
    (see slice_of): it writes the shards j with j % S == k and quarantine part-0000k.jsonl,
    and yields (day, (k, its DayStats)) for MergeSlices; a day of one slice writes its
    counts and stats."""

    def setup(self) -> None:
        super().setup()
        self.checker = RowChecker(self.spec)
        beam_files.bound_retries()  # a worker process of its own has not run configure()

    def process(self, element: tuple[int, int]) -> Iterator[Any]:
        day_id, part = element
        day = self.days[day_id]
        with _disk_errors(self.staging, day):
            stats = self.write_slice(day, part)
            if day.slices > 1:
                yield day_id, (part, stats)
            else:
                stats.write(self.staging, day.source, day.date)

    def write_slice(self, day: Day, part: int) -> DayStats:
        """Writes slice `part` of `day` (all of it if it has one slice); returns its stats."""
        stats = DayStats(self.spec, day.shards)
        with contextlib.ExitStack() as stack:
            writer = _SliceWriter(day, part, self.staging, self.checker, stats, stack)
            for file_no, path in enumerate(day.paths):
                writer.read_file(file_no, path)
            writer.shards.close()
            stats.shard_files = writer.shards.records()
        stats.count_tokens()
        return stats


class MergeSlices(_StagingDoFn):
    """A sliced day's (day, [(slice, DayStats)]) -> its token counts and stats in staging, as
    one pass over the day writes them."""

    def process(self, element: tuple[int, Any]) -> Iterator[Any]:
        day_id, parts = element
        day = self.days[day_id]
        slices = [stats for _, stats in sorted(parts, key=lambda kv: kv[0])]
        if len(slices) != day.slices:
            raise RuntimeError(f"{day.source} {day.date}: {len(slices)} of {day.slices} "
                               f"slices built")
        with _disk_errors(self.staging, day):
            DayStats.merged(self.spec, slices).write(self.staging, day.source, day.date)
        return iter(())


def add_build_steps(p: beam.Pipeline, spec: Spec, days: list[Day], staging: str) -> None:
    """Every slice of a day (one for most days) is one element, built by one BuildDay call;
    Reshuffle spreads them over the workers (the DirectRunner deals them out in order: pass
    the largest days first). The stats of sliced days meet in MergeSlices. Both steps carry
    the pipeline's options to their workers' file systems."""
    options = p.options
    _ = (p
         | "Days" >> beam.Create([(i, k) for i, day in enumerate(days) for k in range(day.slices)])
         | "SpreadDays" >> beam.Reshuffle()
         | "BuildDays" >> beam.ParDo(BuildDay(spec, days, staging, options))
         | "GroupSlices" >> beam.GroupByKey()
         | "MergeSlices" >> beam.ParDo(MergeSlices(spec, days, staging, options)))
