"""Shared test fixtures: the simulated worlds the daily-job tests read (made once per test
process), a local S3 server (moto) on 127.0.0.1 for the object-store tests, and the records
ecdctr's module loggers log (`logged` for a test, `recorded` for a wider fixture)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from ecdctr.cli.logs import LOGGERS

WORLD_START = dt.date(2026, 1, 1)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """pytest's caplog with ecdctr's packages (ecdctr.cli.logs.LOGGERS) at info, whatever an
    earlier command run in-process set them to: their progress is in caplog.records."""
    for name in LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    return caplog


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def feature_batch(spec, n: int = 16, shift: float = 0.0) -> dict:
    """A batch of n rows of raw features for `spec`'s features: numbers in [shift, shift + 50),
    categories v0..v4, lists of 0-2 items; the same for every call."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    features = {}
    for f in spec.features:
        if f.kind == "numeric":
            features[f.name] = tf.constant(rng.random(n).astype("float32") * 50 + shift)
        elif f.kind == "categorical":
            features[f.name] = tf.constant([f"v{i % 5}" for i in range(n)])
        else:
            features[f.name] = tf.ragged.constant([["c1", "c2"][: i % 3] for i in range(n)],
                                                  dtype=tf.string)
    return features


def run_config(folder, body: str, logs: str = "logs"):
    """folder/config.yaml, a run config on the default spec whose work and export are folder's
    `work` and `export` and whose logs are `logs` (relative to folder, or a path); body: the
    rest of its YAML. Returns its path."""
    path = folder / "config.yaml"
    path.write_text(f"spec: {os.path.abspath('features/default.yaml')}\nlogs: {logs}\n"
                    f"work: work\nexport: export\n{body}")
    return path


@contextlib.contextmanager
def recorded() -> Iterator[list[logging.LogRecord]]:
    """The records, info and above, that ecdctr's packages log meanwhile: for a fixture that
    outlives a test, which caplog does not."""
    keep = _Records()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(keep)
        logger.setLevel(logging.INFO)
    try:
        yield keep.records
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(keep)
            logger.setLevel(level)


def _simulated(tmp_path_factory, name: str, days: int, **config) -> str:
    from ecdctr.data.simulator import SimConfig, simulate

    root = tmp_path_factory.mktemp(name)
    simulate(str(root), WORLD_START, days, SimConfig(**config))
    return str(root)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> str:
    """Logs of 2026-01-01 .. 01-13 (Thu .. Tue; 800 users, 1,000 natural rows a day, seed 3),
    the world of test_e2e and test_daily, which run days up to 01-12 (a run never builds past
    its date) and 01-13 as the next day. Read only: a test's work folder goes elsewhere (a test
    that needs it under its own folder links it there)."""
    return _simulated(tmp_path_factory, "world", 13, users=800, items=300, new_users_per_day=20,
                      new_items_per_day=5, natural_rows_per_day=1000, seed=3)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> str:
    """Logs of 2026-01-01 .. 01-09 (500 users, 800 natural rows a day, seed 4), the world of
    test_steps and test_distribute (which reads up to 01-08: the simulator's days do not
    depend on how many follow). Read only, as world."""
    return _simulated(tmp_path_factory, "small-world", 9, users=500, items=200, new_users_per_day=10,
                      new_items_per_day=5, natural_rows_per_day=800, seed=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free 127.0.0.1 port for the session, with the standard AWS
    variables pointing at it (as a user would set them); yields its endpoint."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("the moto S3 server did not start") from None
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket on the local S3 server: its s3:// URI."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config):
    """tensorflow-io's S3 client aborts the interpreter at exit (status 134): once it was
    loaded, end the process with pytest's own status instead."""
    storage = sys.modules.get("ecdctr.io.storage")
    if storage is not None and storage.native_loaded() and _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


# pytest-xdist (`make test` runs `-n 2`): the tests of one module run on one worker, one after
# the other, so a module-scoped fixture (a daily run, a build, an export) is made once; the
# tests of these modules share none and are spread one by one.
SPREAD_MODULES = ("test_distribute.py", "test_compare.py")
# The longest modules first, so that no worker starts one of them as the other runs out of work.
LONGEST_FIRST = ("test_distribute.py", "test_e2e.py", "test_daily.py", "test_compare.py",
                 "test_object_store.py", "test_dask.py", "test_steps.py", "test_build_s3.py")


def pytest_collection_modifyitems(config, items):
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, when it is installed
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        """Work units of whole modules, in collection order (LONGEST_FIRST), except the
        tests of SPREAD_MODULES, one unit each."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module.rsplit("/", 1)[-1] in SPREAD_MODULES else module

    config.option.loadscopereorder = False  # keep LONGEST_FIRST, not the most tests first
    return ModuleScheduling(config, log)
