"""Benchmark: peak memory (and time) of evaluating a held-out day against its rows, the
streamed evaluation daily and compare run against the whole-day arrays it replaced.

    python benchmarks/eval_memory.py [--rows 500000,1000000,2000000,5000000]
                                     [--old_rows 500000,1000000] [--repeats 3]
                                     [--out benchmarks/results/eval_memory.json]

A synthetic day of GZIP TFRecord Examples with every feature of features/default.yaml
(100,000 users, 20,000 items, 4x4x4 domains, random prices, clicks at ~5%) is written once
per size under benchmarks/.data/eval-<rows>/ (byte templates of one serialized Example, so
writing 5M rows takes seconds). Each arm runs in a fresh process, whose peak resident set
(ru_maxrss) is read by this one:

  streamed  `pipelines.steps.evaluate` on the day, as daily calls it: an untrained A-CTR
            (build_model, hidden (64, 32), AdaSparse) scores batches of 4096 and
            `ecdctr.evaluation.evaluator.Evaluator` counts LogLoss, AUC and GAUC exactly.
  arrays    the code before: the same scored batches concatenated into whole-day arrays
            (labels, probabilities, users, domains), then `ecdctr.evaluation.metrics` logloss, auc,
            gauc on them.
  gate      `ecdctr.serving.gate.saved_model_auc`: the serving SavedModel (the same model, exported)
            scores the day streamed, AUC counted exactly.
  gate_old  the gate before: every serialized Example of the day in a Python list, labels
            parsed from one tensor of all of them, scored in batches of 4096, metrics.auc.

`floor` is the streamed arm on 10,000 rows: TensorFlow, the model and the dataset pipeline
alone. Peak memory is reported as the median over --repeats (it barely moves); seconds
(wall) too. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import time

import numpy as np

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SPEC_PATH = os.path.join(ROOT, "features", "default.yaml")
DATA = os.path.join(HERE, ".data")
DATE = dt.date(2026, 1, 1)
USERS, ITEMS = 100_000, 20_000


def _template(spec: object, user: str, item: str, domain: tuple[str, str, str], price: float,
              click: int) -> bytes:
    import tensorflow as tf

    def text(*values: str) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))

    values = {"user_id": text(user), "item_id": text(item), "gender": text("f"),
              "age_level": text("3"), "city_tier": text("1"), "scenario": text(domain[0]),
              "position": text(domain[1]), "user_segment": text(domain[2]),
              "category": text("c7"), "brand": text("b3"), "hist_categories": text("c1", "c7"),
              "price": tf.train.Feature(float_list=tf.train.FloatList(value=[price])),
              "click": tf.train.Feature(int64_list=tf.train.Int64List(value=[click]))}
    features = {k: v for k, v in values.items()
                if k == spec.label or any(f.column == k for f in spec.features)}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_day(spec: object, rows: int, folder: str) -> list[str]:
    """A day of `rows` Examples as work/examples/ad/date=D/part-*.tfrecord.gz (kept)."""
    import tensorflow as tf

    day = os.path.join(folder, "examples", "ad", f"date={DATE}")
    done = os.path.join(day, "_DONE")
    if os.path.exists(done):
        return sorted(os.path.join(day, f) for f in os.listdir(day) if f.endswith(".gz"))
    os.makedirs(day, exist_ok=True)
    base = _template(spec, "u000000", "i00000", ("S0", "P0", "G0"), 123.25, 0)
    other = _template(spec, "u111111", "i11111", ("S1", "P1", "G1"), 7.5, 1)
    assert len(base) == len(other)
    diff = np.flatnonzero(np.frombuffer(base, np.uint8) != np.frombuffer(other, np.uint8))
    user, item = base.index(b"u000000") + 1, base.index(b"i00000") + 1
    price = base.index(struct.pack("<f", 123.25))
    domain = [base.index(b) + 1 for b in (b"S0", b"P0", b"G0")]
    click = [int(i) for i in diff if not (user <= i < user + 6 or item <= i < item + 5
                                          or price <= i < price + 4 or i in domain)]
    assert len(click) == 1, click
    rng = np.random.default_rng(rows)
    path = os.path.join(day, "part-00000.tfrecord.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            out = np.tile(np.frombuffer(base, np.uint8), (n, 1))
            for offset, width, ids in ((user, 6, rng.integers(0, USERS, n)),
                                       (item, 5, rng.integers(0, ITEMS, n))):
                for k in range(width):
                    out[:, offset + width - 1 - k] = 48 + ids // 10 ** k % 10
            for offset in domain:
                out[:, offset] = 48 + rng.integers(0, 4, n)
            out[:, price:price + 4] = (rng.lognormal(3, 1, n).astype(np.float32)
                                       .view(np.uint8).reshape(n, 4))
            out[:, click[0]] = rng.random(n) < 0.05
            for row in out:
                writer.write(row.tobytes())
    open(done, "w").close()
    return [path]


def _model(spec: object) -> object:
    from ecdctr.data.datasets import example_batch
    from ecdctr.models.ctr_model import ModelConfig, build_model

    vocabs = {"user_id": [f"u{i:06d}" for i in range(USERS)],
              "item_id": [f"i{i:05d}" for i in range(ITEMS)],
              "scenario": ["S0", "S1", "S2", "S3"], "position": ["P0", "P1", "P2", "P3"],
              "user_segment": ["G0", "G1", "G2", "G3"], "gender": ["f", "m"],
              "age_level": [str(i) for i in range(8)], "city_tier": ["1", "2", "3"],
              "category": [f"c{i}" for i in range(50)], "hist_categories": [f"c{i}" for i in range(50)]}
    vocabs = {f.name: vocabs.get(f.name, ["x"]) for f in spec.features if f.uses_vocab}
    domains = [f"S{a}|P{b}|G{c}" for a in range(4) for b in range(4) for c in range(4)]
    config = ModelConfig(hidden=(64, 32), multi_domain="adasparse", seed=0)
    return build_model(spec.features, vocabs, {}, config, example_batch(spec), initial_ctr=0.05,
                       domains=domains)


def run_arm(arm: str, folder: str) -> dict:
    """One arm in this process (the child); prints its figures as JSON."""
    import tensorflow as tf

    from ecdctr.data.datasets import make_dataset
    from ecdctr.evaluation import metrics
    from ecdctr.spec.feature_spec import load_spec

    spec = load_spec(SPEC_PATH)
    day = os.path.join(folder, "examples", "ad", f"date={DATE}")
    files = sorted(os.path.join(day, f) for f in os.listdir(day) if f.endswith(".tfrecord.gz"))
    from pipelines import steps  # every arm imports what daily imports

    started, cpu = time.perf_counter(), time.process_time()
    if arm in ("streamed", "arrays"):
        model = _model(spec)
        if arm == "streamed":
            out = steps.evaluate(model, spec, folder, [("ad", DATE)])
        else:
            from ecdctr.training.loop import scored_batches

            batches = list(scored_batches(model, spec, make_dataset(spec, files, 4096)))
            day = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
            del batches
            out = {"rows": len(day["labels"]),
                   "logloss": metrics.logloss(day["labels"], day["probs"]),
                   "auc": metrics.auc(day["labels"], day["probs"]),
                   "gauc": metrics.gauc(day["labels"], day["probs"], day["groups"])}
    else:
        export = os.path.join(folder, "export")
        if arm == "gate":
            from ecdctr.serving.gate import saved_model_auc

            out = {"auc": saved_model_auc(export, files, spec.label)}
        else:
            from ecdctr.serving.export import INPUT_KEY, OUTPUT_KEY

            examples = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
            labels = tf.io.parse_example(tf.constant(examples), {
                spec.label: tf.io.FixedLenFeature([], tf.int64)})[spec.label].numpy()
            serve = tf.saved_model.load(export).signatures["serving_default"]
            probs = np.concatenate([
                serve(**{INPUT_KEY: tf.constant(examples[i:i + 4096])})[OUTPUT_KEY].numpy()
                for i in range(0, len(examples), 4096)])
            out = {"auc": metrics.auc(labels, probs)}
    out.update(seconds=round(time.perf_counter() - started, 1),
               cpu_seconds=round(time.process_time() - cpu, 1),
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return out


def _export(folder: str) -> None:
    """The model of the arms as the serving SavedModel of the gate arms (once per day)."""
    import tensorflow as tf

    from ecdctr.serving.export import serving_function
    from ecdctr.spec.feature_spec import load_spec

    path = os.path.join(folder, "export")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        spec = load_spec(SPEC_PATH)
        model = _model(spec)
        tf.saved_model.save(model, path, signatures={"serving_default": serving_function(model, spec)})


def _child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"{args}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="500000,1000000,2000000,5000000")
    p.add_argument("--old_rows", default="500000,1000000", help="sizes of the arrays and gate_old arms")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arms", default="streamed,arrays,gate,gate_old")
    p.add_argument("--out", default=os.path.join(HERE, "results", "eval_memory.json"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        arm, folder = args.child
        if arm == "write":
            from ecdctr.spec.feature_spec import load_spec

            write_day(load_spec(SPEC_PATH), int(os.path.basename(folder).split("-")[1]), folder)
            _export(folder)
            print(json.dumps({}))
        else:
            print(json.dumps(run_arm(arm, folder)))
        return 0
    sizes = [10_000] + [int(n) for n in args.rows.split(",")]
    old = {int(n) for n in args.old_rows.split(",")}
    arms = args.arms.split(",")
    results: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "loadavg_before": round(os.getloadavg()[0], 2), "repeats": args.repeats,
                     "nproc": os.cpu_count(), "sizes": {}}
    for rows in sizes:
        folder = os.path.join(DATA, f"eval-{rows}")
        t0 = time.perf_counter()
        _child("write", folder)
        print(f"{rows:,} rows written in {time.perf_counter() - t0:.0f} s", flush=True)
        entry: dict = {}
        for arm in arms:
            if arm in ("arrays", "gate_old") and rows not in old and rows != 10_000:
                continue
            if arm != "streamed" and rows == 10_000:
                continue
            runs = []
            for _ in range(args.repeats):
                runs.append(_child(arm, folder))
                runs[-1]["loadavg"] = round(os.getloadavg()[0], 2)
            entry[arm] = {"peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                          "seconds": statistics.median(r["seconds"] for r in runs),
                          "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
                          "runs": runs}
            print(f"{rows:>9,} {arm:9} peak {entry[arm]['peak_rss_mb']:>6} MB "
                  f"{entry[arm]['seconds']:>6} s (load {runs[-1]['loadavg']})", flush=True)
        results["sizes"][str(rows)] = entry
        results["loadavg_after"] = round(os.getloadavg()[0], 2)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
