"""Storage errors are errors: a store that cannot be asked is never taken for an empty one,
and a dead object store ends a command within ECDCTR_STORAGE_TIMEOUT with one error line
naming its endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ecdctr.io import storage

ROOT = Path(__file__).resolve().parents[1]
BOUND = 6  # seconds: small, so that the tests are fast


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLI = """
import os, sys, time
import tensorflow
from ecdctr.cli.main import main
started = time.monotonic()
try:
    main(sys.argv[1:])
except SystemExit as e:
    status = e.code if isinstance(e.code, int) else 1
print(f"seconds {time.monotonic() - started:.1f}", flush=True)
sys.stderr.flush()
os._exit(status)
"""


def _run_dead(args: list[str], endpoint: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess,
                                                                         float]:
    """Runs `ecdctr *args` against endpoint with the bound BOUND: the finished process and the
    seconds the command took (after Python and TensorFlow started, which takes long on a
    loaded machine)."""
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "ECDCTR_STORAGE_TIMEOUT": str(BOUND), "PYTHONPATH": str(ROOT)}
    for name in ("AWS_ENDPOINT_URL_S3", "S3_ENDPOINT", "S3_CONNECT_TIMEOUT_MSEC",
                 "S3_REQUEST_TIMEOUT_MSEC", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                 "AWS_DEFAULTS_MODE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)
    timed = [line for line in done.stdout.splitlines() if line.startswith("seconds ")]
    assert timed, done.stdout[-2000:] + done.stderr[-3000:]
    return done, float(timed[-1].split()[1])


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


@pytest.mark.parametrize("command", [
    ["versions", "--export=s3://night/export"],
    ["spec", "check", "s3://night/features/default.yaml"],
])
def test_a_dead_endpoint_is_one_error_line_within_the_bound(tmp_path, command):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    done, seconds = _run_dead(command, endpoint, tmp_path)
    assert done.returncode != 0, done.stdout
    lines = _error_lines(done.stderr)
    assert len(lines) == 1, done.stderr[-3000:]
    assert endpoint in lines[0] and "Fix:" in lines[0]
    assert "no published version" not in done.stderr and "not found" not in lines[0]
    assert "Traceback" not in done.stderr
    assert seconds < BOUND + 30


def test_a_silent_endpoint_is_bounded_too(tmp_path):
    """A store that accepts the connection and never answers: the request timeout ends it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        done, seconds = _run_dead(["versions", "--export=s3://night/export"], endpoint, tmp_path)
    lines = _error_lines(done.stderr)
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-3000:]
    assert endpoint in lines[0]
    assert seconds < BOUND + 30


def test_absence_is_still_absence(bucket):
    """On a live store a missing path is False / [] / FileNotFoundError, as before."""
    assert not storage.exists(f"{bucket}/nothing/here")
    assert not storage.isdir(f"{bucket}/nothing")
    assert storage.listdir(f"{bucket}/nothing") == []
    assert storage.glob(f"{bucket}/nothing/*.json") == []
    assert list(storage.walk(f"{bucket}/nothing")) == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{bucket}/nothing.json")
    storage.write_text(f"{bucket}/a/b.txt", "x")
    assert storage.isdir(f"{bucket}/a") and storage.isdir(bucket)
    assert storage.listdir(bucket) == ["a"]
    assert list(storage.walk(bucket)) == [(bucket, ["a"], []), (f"{bucket}/a", [], ["b.txt"])]


def test_a_missing_bucket_is_an_error_not_an_empty_folder(s3_server):
    with pytest.raises(storage.StorageError, match="bucket s3://no-such-bucket-x/ does not exist"):
        storage.listdir("s3://no-such-bucket-x/export")


def test_local_errors_are_not_absence(tmp_path):
    """A local path is absent only when nothing is there (or a parent is a file)."""
    (tmp_path / "f").write_text("x")
    assert not storage.exists(str(tmp_path / "f" / "below"))  # a file is no folder
    assert not storage.isdir(str(tmp_path / "f"))
    assert storage.listdir(str(tmp_path / "none")) == []
    if os.geteuid() == 0:
        return  # root reads anything: no permission error to provoke
    locked = tmp_path / "locked"
    (locked / "inside").mkdir(parents=True)
    locked.chmod(0)
    try:
        with pytest.raises(PermissionError):
            storage.exists(str(locked / "inside"))
    finally:
        locked.chmod(0o755)


def test_the_bound_is_validated(monkeypatch):
    monkeypatch.setenv("ECDCTR_STORAGE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="ECDCTR_STORAGE_TIMEOUT='soon'"):
        storage.timeout()
    monkeypatch.setenv("ECDCTR_STORAGE_TIMEOUT", "120")
    assert storage.timeout() == 120 and storage.per_try_seconds() == 12


def test_daily_on_a_dead_store_alerts_logs_and_fails_within_the_bound(tmp_path):
    """The work folder is on the dead store, so no report can be written there: the failure
    still reaches the exit code, the alert and the log."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    config = tmp_path / "night.yaml"
    config.write_text(
        f"spec: {ROOT / 'features' / 'default.yaml'}\nlogs: s3://night/logs\n"
        f"work: s3://night/work\nexport: s3://night/export\nlock: {tmp_path / 'daily.lock'}\n"
        f"alert: 'cat > {tmp_path / 'alert.json'}; echo \"$ECDCTR_ERROR\" > {tmp_path / 'alert.err'}'\n")
    done, seconds = _run_dead(["daily", f"--config={config}", "--date=2026-01-08"], endpoint,
                              tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert seconds < BOUND + 30
    failed = [line for line in done.stderr.splitlines() if "2026-01-08 failed" in line]
    assert len(failed) >= 1 and endpoint in failed[-1], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert endpoint in (tmp_path / "alert.err").read_text()
    assert '"outcome": "failed"' in (tmp_path / "alert.json").read_text()


def test_a_build_on_a_dead_store_ends_within_the_bound(tmp_path):
    """Beam's S3 file system retries for minutes on its own (waits of 5, 10, 20, ... s); the
    build ends at the bound with one error line naming the endpoint."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    done, seconds = _run_dead(["build", f"--spec={ROOT / 'features' / 'default.yaml'}",
                               "--logs=s3://night/logs", f"--work={tmp_path / 'work'}"],
                              endpoint, tmp_path)
    assert done.returncode != 0
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and endpoint in lines[0], done.stderr[-3000:]
    assert "Beam's S3 call" in lines[0] and "Traceback" not in done.stderr
    assert seconds < BOUND + 30


def test_a_training_reader_on_a_dead_store_is_explained_within_the_bound(tmp_path):
    """tf.data reads through tensorflow-io, which reports a dead store as "not found": the
    error is bounded by the same settings and explained as the store's failure."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    code = ("import time\n"
            "from ecdctr.io import storage\n"
            "from ecdctr.cli.main import error_line\n"
            "import tensorflow as tf\n"
            "storage.register('s3://night')\n"
            "started = time.monotonic()\n"
            "try:\n"
            "    list(tf.data.TFRecordDataset(['s3://night/examples/part-0.tfrecord.gz'],\n"
            "                                 compression_type='GZIP'))\n"
            "except tf.errors.OpError as e:\n"
            "    print('error:', error_line(e))\n"
            "print('seconds', time.monotonic() - started)\n"
            "import os; os._exit(0)\n")
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "ECDCTR_STORAGE_TIMEOUT": str(BOUND),
           "PYTHONPATH": str(ROOT)}
    for name in ("AWS_ENDPOINT_URL_S3", "S3_ENDPOINT", "S3_CONNECT_TIMEOUT_MSEC",
                 "S3_REQUEST_TIMEOUT_MSEC", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and endpoint in lines[0] and "Fix:" in lines[0], done.stdout + done.stderr[-2000:]
    seconds = float(done.stdout.split("seconds")[-1])
    assert seconds < BOUND + 30
