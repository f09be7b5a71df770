"""Benchmark: in-process SavedModel latency of the serving signature (p50/p99 for 1, 100 and
1,000 candidates) of an A-CTR with AdaSparse against a plain DNN export of the same size, each
as exports ship it (models.serving_form), on requests whose candidates share one domain and on
requests of mixed domains (the simulator's natural traffic). Arms: the DNN; AdaSparse as
published (pruners reading [e_d ; h_l]); and AdaSparse with `pruner_input: domain` at set
per-layer sparsities (the pruners' biases shifted so that the given share of each layer's
factors is zero over the domain combinations; latency does not depend on quality), exported
with each `export_form`: its factors tabulated per domain ("tables", the default) and each
domain's MLP with its pruned neurons removed ("compacted"). Arms are timed alternately in one
run, so a drifting machine load hits them alike; each figure is the median over --repeats
runs of the arms.

    python benchmarks/serving.py [--calls 200] [--repeats 3] [--sparsity 0.2 0.5]
        [--out benchmarks/results/serving.json]
"""

from __future__ import annotations

import argparse
import dataclasses
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
from ecdctr.models.adasparse_compact import CompactedAdaSparseMlp
from ecdctr.models.ctr_model import CtrModel, ModelConfig, build_model, serving_form
from ecdctr.serving.export import OUTPUT_KEY, serving_function
from ecdctr.spec.feature_spec import load_spec

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = load_spec(os.path.join(HERE, "..", "features", "default.yaml"))
CANDIDATES = (1, 100, 1000)
REQUESTS = ("one domain", "mixed")


def simulated_examples(n: int) -> dict[str, list[bytes]]:
    """n serialized Examples of simulated ad-free natural traffic (one day of the simulator),
    as they come ("mixed": the domains of natural traffic) and with every row's domain-aware
    features set to the first row's ("one domain")."""
    import datetime as dt

    world = World(SimConfig(natural_rows_per_day=n, seed=1))
    world.advance()
    parser = RowParser(SPEC)
    rows = sample_day(world, "natural", dt.date(2026, 1, 1))[:n]
    first = {f.column: rows[0][f.column] for f in SPEC.domain_features}
    return {"mixed": [to_example(SPEC, parser.parse(r)).SerializeToString() for r in rows],
            "one domain": [to_example(SPEC, parser.parse({**r, **first})).SerializeToString()
                           for r in rows]}


def trained_model(multi_domain: str, examples: list[bytes],
                  adasparse: AdaSparseConfig | None = None) -> tuple[CtrModel, dict]:
    """A model of the demo's size after 10 steps (alpha at its end value) and its features."""
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
    return model, features


def set_domain_sparsity(model: CtrModel, share: float) -> None:
    """Shifts each domain-only pruner's biases so that `share` of its factors over all domain
    combinations (FeatureEncoder.domain_tables) are zero (fusion form)."""
    tower, c = model.mlp, model.mlp.config
    tables = model.encoder.domain_tables()
    combos = np.stack(np.meshgrid(*(np.arange(len(t)) for t in tables), indexing="ij"),
                      axis=-1).reshape(-1, len(tables))
    e_d = np.concatenate([t[combos[:, j]] for j, t in enumerate(tables)], axis=1)
    threshold = np.log(c.epsilon / c.beta / (1 - c.epsilon / c.beta)) / float(tower.alpha.numpy())
    for pruner in tower.pruners:  # pruned iff v = e_d K + b <= threshold
        logits = e_d @ pruner.dense.kernel.numpy() + pruner.dense.bias.numpy()
        pruner.dense.bias.assign(pruner.dense.bias + threshold - np.quantile(logits, share))


def save(model: CtrModel, folder: str, name: str) -> str:
    """The model's serving_default SavedModel in folder/name."""
    path = os.path.join(folder, name.replace(" ", "_").replace(",", ""))
    tf.saved_model.save(model, path, signatures={"serving_default": serving_function(model, SPEC)})
    return path


def exports(examples: list[bytes], folder: str, shares: list[float]) -> tuple[dict, dict]:
    """The arms' SavedModel paths and the pruned share per layer of each AdaSparse arm (over
    the mixed rows: mean of the factors' zero share)."""
    paths, sparsity = {}, {}
    for name, multi_domain in (("dnn", "none"), ("adasparse, paper's", "adasparse")):
        model, features = trained_model(multi_domain, examples)
        with serving_form(model):
            paths[name] = save(model, folder, name)
        if multi_domain == "adasparse":
            sparsity[name] = model.mlp.sparsity(*model.tower_inputs(features)[:2])
    model, features = trained_model("adasparse", examples, AdaSparseConfig(pruner_input="domain"))
    for share in shares:
        set_domain_sparsity(model, share)
        label = f"domain-only {share:.0%}"
        sparsity[label] = model.mlp.sparsity(*model.tower_inputs(features)[:2])
        for form in ("tables", "compacted"):
            model.mlp.config = dataclasses.replace(model.mlp.config, export_form=form)
            with serving_form(model):
                if isinstance(model.mlp, CompactedAdaSparseMlp) != (form == "compacted"):
                    raise RuntimeError(f"the export is not {form}: per-domain weights too large?")
                paths[f"{label}, {form}"] = save(model, folder, f"{label}-{form}")
    return paths, sparsity
def latencies(paths: dict[str, str], examples: dict[str, list[bytes]], calls: int) -> dict:
    """p50/p99 latency in ms per arm, request kind and candidate count, arms interleaved call
    by call, and the p50 of the process CPU time a call takes (all threads: less sensitive
    than latency to other processes taking the cores, which a shared machine sees)."""
    serve = {k: tf.saved_model.load(p).signatures["serving_default"] for k, p in paths.items()}
    out: dict = {k: {} for k in paths}
    for kind in REQUESTS:
        for n in CANDIDATES:
            batch = tf.constant(examples[kind][:n])
            times: dict[str, list[float]] = {k: [] for k in paths}
            cpu: dict[str, list[float]] = {k: [] for k in paths}
            for fn in serve.values():  # warm-up
                for _ in range(5):
                    fn(examples=batch)[OUTPUT_KEY].numpy()
            for i in range(calls):
                order = list(serve.items()) if i % 2 == 0 else list(reversed(serve.items()))
                for name, fn in order:
                    started, cpu_started = time.perf_counter(), time.process_time()
                    fn(examples=batch)[OUTPUT_KEY].numpy()
                    times[name].append((time.perf_counter() - started) * 1000)
                    cpu[name].append((time.process_time() - cpu_started) * 1000)
            for name, t in times.items():
                out[name][f"{kind} {n}"] = {"p50_ms": float(np.percentile(t, 50)),
                                            "p99_ms": float(np.percentile(t, 99)),
                                            "cpu_p50_ms": float(np.percentile(cpu[name], 50))}
    return out


def summary(runs: list[dict]) -> dict:
    """Per arm, request kind and size: the median over runs of p50 and p99, the runs' p50s,
    and the median of the per-run p50 ratios to the dnn arm."""
    out: dict = {}
    for arm in runs[0]:
        out[arm] = {}
        for key in runs[0][arm]:
            p50s = [r[arm][key]["p50_ms"] for r in runs]
            out[arm][key] = {
                "p50_ms": float(np.median(p50s)),
                "p99_ms": float(np.median([r[arm][key]["p99_ms"] for r in runs])),
                "p50_runs": p50s,
                "p50_over_dnn": float(np.median([r[arm][key]["p50_ms"] / r["dnn"][key]["p50_ms"]
                                                 for r in runs])),
                "cpu_p50_ms": float(np.median([r[arm][key]["cpu_p50_ms"] for r in runs])),
                "cpu_over_dnn": float(np.median(
                    [r[arm][key]["cpu_p50_ms"] / r["dnn"][key]["cpu_p50_ms"] for r in runs]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "serving.json"))
    args = parser.parse_args()
    examples = simulated_examples(6000)
    with tempfile.TemporaryDirectory() as folder:
        paths, sparsity = exports(examples["mixed"], folder, args.sparsity)
        loads = [os.getloadavg()[0]]
        runs = []
        for _ in range(args.repeats):
            runs.append(latencies(paths, examples, args.calls))
            loads.append(os.getloadavg()[0])
    result = summary(runs)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 1-minute load average "
          f"{', '.join(f'{x:.1f}' for x in loads)}; medians of {args.repeats} runs; pruned "
          f"share per layer: " + "; ".join(f"{k} {[round(r, 3) for r in v]}"
                                           for k, v in sparsity.items()))
    for kind in REQUESTS:
        print(f"\n{kind}: p50 / p99 ms (p50 / dnn's p50; CPU time p50 / dnn's)")
        print("| candidates | " + " | ".join(paths) + " |")
        print("|---|" + "---|" * len(paths))
        for n in CANDIDATES:
            cells = [result[k][f"{kind} {n}"] for k in paths]
            print(f"| {n:,} | " + " | ".join(
                f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f} ({c['p50_over_dnn']:.2f}; "
                f"CPU {c['cpu_over_dnn']:.2f})" for c in cells) + " |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "load_average_1min": loads, "calls": args.calls, "repeats": args.repeats,
                   "sparsity": sparsity, "latency": result}, f, indent=1)


if __name__ == "__main__":
    main()
