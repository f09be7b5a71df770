"""Benchmark: the CPM's TPM aggregator (K snapshots, attention per id) against its export form, the
merged table (one lookup per entity): median latency as tf.functions for 1, 100 and 1,000 ids,
the tables' bytes and each variant's SavedModel size. Arms are timed alternately call by call,
so a drifting machine load hits them alike.

    python benchmarks/tpm_lookup.py [--calls 300] [--out benchmarks/results/tpm_lookup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from ecdctr.layers.aggregator import MergedTpmLookup, TpmAggregator
from ecdctr.seeding import set_random_seed

HERE = os.path.dirname(os.path.abspath(__file__))
ENTITIES = {"user": 200_000, "item": 50_000}
DIM = 16
SNAPSHOTS = 3
OVERLAP = 0.9  # share of a snapshot's ids that the next snapshot keeps
UNSEEN = 0.05  # share of looked-up ids that no snapshot holds
BATCHES = (1, 100, 1000)


def snapshots(rng: np.random.Generator) -> list[dict[str, tuple[list[str], np.ndarray]]]:
    """K snapshots, oldest first: each keeps OVERLAP of the previous one's ids, the rest are new."""
    out: list[dict] = [{} for _ in range(SNAPSHOTS)]
    for name, n in ENTITIES.items():
        ids = np.arange(n)
        next_id = n
        for k in range(SNAPSHOTS):
            if k:
                kept = rng.choice(ids, int(n * OVERLAP), replace=False)
                ids = np.concatenate([kept, np.arange(next_id, next_id + n - len(kept))])
                next_id += n - len(kept)
            keys = [f"{name[0]}{i}" for i in ids]
            out[k][name] = (keys, rng.normal(0.0, 0.1, (n, DIM)).astype(np.float32))
    return out


def id_batch(rng: np.random.Generator, agg: TpmAggregator, size: int) -> dict[str, tf.Tensor]:
    """size ids per entity feature: from the snapshots' union, UNSEEN of them new."""
    batch = {}
    for name in agg.feature_names:
        keys = agg.keys[name]
        picked = [keys[i] for i in rng.integers(0, len(keys), size)]
        batch[name] = tf.constant([f"new_{i}" if u < UNSEEN else k
                                   for i, (k, u) in enumerate(zip(picked, rng.random(size), strict=True))])
    return batch


def serving_module(layer: keras.layers.Layer) -> tuple[tf.Module, tf.types.experimental.Function]:
    """A module holding the layer and its tf.function over string id tensors."""
    module = tf.Module()
    module.layer = layer
    spec = {name: tf.TensorSpec([None], tf.string, name) for name in sorted(ENTITIES)}
    module.lookup = tf.function(lambda ids: layer(ids), input_signature=[spec])
    return module, module.lookup


def folder_bytes(path: str) -> int:
    """Apparent size of a folder (what `du -sb` prints)."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def latencies(arms: dict, batches: dict[int, dict], calls: int) -> dict:
    """Median ms per arm and batch size, arms interleaved call by call (order alternating)."""
    out: dict = {name: {} for name in arms}
    for size, batch in batches.items():
        for fn in arms.values():  # warm-up
            for _ in range(20):
                fn(batch).numpy()
        times: dict[str, list[float]] = {name: [] for name in arms}
        for i in range(calls):
            order = list(arms.items()) if i % 2 == 0 else list(reversed(arms.items()))
            for name, fn in order:
                started = time.perf_counter()
                fn(batch).numpy()
                times[name].append((time.perf_counter() - started) * 1000)
        for name, t in times.items():
            out[name][size] = float(np.median(t))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "tpm_lookup.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    set_random_seed(args.seed)
    agg = TpmAggregator(snapshots(rng), name="tpm")
    for attention in agg.attentions.values():  # trained-looking, non-uniform attention
        for weight in attention.trainable_weights:
            weight.assign(rng.normal(0.0, 0.5, weight.shape).astype(np.float32))
    merged = MergedTpmLookup(agg.merged_tables(), name="tpm")
    batches = {size: id_batch(rng, agg, size) for size in BATCHES}
    check = max(float(np.abs(agg(b).numpy() - merged(b).numpy()).max()) for b in batches.values())
    modules = {"aggregator": serving_module(agg), "merged": serving_module(merged)}
    result = {"latency_ms": latencies({k: fn for k, (_, fn) in modules.items()}, batches, args.calls)}
    result["table_bytes"] = {
        "aggregator": sum(w.numpy().nbytes for w in agg.non_trainable_weights),
        "merged": sum(w.numpy().nbytes for w in merged.non_trainable_weights)}
    with tempfile.TemporaryDirectory() as folder:
        result["savedmodel_bytes"] = {}
        for name, (module, fn) in modules.items():
            path = os.path.join(folder, name)
            tf.saved_model.save(module, path, signatures={"serving_default": fn})
            result["savedmodel_bytes"][name] = folder_bytes(path)

    def row(label: str, values: dict, fmt: str) -> str:
        a, m = values["aggregator"], values["merged"]
        return f"| {label} | {a:{fmt}} | {m:{fmt}} | {a / m:.2f} |"

    print(f"| K={SNAPSHOTS}, d={DIM}, " + ", ".join(f"{k} {n:,}" for k, n in ENTITIES.items())
          + " | aggregator | merged table | aggregator / merged |")
    print("|---|---|---|---|")
    for size in BATCHES:
        print(row(f"median latency, batch of {size:,} (ms)",
                  {k: v[size] for k, v in result["latency_ms"].items()}, ".3f"))
    print(row("tables (MB)", {k: v / 1e6 for k, v in result["table_bytes"].items()}, ".1f"))
    print(row("SavedModel folder (MB)", {k: v / 1e6 for k, v in result["savedmodel_bytes"].items()}, ".1f"))
    print(f"\nmax |aggregator - merged| over the batches: {check:.2e}; {args.calls} calls per arm")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"entities": ENTITIES, "dim": DIM, "snapshots": SNAPSHOTS, "overlap": OVERLAP,
                   "unseen_share": UNSEEN, "calls": args.calls, "max_abs_diff": check, **result},
                  f, indent=1)


if __name__ == "__main__":
    main()
