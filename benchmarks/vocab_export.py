"""Export size, export time and load time of a model with an N-id vocabulary and N TPM id
keys: vocabularies as graph constants (the export before issue 21) against asset files.

    python benchmarks/vocab_export.py --ids 1000000 10000000 --repeats 3

The model is a CtrModel of a four-feature spec (a user id with a vocabulary of N ids, also a
TPM feature whose one snapshot holds the same N ids, a domain feature and a price), so the
export holds two N-id lookups and small weights: the figures are the vocabularies' cost. Each
export is the save step of `stage_saved_model` (serving form, both signatures), with or without
`vocabulary_assets`; the load time is a fresh process's `tf.saved_model.load` plus its first
prediction (tables are initialized at load), after its imports; wall and CPU seconds (the
process's, all threads). One export of a 10-id model in each mode first takes the one-time
costs out. Medians of --repeats; dates, load averages and every repeat are in the results
(benchmarks/results/vocab_export*.json).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import numpy as np
import tensorflow as tf

from ecdctr.data.datasets import example_batch, feature_description, features_by_name
from ecdctr.data.rows import features_example
from ecdctr.models.ctr_model import ModelConfig, build_model, serving_form
from ecdctr.serving.export import RAW_SIGNATURE, raw_function, serving_function
from ecdctr.serving.vocab_assets import vocabulary_assets
from ecdctr.spec.feature_spec import Spec, load_spec

HERE = Path(__file__).parent
SPEC_TEXT = """
label: click
timestamp: ts
request_id: request_id
features:
  user_id: {kind: categorical, vocab: {min_count: 1, max_size: 100000000}, dim: 2, tpm: true,
            entity: user}
  scenario: {kind: categorical, vocab: {min_count: 1, max_size: 16}, dim: 2, domain: true}
  price: {kind: numeric, normalize: log, default: 0.0}
"""
LOAD_CHILD = """
import json, resource, sys, time
import ecdctr
import tensorflow as tf
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started, cpu_started = time.perf_counter(), cpu()
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(examples=tf.constant([bytes.fromhex(sys.argv[2])]))["click_probability"].numpy()
print(json.dumps({"load_s": time.perf_counter() - started, "load_cpu_s": cpu() - cpu_started,
                  "probability": float(out[0]),
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def user_ids(n: int) -> list[str]:
    return [f"user-{i:09d}" for i in range(n)]


def model_of(spec: Spec, n: int):
    """A CtrModel whose user_id vocabulary and TPM snapshot hold n ids."""
    ids = user_ids(n)
    vectors = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    return build_model(spec.features, {"user_id": ids, "scenario": ["s1", "s2"]}, {},
                       ModelConfig(hidden=(4,)), example_batch(spec), tpm_tables={"user_id": (ids, vectors)},
                       initial_ctr=0.1, domains=["s1", "s2"])


def export(model, spec: Spec, folder: str, assets: bool) -> tuple[float, float]:
    """(wall, CPU) seconds to save the serving form into folder (vocabularies as assets or as
    constants)."""
    shutil.rmtree(folder, ignore_errors=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    with serving_form(model), vocabulary_assets(model) if assets else contextlib.nullcontext():
        tf.saved_model.save(model, folder, signatures={
            "serving_default": serving_function(model, spec),
            RAW_SIGNATURE: raw_function(model, spec)})
    return time.perf_counter() - started, time.process_time() - cpu_started


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 3)


def load(folder: str, example: bytes) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD_CHILD, folder, example.hex()], check=True,
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(spec: Spec, n: int, modes: list[str], repeats: int, work: Path) -> list[dict]:
    """One row per mode for n ids: medians of export and load time, sizes, the prediction."""
    started = time.perf_counter()
    model = model_of(spec, n)
    build_s = time.perf_counter() - started
    example = features_example({"user_id": "user-000000001", "scenario": "s1", "price": 3.0})
    parsed = tf.io.parse_example(tf.constant([example.SerializeToString()]),
                                 feature_description(spec, with_label=False))
    expected = float(model(features_by_name(spec, parsed), training=False).numpy().ravel()[0])
    rows = []
    for mode in modes:
        folder = str(work / f"{mode}-{n}")
        exports, loads = [], []
        for _ in range(repeats):
            exports.append(export(model, spec, folder, mode == "assets"))
            loads.append(load(folder, example.SerializeToString()))
        root = Path(folder)
        rows.append({
            "ids": n, "mode": mode, "repeats": repeats, "model_build_s": round(build_s, 2),
            "export_s": round(statistics.median(x[0] for x in exports), 2),
            "export_s_all": [round(x[0], 2) for x in exports],
            "export_cpu_s": round(statistics.median(x[1] for x in exports), 2),
            "export_cpu_s_all": [round(x[1], 2) for x in exports],
            "load_s": round(statistics.median(x["load_s"] for x in loads), 2),
            "load_s_all": [round(x["load_s"], 2) for x in loads],
            "load_cpu_s": round(statistics.median(x["load_cpu_s"] for x in loads), 2),
            "load_cpu_s_all": [round(x["load_cpu_s"], 2) for x in loads],
            "load_max_rss_mb": round(max(x["max_rss_mb"] for x in loads)),
            "saved_model_pb_mb": size_mb(root / "saved_model.pb"),
            "assets_mb": size_mb(root / "assets"), "variables_mb": size_mb(root / "variables"),
            "same_prediction": all(abs(x["probability"] - expected) < 1e-6 for x in loads)})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--modes", nargs="+", default=["graph", "assets"], choices=["graph", "assets"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "vocab_export.json"))
    args = parser.parse_args()
    started, load_start = dt.datetime.now().isoformat(timespec="seconds"), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vocab-export-") as tmp:
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(SPEC_TEXT)
        spec = load_spec(str(spec_path))
        warm = model_of(spec, 10)  # one-time costs (imports, first traces) out of the figures
        for assets in (False, True):
            export(warm, spec, str(Path(tmp) / "warm-up"), assets)
        rows = []
        for n in args.ids:
            rows += measure(spec, n, args.modes, args.repeats, Path(tmp))
    result = {"started": started, "finished": dt.datetime.now().isoformat(timespec="seconds"),
              "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "cpus": os.cpu_count(), "python": sys.version.split()[0], "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
