"""Built days proven before they are trusted: each shard file's size (and, when asked, its
crc32c) against the record the build wrote into the day's stats file (`shard_files`,
ecdctr.io.digest). A damaged day is named (file, expected and actual size) and taken as not
built, so the next build makes it again from its logs. Days built before shards were recorded
have no records: they are read unchecked."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, TypeVar

from ecdctr.io import layout, storage
from ecdctr.io.digest import content_problem, is_record, size_problem, stream_record
from ecdctr.io.jsonio import DamagedFile, read_json_object

logger = logging.getLogger(__name__)

SHARDS = "*.tfrecord.gz"
Step = TypeVar("Step", bound=Callable[..., Any])


def shard_records(stats: dict, path: str) -> dict[str, dict] | None:
    """The shard records of a day's stats (read from `path`); None for a day built before
    they were recorded; DamagedFile when they are not {file name: record}."""
    records = stats.get("shard_files")
    if records is None:
        return None
    if not isinstance(records, dict) or not all(is_record(r) for r in records.values()):
        raise DamagedFile(f"{path}: damaged (shard_files is not {{file: {{size, crc32c}}}})")
    return records


def shard_damage(folder: str, records: dict[str, dict], sizes: dict[str, int],
                 open_raw: Callable[[str], BinaryIO] | None = None) -> str | None:
    """What is wrong with the shards of a day in folder (None: each is as written): one
    missing, or of another size than recorded (sizes: {path: bytes} found), or, with
    open_raw, of other content (crc32c)."""
    for name, record in sorted(records.items()):
        path = storage.join(folder, name)
        if path not in sizes:
            return f"{path}: missing ({record['size']:,} bytes written)"
        problem = size_problem(path, record, sizes[path])
        if problem is None and open_raw is not None:
            with open_raw(path) as f:
                problem = content_problem(path, record, stream_record(f))
        if problem:
            return problem
    return None


def shard_sizes(folder: str) -> dict[str, int]:
    """{path: bytes} of the shards in a built day's examples folder (tf.io.gfile)."""
    sizes = {}
    for path in storage.glob(storage.join(folder, SHARDS)):
        with storage.open(path, "rb") as f:
            sizes[path] = f.size()
    return sizes


def day_damage(work: str, source: str, date: dt.date, content: bool = False) -> str | None:
    """What is wrong with a built day (None: its shards are as written, or the day predates
    shard records): a damaged stats file or a shard of another size (or, content=True, other
    bytes) than the build wrote."""
    path = layout.stats_file(work, source, date)
    try:
        records = shard_records(read_json_object(path), path)
    except DamagedFile as e:
        return str(e)
    if records is None:
        return None
    folder = layout.examples_folder(work, source, date)
    return shard_damage(folder, records, shard_sizes(folder),
                        (lambda p: storage.open(p, "rb")) if content else None)


def sound_days(work: str, source: str, dates: Sequence[dt.date]) -> list[dt.date]:
    """The dates whose built day shows no damage (day_damage, sizes only); each damaged one
    is named in a warning, with the fix."""
    sound = []
    for date in dates:
        problem = day_damage(work, source, date)
        if problem:
            logger.warning(f"{source} {date} left out: {problem}. {rebuild_fix(source, date)}")
        else:
            sound.append(date)
    return sound


def rebuild_fix(source: str, date: dt.date | str) -> str:
    """How a damaged built day is made again."""
    return (f"Fix: run `ecdctr daily` (or `ecdctr build --skip_built`) again: it rebuilds "
            f"{source} {date} from its logs")


@contextlib.contextmanager
def named_data_loss(work: str, parts: Sequence[tuple[str, dt.date]]) -> Iterator[None]:
    """A shard that TensorFlow finds damaged while reading (DataLossError: a truncated
    record, a bad CRC) becomes a DamagedFile naming the file and the fix: the days read are
    checked byte for byte against their records to find it."""
    import tensorflow as tf  # here: the build's driver checks days without loading it

    try:
        yield
    except tf.errors.DataLossError as e:
        first_line = (e.message or str(e)).strip().splitlines()[0][:200]
        for source, date in sorted(set(parts)):
            problem = day_damage(work, source, date, content=True)
            if problem:
                raise DamagedFile(f"{problem}; {source} {date} is damaged and is rebuilt by the "
                                  f"next build. {rebuild_fix(source, date)}") from None
        stats = [layout.stats_file(work, s, d) for s, d in sorted(set(parts))]
        raise DamagedFile(f"a shard of the days read is damaged ({first_line}), and no shard "
                          f"record names it (days built before shards were recorded). Fix: "
                          f"delete the stats files of the days read so the next build rebuilds "
                          f"them: {' '.join(stats[:5])}" + (" ..." if len(stats) > 5 else "")
                          ) from None


def names_data_loss(step: Step) -> Step:
    """A training or evaluation step (taking `work` and `parts`) whose DataLossError is
    named (see named_data_loss)."""
    signature = inspect.signature(step)

    @functools.wraps(step)
    def checked(*args: Any, **kwargs: Any) -> Any:
        given = signature.bind(*args, **kwargs).arguments
        with named_data_loss(given["work"], given["parts"]):
            return step(*args, **kwargs)
    return checked  # type: ignore[return-value]
