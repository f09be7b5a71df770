"""Benchmark: parameters and train-step time of the multi-domain towers against the number of
domains (10, 100, 1,000, 5,000), each as a ratio to the plain DNN measured in the same run.

    python benchmarks/domains.py [--domains 10,100,1000,5000] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import tensorflow as tf

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from ecdctr.models.ctr_model import ModelConfig, build_model
from ecdctr.spec.feature_spec import load_spec

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = load_spec(os.path.join(HERE, "..", "features", "default.yaml"))
TOWERS = ("none", "adasparse", "star", "apg")
BATCH = 1024


def batch(domains: int, rng: np.random.Generator) -> tuple[dict, tf.Tensor]:
    """One batch whose domain (scenario) follows a Zipf law over `domains` values."""
    ranks = np.minimum(rng.zipf(1.1, BATCH), domains) - 1
    features = {}
    for f in SPEC.features:
        if f.kind == "numeric":
            features[f.name] = tf.constant(rng.lognormal(3, 1, BATCH).astype("float32"))
        elif f.kind == "categorical_list":
            features[f.name] = tf.ragged.constant([[f"c{rng.integers(50)}"] for _ in range(BATCH)])
        elif f.name == "scenario":
            features[f.name] = tf.constant([f"s{r}" for r in ranks])
        else:
            features[f.name] = tf.constant([f"v{v}" for v in rng.integers(0, 50, BATCH)])
    return features, tf.constant(rng.random((BATCH, 1)) < 0.05, tf.float32)


def measure(tower: str, domains: int, steps: int) -> dict:
    rng = np.random.default_rng(0)
    vocabs = {f.name: [f"v{i}" for i in range(50)] for f in SPEC.features if f.uses_vocab}
    vocabs["scenario"] = [f"s{i}" for i in range(domains)]
    vocabs["hist_categories"] = [f"c{i}" for i in range(50)]
    keys = [f"s{i}|v0|v0" for i in range(domains)]
    data = [batch(domains, rng) for _ in range(4)]
    # every row's other domain features are fixed to v0 so the domain is the scenario
    for features, _ in data:
        for name in ("position", "user_segment"):
            features[name] = tf.fill([BATCH], "v0")
    model = build_model(SPEC.features, vocabs, {}, ModelConfig(multi_domain=tower), data[0][0],
                        initial_ctr=0.05, domains=keys)
    model.set_total_steps(1000)
    times = []
    for i in range(steps + 3):
        x, y = data[i % len(data)]
        started = time.perf_counter()
        model.train_on_batch(x, y)
        if i >= 3:  # warm-up: tracing and the first optimizer slots
            times.append(time.perf_counter() - started)
    return {"tower_parameters": int(sum(np.prod(v.shape) for v in model.mlp.weights)),
            "parameters": int(model.count_params()),
            "step_ms": statistics.median(times) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", default="10,100,1000,5000")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "domains.json"))
    args = parser.parse_args()
    results = []
    for d in (int(x) for x in args.domains.split(",")):
        row = {"domains": d}
        for tower in TOWERS:
            m = measure(tower, d, args.steps)
            row[tower] = m
            print(f"{d:>5} domains  {tower:<9} tower params {m['tower_parameters']:>12,}  "
                  f"step {m['step_ms']:8.1f} ms", flush=True)
        for tower in TOWERS[1:]:
            row[tower]["step_ratio"] = row[tower]["step_ms"] / row["none"]["step_ms"]
            row[tower]["param_ratio"] = (row[tower]["tower_parameters"]
                                         / row["none"]["tower_parameters"])
        results.append(row)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("\n| domains | " + " | ".join(f"{t} tower params (x dnn) | {t} step ms (x dnn)"
                                       for t in TOWERS[1:]) + " | dnn step ms |")
    print("|---|" + "---|---|" * (len(TOWERS) - 1) + "---|")
    for row in results:
        cells = [f"{row[t]['tower_parameters']:,} ({row[t]['param_ratio']:.1f}x) | "
                 f"{row[t]['step_ms']:.1f} ({row[t]['step_ratio']:.2f}x)" for t in TOWERS[1:]]
        print(f"| {row['domains']:,} | " + " | ".join(cells) + f" | {row['none']['step_ms']:.1f} |")


if __name__ == "__main__":
    main()
