"""The work folder's layout: where the build puts each day's examples, quarantine, token counts
and stats, where drift warnings go, and which days are built. Every path into it is spelled here.

<work>/examples/<source>/date=D/part-*.tfrecord.gz   one tf.train.Example per impression
<work>/quarantine/<source>/date=D/part-*.jsonl       every rejected row and its reason
<work>/counts/<source>/date=D/<feature>.tsv          token counts of a vocabulary feature
<work>/stats/<source>/D.json                         a built day's stats (written last)
<work>/drift/<source>/D.json                         a built day's drift warnings
<work>/.staging/<run id>/...                         a build's output before it is published
"""

from __future__ import annotations

import datetime as dt

from ecdctr.io import storage

EXAMPLES, QUARANTINE, COUNTS = "examples", "quarantine", "counts"
DAY_FOLDERS = (EXAMPLES, QUARANTINE, COUNTS)  # a built day's folders, each named date=D
STAGING = ".staging"
BUILD_LOCK = ".build.lock"


def _iso(date: dt.date | str) -> str:
    """A date as its folder and file names spell it ('*' and other patterns pass through)."""
    return date if isinstance(date, str) else date.isoformat()


def day_folder(work: str, kind: str, source: str, date: dt.date | str) -> str:
    """<work>/<kind>/<source>/date=D: one of a day's DAY_FOLDERS."""
    return storage.join(work, kind, source, f"date={_iso(date)}")


def examples_folder(work: str, source: str, date: dt.date | str) -> str:
    """The folder of a day's TFRecord shards."""
    return day_folder(work, EXAMPLES, source, date)


def quarantine_folder(work: str, source: str, date: dt.date | str) -> str:
    """The folder of a day's quarantine files."""
    return day_folder(work, QUARANTINE, source, date)


def counts_folder(work: str, source: str, date: dt.date | str) -> str:
    """The folder of a day's token counts, one file per vocabulary feature."""
    return day_folder(work, COUNTS, source, date)


def counts_file(work: str, source: str, date: dt.date | str, feature: str) -> str:
    """A day's token counts of one vocabulary feature (`token<TAB>count` lines)."""
    return storage.join(counts_folder(work, source, date), f"{feature}.tsv")


def stats_file(work: str, source: str, date: dt.date | str) -> str:
    """A day's stats; it lands after the day's folders, so it marks a whole day."""
    return storage.join(work, "stats", source, f"{_iso(date)}.json")


def drift_file(work: str, source: str, date: dt.date | str) -> str:
    """A built day's drift warnings."""
    return storage.join(work, "drift", source, f"{_iso(date)}.json")


def staging_folder(work: str) -> str:
    """Where builds write before publishing, one folder per run."""
    return storage.join(work, STAGING)


def build_lock_file(work: str) -> str:
    """The lock file of builds on a local work folder."""
    return storage.join(work, BUILD_LOCK)


def built_partitions(work: str, source: str) -> list[dt.date]:
    """Dates whose stats file exists (= the day was built completely)."""
    dates = []
    for path in storage.glob(stats_file(work, source, "*")):
        try:
            dates.append(dt.date.fromisoformat(storage.basename(path)[:-len(".json")]))
        except ValueError:
            continue
    return sorted(dates)
