"""The partitions of raw logs: <logs>/<source>/date=YYYY-MM-DD/ folders and the log files in
them, found through Beam's FileSystems; files that cannot be read are named, not read."""

from __future__ import annotations

import collections
import datetime as dt
import errno
import logging
import os
import stat
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems

from ecdctr.io import storage

logger = logging.getLogger(__name__)

SOURCES = ("natural", "ad")  # the kinds of traffic, each a folder of logs
LOG_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".csv.gz", ".parquet")
LOGS_LAYOUT = "<logs>/<source>/date=YYYY-MM-DD/*.jsonl[.gz] | *.json[.gz] | *.csv[.gz] | *.parquet"
Partition = tuple[str, str]  # (source, date as YYYY-MM-DD)


def find_partitions(logs: str, sources: Sequence[str], start: dt.date | None,
                    end: dt.date | None,
                    unreadable: dict[Partition, list[dict]],
                    inputs: dict[Partition, list] | None = None,
                    ) -> dict[Partition, list[str]]:
    """(source, date) -> its log files, for partition folders within [start, end]. Log files
    that cannot be read (see _unreadable) are left out and recorded in `unreadable`; `inputs`
    gets each partition's [path, size, modification time] list."""
    found: dict[Partition, list[str]] = {}
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
            logger.info(f"no partitions for source {source!r}: nothing matches {pattern}")
        for folder in sorted(folders):
            name = storage.basename(folder)
            try:
                date = dt.date.fromisoformat(name[len("date="):])
            except ValueError:
                logger.info(f"skipping {folder}: the folder name is not date=YYYY-MM-DD")
                continue
            if (start and date < start) or (end and date > end):
                continue
            paths = sorted(set(folders[folder]) | set(_local_entries(folder)))
            logs_here = [p for p in paths if storage.basename(p).lower().endswith(LOG_SUFFIXES)]
            bad = [(p, reason) for p in logs_here if (reason := _unreadable(p))]
            for p, reason in bad:
                logger.error(f"{p} is not a readable log file ({reason}); it is left out of "
                             f"{source} {date} and listed in the day's stats as unreadable_files. Fix: "
                             f"replace it with the log file, then rebuild the day")
            if bad:
                unreadable[(source, date.isoformat())] = [{"path": p, "reason": r} for p, r in bad]
                logs_here = [p for p in logs_here if p not in dict(bad)]
            for p in paths:
                if p not in logs_here:
                    logger.info(f"skipping {p}: not a log file (expected one of {', '.join(LOG_SUFFIXES)})")
            if not logs_here:
                if bad:
                    logger.error(f"skipping partition {folder}: it holds no readable log files")
                else:
                    logger.info(f"skipping partition {folder}: it holds no log files")
                continue
            found[(source, date.isoformat())] = logs_here
            if inputs is not None:
                inputs[(source, date.isoformat())] = [[p, *metadata.get(p, [None, None])]
                                                      for p in logs_here]
    return found


def _local_entries(folder: str) -> list[str]:
    """Every entry of a local partition folder, files or not (FileSystems.match leaves out
    what it cannot stat: dangling symlinks, symlink loops). A folder that cannot be listed
    (permission denied) raises: it is not an empty one."""
    if storage.is_remote(folder):
        return []
    try:
        return [os.path.join(folder, name) for name in os.listdir(folder)]
    except (FileNotFoundError, NotADirectoryError):  # gone meanwhile: absent, not unreadable
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
