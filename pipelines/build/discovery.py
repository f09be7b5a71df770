"""What a build will build: the days of raw logs found, less those already built and unchanged,
each with its shard and slice counts, read from the sizes of its log files as found."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ecdctr.data.built_days import SHARDS, shard_damage, shard_records
from ecdctr.data.log_partitions import LOGS_LAYOUT, Partition, find_partitions
from ecdctr.io import beam_files, layout, storage
from ecdctr.io.jsonio import DamagedFile, json_object

logger = logging.getLogger(__name__)

SHARD_BYTES = 64 << 20  # default input bytes per TFRecord shard of a day (see shard_count)
# A day of at least this many weighted input bytes is built in slices by request-id hash
# (see slice_count). The simulator's JSON rows weigh ~330 bytes each (285 bytes a row,
# gzip 6.9x, weighted 8x), small rows and so many rows a byte: 2 GiB is ~6.5M of them,
# whose per-row state (~250 bytes a row measured: request ids, token counters) stays
# ~1.6 GB on the worker building a slice; wider production rows give fewer rows a slice.
SLICE_BYTES = 2 << 30
COMPRESSED_WEIGHT = 8  # a .gz or .parquet byte counts as this many (JSON and CSV gzip ~8-10x)


@dataclass(frozen=True)
class Day:
    """One (source, date) partition to build: its log files in path order, its shard count
    and in how many slices it is built (shards is a multiple of slices)."""

    source: str
    date: str  # YYYY-MM-DD
    paths: tuple[str, ...]
    shards: int
    slices: int = 1


@dataclass
class BuildPlan:
    """The days a build will build, largest first (the DirectRunner deals them out in
    order), and what discovery recorded of every partition found: its log files as
    [path, size, modification time] and the log files it could not read."""

    days: list[Day]
    inputs: dict[Partition, list] = field(default_factory=dict)
    unreadable: dict[Partition, list[dict]] = field(default_factory=dict)


def input_bytes(path: str, size: int | None) -> int:
    """A log file's weight in the shard count: its stored size, compressed files (.gz,
    .parquet) counted COMPRESSED_WEIGHT times, so a day gets about as many shards stored
    either way."""
    name = path.lower()
    return (size or 0) * (COMPRESSED_WEIGHT if name.endswith((".gz", ".parquet")) else 1)


def weighted_bytes(inputs: list) -> int:
    """A day's weighted input bytes from its inputs as found (path, size, mtime)."""
    return sum(input_bytes(path, size) for path, size, _ in inputs)


def shard_count(inputs: list, shard_bytes: int) -> int:
    """A day's shard count from its inputs as found (path, size, mtime), read from no file:
    ceil(weighted input bytes / shard_bytes), at least 1. The same inputs give the same
    count, and the sizes it comes from are in the day's stats ("inputs")."""
    return max(1, math.ceil(weighted_bytes(inputs) / shard_bytes))


def slice_count(inputs: list, slice_bytes: int) -> int:
    """In how many slices a day is built: 1 below slice_bytes weighted input bytes (the
    measure of shard_count), else ceil(bytes / slice_bytes)."""
    total = weighted_bytes(inputs)
    return 1 if total < slice_bytes else math.ceil(total / slice_bytes)


def changed_inputs(before: list, now: list) -> str:
    """What changed between the inputs a day was built from and those there now ('' if none):
    files added, removed, or with another size or modification time (late data)."""
    old = {p: (size, mtime) for p, size, mtime in before}
    new = {p: (size, mtime) for p, size, mtime in now}
    parts = [f"{label} {', '.join(storage.basename(p) for p in sorted(paths))}"
             for label, paths in (("added", set(new) - set(old)), ("removed", set(old) - set(new)),
                                  ("changed", {p for p in set(old) & set(new) if old[p] != new[p]}))
             if paths]
    return "; ".join(parts)


def find_days(logs: str, work: str, sources: Sequence[str], start: dt.date | None,
              end: dt.date | None, skip_built: bool = False,
              shard_bytes: int = SHARD_BYTES, slice_bytes: int = SLICE_BYTES) -> BuildPlan:
    """The days of logs under logs/<source>/date=YYYY-MM-DD/ within [start, end] (None =
    unbounded) to build (see BuildPlan); ValueError if there are none. skip_built=True
    leaves out the days built already whose log files have not changed since."""
    plan = BuildPlan([])
    partitions = find_partitions(logs, sources, start, end, plan.unreadable, plan.inputs)
    if not partitions:
        window = f" between {start or '-inf'} and {end or '+inf'}" if start or end else ""
        raise ValueError(f"no log partitions found under {logs!r} for sources {list(sources)}"
                         f"{window}. Expected layout: {LOGS_LAYOUT}")
    if skip_built:
        _leave_out_built(work, sources, partitions, plan.inputs)
        if not partitions:
            return plan
    sizes = {key: sum(size or 0 for _, size, _ in plan.inputs.get(key, [])) for key in partitions}
    for (s, d), paths in sorted(partitions.items(), key=lambda kv: (-sizes[kv[0]], kv[0])):
        found = plan.inputs.get((s, d), [])
        slices = slice_count(found, slice_bytes)
        shards = math.ceil(shard_count(found, shard_bytes) / slices) * slices
        if slices > 1:
            logger.info(f"{s} {d}: {weighted_bytes(found):,} weighted input bytes >= slice_bytes "
                        f"{slice_bytes:,}: built in {slices} slices by request-id hash ({shards} shards), "
                        f"each reading the whole day")
        plan.days.append(Day(s, d, tuple(paths), shards, slices))
    per_source = collections.Counter(s for s, _ in partitions)
    logger.info(f"found {sum(len(p) for p in partitions.values())} log files in {len(partitions)} "
                f"partitions ("
                + ", ".join(f"{s}: {n} days" for s, n in sorted(per_source.items())) + ")")
    return plan


def _leave_out_built(work: str, sources: Sequence[str], partitions: dict[Partition, list[str]],
                     inputs: dict[Partition, list]) -> None:
    """Removes from partitions the days built already whose inputs have not changed since and
    whose shards are as the build wrote them (size and crc32c, ecdctr.data.built_days); a
    damaged day is named and built again from its logs."""
    built = {(s, d.isoformat()) for s in sources for d in layout.built_partitions(work, s)}
    unrecorded = []
    for key in sorted(set(partitions) & built):
        path = layout.stats_file(work, *key)
        try:
            stats = json_object(beam_files.read_bytes(path), path)
            records = shard_records(stats, path)
        except DamagedFile as e:
            logger.warning(f"rebuilding {key[0]} {key[1]} from its logs: {e}")
            continue
        before = stats.get("inputs")
        changed = changed_inputs(before, inputs[key]) if before is not None else ""
        if changed:  # late data: logs arrived or changed after the day was built
            logger.info(f"rebuilding {key[0]} {key[1]}: its logs changed since it was built ({changed})")
            continue
        if records is None:
            unrecorded.append(key)
        else:
            folder = layout.examples_folder(work, *key)
            damage = shard_damage(folder, records, beam_files.sizes(storage.join(folder, SHARDS)),
                                  beam_files.open_raw)
            if damage:
                logger.warning(f"rebuilding {key[0]} {key[1]} from its logs: {damage}")
                continue
        logger.info(f"skipping {key[0]} {key[1]}: already built (stats file exists)")
        del partitions[key]
    if unrecorded:
        logger.info(f"{len(unrecorded)} built day(s) ({unrecorded[0][1]} .. {unrecorded[-1][1]}) "
                    f"were built before shard sizes and hashes were recorded: their shards are "
                    f"read unchecked; a build without --skip_built over them adds the records")

