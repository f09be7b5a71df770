"""Model folders and published versions on an object store (a local moto S3 server): what
TF Serving can load is always whole, and checkpoints round-trip."""

import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from ecdctr.cli.main import main
from ecdctr.data.datasets import parse_batch
from ecdctr.data.rows import RowParser, to_example
from ecdctr.io import storage
from ecdctr.models.ctr_model import ModelConfig, build_model
from ecdctr.serving import export
from ecdctr.serving.export import (
    INPUT_KEY,
    OUTPUT_KEY,
    publish,
    remove_version,
    stage_saved_model,
    unfinished_versions,
    versions,
)
from ecdctr.spec.feature_spec import load_spec
from ecdctr.training.checkpoint import META, load_checkpoint, save_checkpoint

SPEC = load_spec("features/default.yaml")
ROWS = [{"request_id": str(i), "ts": 1, "click": i % 2, "user_id": f"u{i % 3}", "item_id": "i1",
         "scenario": "s1", "position": "p0", "user_segment": "g1", "price": 3.0 + i,
         "hist_categories": ["c1", "c2"][: i % 3]} for i in range(8)]
VOCABS = {f.name: ["u0", "u1", "i1", "s1", "p0", "g1", "c1"] for f in SPEC.features if f.uses_vocab}


def _examples():
    parser = RowParser(SPEC)
    return [to_example(SPEC, parser.parse(r)).SerializeToString() for r in ROWS]


def _model(seed=0):
    features, _ = parse_batch(SPEC, tf.constant(_examples()))
    return build_model(SPEC.features, VOCABS, {}, ModelConfig(hidden=(8, 4), seed=seed), features,
                       initial_ctr=0.3, domains=["s1|p0|g1"])


class _Poller(threading.Thread):
    """Stands in for TF Serving's file-system poller: lists the integer folders under base
    and loads every one its loader would accept (saved_model.pb present), as fast as it can."""

    def __init__(self, base):
        super().__init__(daemon=True)
        self.base, self.stop = base, threading.Event()
        self.loaded, self.failed, self.partial = set(), [], 0

    def run(self):
        while not self.stop.is_set():
            for name in storage.listdir(self.base):
                if not name.isdigit():
                    continue
                folder = storage.join(self.base, name)
                if not tf.saved_model.contains_saved_model(folder):
                    self.partial += 1  # visible but not loadable yet: TF Serving retries it
                    continue
                try:
                    serve = tf.saved_model.load(folder).signatures["serving_default"]
                    serve(**{INPUT_KEY: tf.constant(_examples()[:2])})[OUTPUT_KEY].numpy()
                    self.loaded.add(int(name))
                except Exception as e:  # noqa: BLE001  (any failure to load is the finding)
                    # not merely deleted while loading (remove_version deletes saved_model.pb
                    # first; a load begun before can then miss the assets or variables)
                    if storage.exists(storage.join(folder, "saved_model.pb")):
                        self.failed.append(f"{name}: {type(e).__name__}: {e}"[:300])


def test_publishing_on_s3_never_shows_a_loadable_partial_version(bucket, monkeypatch):
    base = bucket + "/export/actr"
    stagings = [stage_saved_model(_model(seed), SPEC, base, _examples())
                for seed in (0, 1)]
    assert all(s.split("/")[-1].startswith(".staging-") for s in stagings)
    copy = storage.copy

    def slow_copy(source, destination, overwrite=True):  # widen the window a poller can hit
        time.sleep(0.2)  # a poll (a listing, a stat) takes ~20 ms here
        copy(source, destination, overwrite)

    monkeypatch.setattr(storage, "copy", slow_copy)
    poller = _Poller(base)
    poller.start()
    try:
        first = publish(stagings[0], base, keep=1)
        while 1 not in poller.loaded and not poller.failed:
            time.sleep(0.05)
        publish(stagings[1], base, keep=1)  # and removes version 1
        time.sleep(1.0)
    finally:
        poller.stop.set()
        poller.join(timeout=60)
    assert poller.failed == []
    assert poller.loaded == {1, 2} and poller.partial > 0  # it did look mid-publish
    assert versions(base) == [2] and not storage.exists(first)
    assert [n for n in storage.listdir(base)] == ["2"]  # the stagings are gone


def test_an_interrupted_publish_is_not_a_version_and_is_removed(bucket):
    base = bucket + "/export/actr"
    staging = stage_saved_model(_model(), SPEC, base, _examples())
    publish(staging, base)
    # a publish killed mid-copy: files of version 2, no saved_model.pb, no marker
    storage.copy(storage.join(base, "1", "variables", "variables.index"),
                 storage.join(base, "2", "variables", "variables.index"))
    assert versions(base) == [1] and unfinished_versions(base) == [storage.join(base, "2")]
    for path in unfinished_versions(base):
        remove_version(path)
    assert storage.listdir(base) == ["1"]
    assert export.unfinished_versions(storage.join(bucket, "nothing")) == []


def test_checkpoints_round_trip_on_s3(bucket):
    model = _model(seed=3)
    folder = bucket + "/work/models/actr/2026-01-02"
    meta = {"kind": "actr", "features": "all", "numeric_stats": {}, "domains": ["s1|p0|g1"]}
    save_checkpoint(folder, model, SPEC, VOCABS, meta)
    save_checkpoint(folder, model, SPEC, VOCABS, meta)  # overwriting keeps one whole folder
    assert storage.exists(storage.join(folder, META))
    assert not any(name.endswith(".tmp") for name in storage.listdir(storage.dirname(folder)))
    loaded = load_checkpoint(folder)
    features, _ = parse_batch(SPEC, tf.constant(_examples()))
    np.testing.assert_allclose(loaded.model(features).numpy(), model(features).numpy(), atol=1e-6)


def _cli(*args, timeout=900):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ecdctr", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_the_daily_job_runs_on_s3_from_logs_to_a_served_version(bucket, tmp_path, capsys):
    import datetime as dt
    import gzip
    import json
    import os

    from ecdctr.data.simulator import SimConfig, simulate

    local_logs = tmp_path / "logs"
    simulate(str(local_logs), dt.date(2026, 1, 1), 8,
             SimConfig(users=300, items=120, new_users_per_day=10, new_items_per_day=3,
                       natural_rows_per_day=600, seed=5))
    storage.copytree(str(local_logs), bucket + "/logs")
    config = tmp_path / "s3.yaml"
    config.write_text(
        f"spec: {os.path.abspath('features/default.yaml')}\nlogs: {bucket}/logs\n"
        f"work: {bucket}/work\nexport: {bucket}/export\nlock: {tmp_path / 'daily.lock'}\n"
        "windows: {tpm_days: 4, cpm_days: 3, actr_days: 3}\ntransfer: {tpm_snapshots: 1}\n"
        "model: {hidden: [8]}\ngate: {max_auc_drop: 0.5}\n"
        "tpm: {hidden: [8], batch_size: 256, max_epochs: 1}\ncpm: {batch_size: 256, max_epochs: 1}\n"
        "actr: {batch_size: 64, max_epochs: 1}\n")
    done = _cli("daily", f"--config={config}", "--date=2026-01-08")
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(storage.read_text(bucket + "/work/reports/2026-01-08.json"))
    assert report["status"] == "ok" and report["published"], report
    assert report["steps"]["tpm"]["status"] == "ok" and report["steps"]["cpm"]["status"] == "ok"
    assert versions(bucket + "/export/actr") == [1]
    assert storage.listdir(bucket + "/work/models/actr") == ["2026-01-08"]
    assert not list(tmp_path.glob("**/*.tfrecord.gz"))  # nothing was built on the local disk

    sample = tmp_path / "sample.jsonl"
    with gzip.open(local_logs / "ad" / "date=2026-01-08" / "part-00000.jsonl.gz", "rt") as f:
        sample.write_text("".join(f.readline() for _ in range(3)))
    served = _cli("predict", f"--model={bucket}/export/actr", f"--input={sample}", timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]  # its own status, not tensorflow-io's 134
    probabilities = [float(x) for x in served.stdout.split()]
    assert len(probabilities) == 3 and all(0 < p < 1 for p in probabilities)
    # the processes' own exit statuses are checked above; the rest runs in this one
    with pytest.raises(SystemExit) as again:
        main(["daily", f"--config={config}", "--date=2026-01-08"])
    out = capsys.readouterr()
    assert again.value.code == 4 and "is done" in out.err + out.out  # nothing to do
    with pytest.raises(SystemExit) as failed:
        main(["inspect", f"{bucket}/work/models/nothing"])
    assert failed.value.code == 2 and "error:" in capsys.readouterr().err
