"""Benchmark: in-process SavedModel latency of the serving signature (p50/p99 for 1, 100 and
1,000 candidates) for an A-CTR with AdaSparse against a plain DNN export of the same size,
each as exports ship it (models.serving_form: FoldedMlp, AdaSparseServingMlp on its dense and
its tf.sparse pruned-MLP path) and with its training tower exported unfolded (the exports
before the folding); AdaSparse both as published (pruners reading [e_d ; h_l]) and with
`pruner_input: domain` (pruners reading e_d alone: factors tabulated per domain ids at
export, and from one matmul on e_d). Arms are
timed alternately in one run, so a drifting machine load hits them alike; each figure is the
median over --repeats runs of the arms.

    python benchmarks/serving.py [--calls 200] [--repeats 3] [--out benchmarks/results/serving.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from ecdctr.data.datasets import parse_batch
from ecdctr.data.rows import RowParser, to_example
from ecdctr.data.simulator import SimConfig, World, sample_day
from ecdctr.models.adasparse import AdaSparseConfig
from ecdctr.models.ctr_model import ModelConfig, build_model, serving_form
from ecdctr.serving.export import OUTPUT_KEY, serving_function
from ecdctr.spec.feature_spec import load_spec

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = load_spec(os.path.join(HERE, "..", "features", "default.yaml"))
CANDIDATES = (1, 100, 1000)


def simulated_examples(n: int) -> list[bytes]:
    """n serialized Examples of simulated ad-free natural traffic (one day of the simulator)."""
    import datetime as dt

    world = World(SimConfig(natural_rows_per_day=n, seed=1))
    world.advance()
    parser = RowParser(SPEC)
    rows = sample_day(world, "natural", dt.date(2026, 1, 1))[:n]
    return [to_example(SPEC, parser.parse(r)).SerializeToString() for r in rows]


def exports(multi_domain: str, examples: list[bytes], folder: str,
            adasparse: AdaSparseConfig | None = None, label: str = "adasparse",
            unfolded: bool = True) -> tuple[dict[str, str], list[float]]:
    """Exports a model of the demo's size after a few steps (so the pruner prunes) in the
    form exports ship (serving_form: BatchNorm folded, AdaSparse on its dense and tf.sparse
    paths, arms named after label) and, if unfolded, with its training tower unfolded (the
    export before the folding). Returns the paths by arm and the AdaSparse tower's share of
    pruned factors per layer on the examples (empty for other towers)."""
    batch = parse_batch(SPEC, tf.constant(examples[:2048]))
    features = batch[0]
    vocabs = {}
    for f in SPEC.features:
        if f.uses_vocab:
            values = features[f.name]
            flat = values.flat_values if isinstance(values, tf.RaggedTensor) else values
            vocabs[f.name] = sorted({v.decode() for v in flat.numpy()}) or ["<none>"]
    domains = sorted({"|".join(v.decode() for v in t) for t in zip(
        *(features[f.name].numpy() for f in SPEC.domain_features), strict=True)})
    model = build_model(SPEC.features, vocabs, {},
                        ModelConfig(multi_domain=multi_domain,
                                    adasparse=adasparse or AdaSparseConfig()),
                        features, initial_ctr=0.05, domains=domains, name="actr")
    model.set_total_steps(10)
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(10), verbose=0)

    def save(name: str) -> str:
        path = os.path.join(folder, name.replace(" ", "_"))
        tf.saved_model.save(model, path,
                            signatures={"serving_default": serving_function(model, SPEC)})
        return path

    tower = "dnn" if multi_domain == "none" else label
    paths = {f"{tower} unfolded (before)": save(f"{tower}-unfolded")} if unfolded else {}
    if multi_domain != "adasparse":
        with serving_form(model):
            paths[tower] = save(tower)
        return paths, []
    x, e_d, _, _ = model.tower_inputs(features)
    tower, sparsity = model.mlp, model.mlp.sparsity(x, e_d)
    for sparse, path in (False, "dense path"), (True, "tf.sparse path"):
        with serving_form(model):
            model.mlp.sparse_inference = sparse
            paths[f"{label} ({path})"] = save(f"{label}-{path.split()[0]}")
    if adasparse is not None and adasparse.pruner_input == "domain":
        with serving_form(model):  # the factors from one matmul on e_d instead of tables
            model.mlp = tower.for_serving(model.encoder.domain_columns())
            paths[f"{label}, matmul (dense path)"] = save(f"{label}-matmul")
    return paths, sparsity


def latencies(paths: dict[str, str], examples: list[bytes], calls: int) -> dict:
    """p50/p99 latency in ms per arm and candidate count, arms interleaved call by call."""
    serve = {k: tf.saved_model.load(p).signatures["serving_default"] for k, p in paths.items()}
    out: dict = {k: {} for k in paths}
    for n in CANDIDATES:
        batch = tf.constant(examples[:n])
        times: dict[str, list[float]] = {k: [] for k in paths}
        for fn in serve.values():  # warm-up
            for _ in range(5):
                fn(examples=batch)[OUTPUT_KEY].numpy()
        for i in range(calls):
            order = list(serve.items()) if i % 2 == 0 else list(reversed(serve.items()))
            for name, fn in order:
                started = time.perf_counter()
                fn(examples=batch)[OUTPUT_KEY].numpy()
                times[name].append((time.perf_counter() - started) * 1000)
        for name, t in times.items():
            out[name][n] = {"p50_ms": float(np.percentile(t, 50)),
                            "p99_ms": float(np.percentile(t, 99))}
    return out


def summary(runs: list[dict], bases: list[str]) -> dict:
    """Per arm and size: the median over runs of p50 and p99, the runs' p50s, and the median
    of the per-run p50 ratios to each base arm."""
    out: dict = {}
    for arm in runs[0]:
        out[arm] = {}
        for n in CANDIDATES:
            p50s = [r[arm][n]["p50_ms"] for r in runs]
            out[arm][n] = {"p50_ms": float(np.median(p50s)),
                           "p99_ms": float(np.median([r[arm][n]["p99_ms"] for r in runs])),
                           "p50_runs": p50s,
                           **{f"p50_over_{b}": float(np.median(
                               [r[arm][n]["p50_ms"] / r[b][n]["p50_ms"] for r in runs]))
                              for b in bases}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "serving.json"))
    args = parser.parse_args()
    examples = simulated_examples(6000)
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as folder:
        dnn, _ = exports("none", examples, folder)
        paper, paper_sparsity = exports("adasparse", examples, folder)
        domain, domain_sparsity = exports("adasparse", examples, folder,
                                          AdaSparseConfig(pruner_input="domain"),
                                          "adasparse domain-only", unfolded=False)
        paths = {**dnn, **paper, **domain}
        runs = []
        for _ in range(args.repeats):
            runs.append(latencies(paths, examples, args.calls))
            loads.append(os.getloadavg()[0])
    result = summary(runs, ["dnn", "dnn unfolded (before)"])
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 1-minute load average "
          f"{', '.join(f'{x:.1f}' for x in loads)}; medians of {args.repeats} runs; pruned "
          f"share per layer: adasparse {paper_sparsity}, domain-only {domain_sparsity}")
    print("| candidates | " + " | ".join(f"{k} p50 / p99 ms" for k in paths) + " |")
    print("|---|" + "---|" * len(paths))
    for n in CANDIDATES:
        print(f"| {n:,} | " + " | ".join(f"{r[n]['p50_ms']:.2f} / {r[n]['p99_ms']:.2f}"
                                        for r in result.values()) + " |")
    ada = [k for k in paths if k.startswith("adasparse")]
    print("\n| candidates | " + " | ".join(f"{k} / dnn (p50)" for k in ada)
          + " | adasparse unfolded / dnn unfolded (before) |")
    print("|---|" + "---|" * (len(ada) + 1))
    for n in CANDIDATES:
        ratios = [result[k][n]["p50_over_dnn"] for k in ada]
        before = result["adasparse unfolded (before)"][n]["p50_over_dnn unfolded (before)"]
        print(f"| {n:,} | " + " | ".join(f"{r:.2f}" for r in [*ratios, before]) + " |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "load_average_1min": loads, "calls": args.calls, "repeats": args.repeats,
                   "sparsity": {"adasparse": paper_sparsity,
                                "adasparse domain-only": domain_sparsity},
                   "latency": result}, f, indent=1)


if __name__ == "__main__":
    main()
