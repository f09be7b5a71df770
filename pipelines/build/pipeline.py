"""The build, top-down: find the days of raw logs to build, run one Beam pipeline over them into
a staging folder, check and publish each day, report, and compare the new days with the days
before them (drift)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from ecdctr.data import drift
from ecdctr.data.log_partitions import SOURCES
from ecdctr.io import beam_files, layout, storage
from ecdctr.io import lock as file_lock
from ecdctr.spec.feature_spec import Spec
from pipelines.build import publish
from pipelines.build.discovery import SHARD_BYTES, SLICE_BYTES, BuildPlan, Day, find_days
from pipelines.build.dofn import add_build_steps
from pipelines.build.stats import DayStats

logger = logging.getLogger(__name__)

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def build(spec: Spec, logs: str, work: str, start: dt.date | None = None,
          end: dt.date | None = None, sources: Sequence[str] = SOURCES,
          beam_args: Sequence[str] = (), skip_built: bool = False,
          shard_bytes: int = SHARD_BYTES,
          lock: str | None = None, slice_bytes: int = SLICE_BYTES) -> list[dict]:
    """Runs ONE Apache Beam pipeline over all (source, date) partitions of raw logs found under
    logs/<source>/date=YYYY-MM-DD/ within [start, end] (inclusive; None = unbounded), returns the
    per-partition stats dicts (also written to disk). skip_built=True leaves partitions whose stats
    file already exists alone. A day's examples are split by hash of request_id into
    ceil(input bytes / shard_bytes) shards (at least 1; see discovery.shard_count: the sizes
    of its log files as found, .gz and .parquet ones weighted COMPRESSED_WEIGHT times). A day
    of at least slice_bytes such bytes is built in S = ceil(bytes / slice_bytes) slices by
    request-id hash, each on one worker reading the whole day, its shard count rounded up to
    a multiple of S (see dofn.BuildDay): the same Examples in the same shards as one pass.

    `logs` and `work` may be local folders or URIs on any Beam file system (s3://, gs://,
    hdfs://); on a cluster both must be reachable from the workers. The workers write into
    <work>/.staging/<run id>/; the driver then publishes each day (see publish). Beam's S3
    options are added from the AWS variables when a path is on s3://. `lock`: a local lock
    file (see build_lock)."""
    if start and end and start > end:
        raise ValueError(f"start {start} is after end {end}")
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    if slice_bytes < 1:
        raise ValueError(f"slice_bytes must be >= 1, got {slice_bytes}")
    logs, work = storage.absolute(logs), storage.absolute(work)
    options = beam_files.configure(beam_args, (logs, work))
    plan = find_days(logs, work, sources, start, end, skip_built=skip_built,
                     shard_bytes=shard_bytes, slice_bytes=slice_bytes)
    if not plan.days:
        logger.info("nothing to build: every partition found is already built")
        return []
    return build_days(spec, plan, work, options, lock=lock)


def build_days(spec: Spec, plan: BuildPlan, work: str, options: PipelineOptions,
               lock: str | None = None) -> list[dict]:
    """Builds the days of `plan` (see discovery.find_days) into `work` under the build lock,
    publishes them, reports, and checks each new day for drift; returns their stats, in
    (source, date) order. `options`: from beam_files.configure."""
    beam_files.makedirs(work)
    with build_lock(work, lock):
        publish.clean_staging(work)
        run_dir = publish.new_run_folder(work)
        seconds = run_pipeline(spec, plan.days, run_dir, options)
        staged = set(beam_files.files_under(run_dir))
        results = []
        for day in sorted(plan.days, key=lambda d: (d.source, d.date)):
            stats = finish_day(spec, run_dir, staged, day, seconds)
            stats["unreadable_files"] = plan.unreadable.get((day.source, day.date), [])
            stats["inputs"] = plan.inputs.get((day.source, day.date), [])
            results.append(stats)
        publish.publish(work, run_dir, results)
        beam_files.delete_tree(run_dir)
    report(results, seconds)
    for source in sorted({r["source"] for r in results}):  # each new day vs the days before it
        days = [dt.date.fromisoformat(r["date"]) for r in results if r["source"] == source]
        drift.check_days(work, spec, source, days, layout.built_partitions(work, source))
    return results


@contextlib.contextmanager
def build_lock(work: str, lock: str | None) -> Iterator[None]:
    """Refuses a second build on the same work folder while one runs: a flock on `lock` (a
    local file) or, if None and work is local, on <work>/.build.lock. A remote work folder
    without `lock` is not locked (object stores have no flock): a warning says so."""
    if lock is None and storage.is_remote(work):
        logger.warning(f"{work} is not a local folder and no lock file was given, so this build "
                       f"takes no lock; running one build at a time on it is the operator's job")
        yield
        return
    path = lock or layout.build_lock_file(work)
    with file_lock.exclusive(path, f"another build in {work}"):
        yield


def pipeline_runner(options: PipelineOptions) -> tuple[Any, str]:
    """The runner to use and its name for the log. Beam's DirectRunner first tries Prism,
    which downloads a binary at run time; the local default is therefore the DirectRunner's
    own in-process engine (FnApiRunner), which honours --direct_num_workers and
    --direct_running_mode. `DaskRunner`, which Beam knows only by its module path, runs on the
    dask.distributed scheduler of --dask_client_address (see dask_runner). Any other --runner
    is passed through as given."""
    name = options.view_as(StandardOptions).runner
    if name in (None, "DirectRunner"):
        return FnApiRunner(), "DirectRunner (in-process FnApiRunner)"
    if name in ("DaskRunner", DASK_RUNNER):
        return dask_runner(options), "DaskRunner"
    return None, name


def dask_runner(options: PipelineOptions) -> Any:
    """Beam's DaskRunner for these options. Its Create puts up to 128 elements in one Dask
    partition and its Reshuffle does nothing, so every day of a build would run in one task
    on one worker: unless --dask_npartitions or --dask_partition_size is given, each day (or
    slice) is its own partition."""
    try:
        from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner
    except ImportError as e:
        raise ImportError(f"--runner=DaskRunner needs the packages dask and distributed ({e}); "
                          f"install the project's requirements.txt") from e
    dask = options.view_as(DaskOptions)
    if dask.npartitions is None and dask.partition_size is None:
        dask.partition_size = 1
    return DaskRunner()


def run_pipeline(spec: Spec, days: list[Day], run_dir: str, options: PipelineOptions) -> float:
    """Runs the Beam pipeline that writes `days` into run_dir; returns its seconds."""
    runner, runner_name = pipeline_runner(options)
    logger.info(f"pipeline starting ({runner_name}), staging in {run_dir}")
    began = time.monotonic()
    pipeline = beam.Pipeline(runner=runner, options=options)
    add_build_steps(pipeline, spec, days, run_dir)
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # a Dask run's connection to its scheduler
        if client is not None:
            client.close()
    seconds = time.monotonic() - began
    logger.info(f"pipeline finished in {seconds:.1f} s")
    return seconds


def finish_day(spec: Spec, run_dir: str, staged: set[str], day: Day, seconds: float) -> dict:
    """The day's stats from what the pipeline staged; checks that every row is counted and
    completes the day's files (see publish.complete_day); its shard_files record every shard's
    size and crc32c (ecdctr.data.built_days checks them before the day is trusted)."""
    # The shard count comes from the files' sizes when they were found; when a log file grew
    # since, the day holds the rows read, in that many shards (every row once), and the
    # inputs recorded at discovery make the next --skip_built build rebuild it.
    stats = DayStats.read(spec, run_dir, day.source, day.date).report(
        spec, day.source, day.date, seconds)
    if stats["rows_read"] != stats["rows_written"] + stats["rows_quarantined"]:
        raise RuntimeError(
            f"{day.source} {day.date}: rows_read {stats['rows_read']} != rows_written "
            f"{stats['rows_written']} + rows_quarantined {stats['rows_quarantined']}; "
            f"nothing was published (staging left in {run_dir})")
    stats["shard_files"] = dict(sorted(
        {**stats["shard_files"], **publish.complete_day(spec, run_dir, staged, day)}.items()))
    return stats


def report(results: list[dict], seconds: float) -> None:
    """Logs what the build read, wrote and quarantined, per day and in total."""
    total_read = sum(s["rows_read"] for s in results)
    logger.info(f"published {len(results)} partitions: {total_read} rows read in {seconds:.1f} s, "
                f"{total_read / max(seconds, 1e-9):,.0f} rows/s")
    for s in results:
        reasons = ", ".join(f"{k} {v}" for k, v in s["quarantine_reasons"].items())
        logger.info(f"  {s['source']} {s['date']}: read {s['rows_read']} = written {s['rows_written']} "
                    f"+ quarantined {s['rows_quarantined']}" + (f" ({reasons})" if reasons else "")
            + (f"; empty files: {len(s['empty_files'])}" if s["empty_files"] else ""))
    logger.info(f"  total: read {total_read} = written {sum(s['rows_written'] for s in results)} "
                f"+ quarantined {sum(s['rows_quarantined'] for s in results)} "
                f"in {len(results)} partitions")
