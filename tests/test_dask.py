"""The build on Beam's DaskRunner: a dask.distributed scheduler and two worker processes on
127.0.0.1, started and stopped here as a user would, with logs and work on the local S3
server (no shared disk); its files equal the DirectRunner's build record by record, days
built in slices (a GroupByKey on Dask) included."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from ecdctr.data.simulator import SimConfig, simulate
from ecdctr.spec.feature_spec import load_spec
from pipelines.build import build, pipeline_runner
from pipelines.build.discovery import input_bytes
from pipelines.build.pipeline import DASK_RUNNER

ROOT = Path(__file__).resolve().parents[1]
START = dt.date(2026, 1, 1)
VOLATILE = ("built_at", "seconds")  # stats fields that differ between two builds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process in a group of its own (a nanny's worker processes are stopped with it)."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=log.parent,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[str]:
    """`dask scheduler` and `dask worker --nworkers 2 --nthreads 1` on 127.0.0.1, without the
    AWS variables (whatever reaches S3 on the workers comes from the build's pipeline
    options); yields the scheduler's address, then stops both."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    address = f"tcp://127.0.0.1:{_free_port()}"
    scheduler = _start(["distributed.cli.dask_scheduler", "--host=127.0.0.1",
                        f"--port={address.rsplit(':', 1)[1]}", "--no-dashboard"],
                       env, folder / "scheduler.log")
    workers = None
    try:
        workers = _start(["distributed.cli.dask_worker", address, "--nworkers=2", "--nthreads=1",
                          "--no-dashboard", "--host=127.0.0.1", f"--local-directory={folder}"],
                         env, folder / "workers.log")
        deadline = time.monotonic() + 120
        while True:  # the scheduler listens
            try:
                socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])),
                                         timeout=1).close()
                break
            except OSError:
                if scheduler.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the dask scheduler did not start: "
                                       + (folder / "scheduler.log").read_text()) from None
                time.sleep(0.2)
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in (workers, scheduler):
            if process is not None:
                _stop(process)


def _make_logs(root: Path) -> None:
    """Two tiny simulated days, plus on the first natural day one bad row and a duplicate."""
    simulate(str(root), START, 2, SimConfig(users=100, items=50, new_users_per_day=2,
                                            new_items_per_day=1, natural_rows_per_day=150,
                                            seed=11))
    day = root / "natural" / f"date={START}"
    with gzip.open(day / "part-00000.jsonl.gz", "rt") as f:
        first = f.readline()
    (day / "extra.jsonl").write_text('{"request_id": "broken", \n' + first)


def _ecdctr(args: list[str], cwd: Path) -> str:
    """Runs the `ecdctr` command; returns its log (stderr)."""
    out = subprocess.run([sys.executable, "-m", "ecdctr", *args], capture_output=True, text=True,
                         timeout=600, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-5000:]
    return out.stderr


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    """The objects under bucket/prefix/ by key below it; .gz files decompressed."""
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    name = bucket[len("s3://"):]
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=f"{prefix}/")
    found = {}
    for page in pages:
        for item in page.get("Contents", []):
            data = client.get_object(Bucket=name, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix) + 1:]] = (gzip.decompress(data)
                                                    if item["Key"].endswith(".gz") else data)
    return found


def _comparable(key: str, data: bytes) -> object:
    if key.startswith("stats/"):
        return {k: v for k, v in json.loads(data).items() if k not in VOLATILE}
    return data


@pytest.fixture(scope="module")
def s3_logs(s3_server, tmp_path_factory) -> tuple[str, Path]:
    """The tiny logs in a bucket of the local S3 server: (bucket URI, local copy)."""
    logs = tmp_path_factory.mktemp("logs")
    _make_logs(logs)
    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = f"dask-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    for path in sorted(logs.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"logs/{path.relative_to(logs).as_posix()}")
    return f"s3://{bucket}", logs


def _same_files(bucket: str, ours: str, theirs: str) -> dict[str, bytes]:
    """Asserts that two work folders hold the same files, record by record (stats but their
    times); returns theirs."""
    mine, reference = _objects(bucket, ours), _objects(bucket, theirs)
    assert sorted(mine) == sorted(reference)
    kinds = {key.split("/", 1)[0] for key in reference}
    assert {"examples", "quarantine", "counts", "stats"} <= kinds, kinds
    for key in sorted(reference):
        assert _comparable(key, mine[key]) == _comparable(key, reference[key]), key
    return reference


def test_the_build_on_dask_workers_equals_the_direct_runners(s3_logs, dask_cluster, tmp_path):
    from distributed import Client

    bucket, _ = s3_logs
    command = ["build", f"--spec={ROOT / 'features' / 'default.yaml'}", f"--logs={bucket}/logs"]
    _ecdctr([*command, f"--work={bucket}/direct"], tmp_path)
    log = _ecdctr([*command, f"--work={bucket}/dask", "--", "--runner=DaskRunner",
                   f"--dask_client_address={dask_cluster}"], tmp_path)
    assert "pipeline starting (DaskRunner)" in log

    direct = _same_files(bucket, "dask", "direct")
    stats = json.loads(direct[f"stats/natural/{START}.json"])
    assert stats["quarantine_reasons"] == {"duplicate_request_id": 1, "invalid_json": 1}
    with Client(dask_cluster, timeout=60) as dask_client:  # both workers built days
        executed = dask_client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed


def test_a_day_built_in_slices_on_dask_equals_the_direct_runners(s3_logs, dask_cluster):
    """The natural day of START in 2 slices: their stats meet in MergeSlices after a
    GroupByKey, which on Dask is a shuffle between the worker processes."""
    bucket, logs = s3_logs
    day = logs / "natural" / f"date={START}"
    weighted = sum(input_bytes(str(f), f.stat().st_size) for f in day.iterdir())
    spec = load_spec(str(ROOT / "features" / "default.yaml"))
    window = {"sources": ["natural"], "start": START, "end": START, "slice_bytes": weighted // 2 + 1}
    [direct] = build(spec, f"{bucket}/logs", f"{bucket}/sliced-direct", **window)
    [dask] = build(spec, f"{bucket}/logs", f"{bucket}/sliced-dask", **window,
                   beam_args=["--runner=DaskRunner", f"--dask_client_address={dask_cluster}"])
    assert direct["slices"] == dask["slices"] == 2
    _same_files(bucket, "sliced-dask", "sliced-direct")


def test_dask_runner_by_its_short_name_builds_one_day_per_partition():
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner

    options = PipelineOptions(["--runner=DaskRunner", "--dask_client_address=tcp://h:8786"])
    runner, name = pipeline_runner(options)
    assert isinstance(runner, DaskRunner) and name == "DaskRunner"
    assert options.view_as(DaskOptions).partition_size == 1  # not 128 days in one task
    given = PipelineOptions([f"--runner={DASK_RUNNER}", "--dask_npartitions=3"])
    pipeline_runner(given)
    assert (given.view_as(DaskOptions).npartitions, given.view_as(DaskOptions).partition_size) == (
        3, None)
