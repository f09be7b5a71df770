"""The Beam build on S3 (a local moto server) with multi-process workers equals the local build."""

from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import json
import logging
import os
from pathlib import Path

import boto3
import pytest
import tensorflow as tf

from ecdctr.data.simulator import SimConfig, simulate
from ecdctr.io import storage
from ecdctr.io.beam_files import pipeline_args
from ecdctr.io.lock import Busy
from ecdctr.spec.feature_spec import load_spec
from pipelines.build import build, built_partitions

SPEC = load_spec(str(Path(__file__).resolve().parents[1] / "features" / "default.yaml"))
START = dt.date(2026, 1, 1)
DAYS = [START, START + dt.timedelta(days=1)]
VOLATILE = ("built_at", "seconds", "files", "empty_files", "inputs")  # differ between two builds


def make_logs(root: Path) -> None:
    """Two simulated days plus, on the first natural day, a file with one bad row and one
    duplicate request id (the duplicate's raw row is read again from the store)."""
    simulate(str(root), START, len(DAYS),
             SimConfig(users=200, items=100, new_users_per_day=5, new_items_per_day=2,
                       natural_rows_per_day=300, seed=5))
    day = root / "natural" / f"date={START}"
    with gzip.open(day / "part-00000.jsonl.gz", "rt") as f:
        first = f.readline()
    (day / "extra.jsonl").write_text('{"request_id": "broken", \n' + first)


def upload(local: Path, bucket: str, prefix: str) -> None:
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    name = bucket[len("s3://"):]
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), name, f"{prefix}/{path.relative_to(local).as_posix()}")


def keys(bucket: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket[len("s3://"):],
                                                              Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def day_files(work: str, kind: str, source: str, day: dt.date) -> list[str]:
    return storage.listdir(storage.join(work, kind, source, f"date={day}"))


def records(work: str, source: str, day: dt.date) -> dict[str, set[bytes]]:
    """Serialized examples per shard file of a day, read with tf.data (tensorflow-io on s3)."""
    storage.register(work)
    folder = storage.join(work, "examples", source, f"date={day}")
    return {name: {r.numpy() for r in tf.data.TFRecordDataset(storage.join(folder, name),
                                                             compression_type="GZIP")}
            for name in day_files(work, "examples", source, day)}


def quarantine(work: str, logs: str, source: str, day: dt.date) -> list[dict]:
    """A day's quarantine records, with the logs folder in paths written as <logs>."""
    path = storage.join(work, "quarantine", source, f"date={day}", "part-00000.jsonl")
    text = storage.read_text(path).replace(logs, "<logs>")
    return [json.loads(line) for line in text.splitlines()]


def test_build_on_s3_with_multi_process_workers_equals_the_local_build(
        bucket, tmp_path, monkeypatch, logged):
    logs = tmp_path / "logs"
    make_logs(logs)
    local_work = str(tmp_path / "work")
    first_day = logs / "natural" / f"date={START}"
    weighted = (8 * (first_day / "part-00000.jsonl.gz").stat().st_size
                + (first_day / "extra.jsonl").stat().st_size)  # its shard count comes from this
    shard_bytes = weighted // 4 + 1
    local = build(SPEC, str(logs), local_work, shard_bytes=shard_bytes)

    upload(logs, bucket, "logs")
    s3_logs, s3_work = f"{bucket}/logs", f"{bucket}/work"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # anything written to a relative local path would land here
    logged.clear()
    remote = build(SPEC, s3_logs, s3_work, shard_bytes=shard_bytes,
                   beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])

    assert list(cwd.iterdir()) == []  # no local staging, no lock file
    assert keys(bucket, "work/.staging") == [] and keys(bucket, "work/.build.lock") == []
    assert any(r.levelno == logging.WARNING and "takes no lock" in r.getMessage()
               for r in logged.records)
    assert [(s["source"], s["date"]) for s in remote] == [
        (s, d.isoformat()) for s in ("ad", "natural") for d in DAYS]
    for source in ("ad", "natural"):
        assert built_partitions(s3_work, source) == DAYS
    for ours, theirs in zip(remote, local, strict=True):
        assert ours["rows_read"] == ours["rows_written"] + ours["rows_quarantined"] > 0
        assert all(f.startswith(f"{s3_logs}/") for f in ours["files"])
        stored = json.loads(storage.read_text(
            storage.join(s3_work, "stats", ours["source"], f"{ours['date']}.json")))
        assert stored == ours
        assert ({k: v for k, v in ours.items() if k not in VOLATILE + ("numeric",)}
                == {k: v for k, v in theirs.items() if k not in VOLATILE + ("numeric",)})
        for column, summary in ours["numeric"].items():  # sums in another order
            assert summary == pytest.approx(theirs["numeric"][column], rel=1e-12)
    first = remote[2]
    assert (first["source"], first["date"]) == ("natural", START.isoformat())
    assert first["quarantine_reasons"] == {"duplicate_request_id": 1, "invalid_json": 1}
    assert first["shards"] == 4

    for source in ("ad", "natural"):
        for day in DAYS:
            examples = records(s3_work, source, day)
            assert examples == records(local_work, source, day)
            assert sum(len(v) for v in examples.values()) == next(
                s["rows_written"] for s in remote if (s["source"], s["date"]) == (source, f"{day}"))
            assert (quarantine(s3_work, s3_logs, source, day)
                    == quarantine(local_work, str(logs), source, day))
            names = day_files(s3_work, "counts", source, day)
            assert names == day_files(local_work, "counts", source, day) and names
            for name in names:
                assert (storage.read_bytes(storage.join(s3_work, "counts", source, f"date={day}",
                                                        name))
                        == storage.read_bytes(storage.join(local_work, "counts", source,
                                                           f"date={day}", name)))
    for raw in next(iter(records(s3_work, "natural", START).values())):
        assert tf.train.Example.FromString(raw).features.feature["request_id"].bytes_list.value

    # A rebuild replaces the day's objects: old shards beyond the new shard count go away.
    again = build(SPEC, s3_logs, s3_work, sources=["natural"], start=START, end=START,
                  shard_bytes=weighted)
    assert again[0]["shards"] == 1
    assert day_files(s3_work, "examples", "natural", START) == ["part-00000-of-00001.tfrecord.gz"]
    assert set.union(*records(s3_work, "natural", START).values()) == set.union(
        *records(local_work, "natural", START).values())
    assert keys(bucket, "work/.staging") == []


def test_s3_options_come_from_the_aws_variables_unless_given(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    assert pipeline_args(["--x=1"], ("/local/logs", "/local/work")) == ["--x=1"]
    assert pipeline_args([], ("s3://b/logs", "/local/work")) == [
        "--s3_endpoint_url=http://127.0.0.1:9", "--s3_region_name=eu-west-1", "--s3_disable_ssl"]
    assert pipeline_args(["--s3_region_name=us-west-2"], ("/l", "s3://b/w")) == [
        "--s3_region_name=us-west-2", "--s3_endpoint_url=http://127.0.0.1:9", "--s3_disable_ssl"]


def test_a_given_lock_file_refuses_a_second_build(tmp_path):
    day = tmp_path / "logs" / "ad" / "date=2026-01-01"
    day.mkdir(parents=True)
    (day / "a.jsonl").write_text("{}\n")
    lock = tmp_path / "locks" / "build.lock"
    lock.parent.mkdir()
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(Busy, match="another build in .* holds .*build.lock"):
            build(SPEC, str(tmp_path / "logs"), str(tmp_path / "work"), lock=str(lock))


def test_files_on_s3_share_one_boto3_client_per_process(bucket, monkeypatch):
    """Beam's S3 file system makes a boto3 session and client for every file it opens (0.2 s of
    CPU each); the build's files go through one client per set of options."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from ecdctr.io import beam_files

    made = []
    real = boto3.session.Session.client
    monkeypatch.setattr(boto3.session.Session, "client",
                        lambda self, *a, **k: made.append(k) or real(self, *a, **k))
    beam_files.configure([], [bucket])  # options of their own: a client of their own
    paths = [f"{bucket}/shared/{i}.bin" for i in range(4)]
    for i, path in enumerate(paths):
        beam_files.write_bytes(path, bytes([i]) * (i + 1))
    beam_files.write_bytes(f"{bucket}/shared/empty", b"")
    assert [beam_files.read_bytes(p) for p in paths] == [bytes([i]) * (i + 1) for i in range(4)]
    assert beam_files.read_bytes(f"{bucket}/shared/empty") == b""
    assert len(made) == 1, made
    assert made[0]["endpoint_url"] == PipelineOptions(storage.beam_s3_options()).get_all_options()[
        "s3_endpoint_url"]
