"""The build's staging folder and how built days leave it: leftovers of unfinished builds
deleted, each day completed (empty shards, quarantine and counts files) and published, its
stats file last, so that a day with stats is a whole day."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid

from ecdctr.io import beam_files, commit, layout, storage
from ecdctr.io.tfrecord import shard_name, write_empty_shard
from ecdctr.spec.feature_spec import Spec
from pipelines.build.discovery import Day

logger = logging.getLogger(__name__)


def clean_staging(work: str) -> None:
    """Deletes what unfinished builds left in <work>/.staging."""
    root = layout.staging_folder(work)
    for name in beam_files.FILES.listdir(root):  # object stores: the runs that left files behind
        logger.info(f"deleting leftovers of an unfinished build: {storage.join(root, name)}")
        beam_files.delete_tree(storage.join(root, name))


def new_run_folder(work: str) -> str:
    """A new, empty staging folder for one build: <work>/.staging/<UTC time>-<random>."""
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    run_dir = storage.join(layout.staging_folder(work), run_id)
    beam_files.makedirs(run_dir)
    return run_dir


def complete_day(spec: Spec, run_dir: str, staged: set[str], day: Day) -> dict[str, dict]:
    """Fills what the pipeline writes only when there is data: empty shards, quarantine, counts.
    staged: the files the pipeline wrote (one listing, not one request per file). Returns the
    records (size, crc32c) of the empty shards it wrote, by file name."""
    examples = layout.examples_folder(run_dir, day.source, day.date)
    beam_files.makedirs(examples)
    empty = {}
    for shard in range(day.shards):
        name = shard_name(shard, day.shards)
        path = storage.join(examples, name)
        if path not in staged:
            empty[name] = write_empty_shard(path)
    quarantine_folder = layout.quarantine_folder(run_dir, day.source, day.date)
    beam_files.makedirs(quarantine_folder)
    quarantine = storage.join(quarantine_folder, "part-00000.jsonl")
    if quarantine not in staged:
        beam_files.write_bytes(quarantine, b"")
    beam_files.makedirs(layout.counts_folder(run_dir, day.source, day.date))
    for f in spec.features:
        path = layout.counts_file(run_dir, day.source, day.date, f.name)
        if f.uses_vocab and path not in staged:
            beam_files.write_bytes(path, b"")
    return empty


def publish(work: str, run_dir: str, days: list[dict]) -> None:
    """Puts the built days (their stats) in place. A day's stats file lands after all its
    data, so it marks a whole day: readers (built_partitions) take a day without it as not
    built."""
    if beam_files.FILES.renames_atomically(work):
        for stats in days:
            _publish_day(work, run_dir, stats)
    else:
        _publish_objects(work, run_dir, days)


def _publish_day(work: str, run_dir: str, stats: dict) -> None:
    """Where folders exist (local, HDFS): each folder of the day swapped in by renames."""
    source, date = stats["source"], stats["date"]
    final_stats = layout.stats_file(work, source, date)
    if beam_files.exists(final_stats):
        beam_files.delete([final_stats])  # the day counts as unbuilt until its new stats land
    replaced = storage.join(run_dir, "replaced")
    for kind in layout.DAY_FOLDERS:
        commit.swap_in(beam_files.FILES, layout.day_folder(run_dir, kind, source, date),
                       layout.day_folder(work, kind, source, date),
                       layout.day_folder(replaced, kind, source, date))
    commit.write_file(beam_files.FILES, final_stats, json.dumps(stats, indent=1).encode("utf-8"))
    beam_files.delete_tree(replaced)


def _publish_objects(work: str, run_dir: str, days: list[dict]) -> None:
    """Object stores (no folders, no atomic rename), all days at once, since every request
    costs: their old stats go, then their old objects, the new ones are moved in (copy, then
    delete) and the stats files are written last, each one PUT that appears whole."""
    keys = [(s["source"], s["date"]) for s in days]
    sources = sorted({source for source, _ in keys})
    wanted = {layout.stats_file(work, source, date) for source, date in keys}
    old_stats = [p for p in beam_files.match([layout.stats_file(work, s, "*") for s in sources])
                 if p in wanted]
    if old_stats:
        beam_files.delete(old_stats)
    folders = tuple(layout.day_folder(work, kind, source, date) + "/"
                    for kind in layout.DAY_FOLDERS for source, date in keys)
    trees = [storage.join(work, kind, source, "**")
             for kind in layout.DAY_FOLDERS for source in sources]
    old = [p for p in beam_files.match(trees) if p.startswith(folders)]
    if old:
        beam_files.delete(old)
    prefix = run_dir.rstrip("/") + "/"
    new = [p for p in beam_files.files_under(run_dir)
           if p[len(prefix):].split("/", 1)[0] in layout.DAY_FOLDERS]
    if new:
        beam_files.rename(new, [storage.join(work, p[len(prefix):]) for p in new])
    for stats in days:
        commit.write_file(beam_files.FILES, layout.stats_file(work, stats["source"], stats["date"]),
                          json.dumps(stats, indent=1).encode("utf-8"))
