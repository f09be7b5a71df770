"""Throughput benchmarks of ecdctr, each a ratio against a baseline measured in the same run.

    python benchmarks/run.py [--only NAME] [--repeats N] [--rows N]
                             [--train-steps N] [--train-epochs N]

(Over 500 lines on purpose: a script, not the library; its three benchmarks share the
simulated data, the alternating timer and the report, and each stays runnable with --only.)

The machine this runs on is small (2 cores) and shared, so absolute numbers drift from run
to run. Every benchmark therefore times its arms alternately inside one run (the starting
arm rotates each repeat; parse and train run each repeat as two sweeps, A B then B A, so a
linear drift cancels), repeats that `--repeats` times (default 3), and reports the MEDIAN of
each arm and the MEDIAN of the per-repeat ratios. Each arm is reported per wall-clock second
and per CPU second (user + system of this process and of the Beam worker processes it
started): the wall figure is what a user waits for, the CPU figure is the work done and moves
less when other jobs share the cores. The 1-minute load average before and after each
benchmark is recorded too. Nothing here asserts on time. The defaults take 5-9 minutes
(more when other jobs load the machine).

Benchmarks (`--only` takes one of these names):

beam_vs_plain
    The same simulated logs (`ecdctr.data.simulator.simulate`, SimConfig(natural_rows_per_day=...,
    ad_ratio=0.1) over 4 days, ~`--rows` rows natural + ad, kept in
    benchmarks/.data/logs-<rows>/ and reused) go through
    (a) `pipelines.build.build` on the default DirectRunner,
    (b) the same with `--direct_num_workers=2 --direct_running_mode=multi_processing`,
    (c) the baseline: one Python process that reads each jsonl.gz, `json.loads` each line,
        `RowParser.parse`, `to_example` and writes GZIP TFRecords with `tf.io.TFRecordWriter`.
    The plain writer does only that; the Beam job also shards by request id, drops duplicate
    request ids, counts vocabulary tokens, numeric and per-domain stats, writes quarantine
    files and publishes each day atomically. Rows/s is rows read / seconds of the whole
    call (Beam start-up included). Ratios a/c and b/c. To separate start-up from
    throughput, (a) and (b) also build one ad day alone (~2% of the rows) once per repeat;
    `fixed_cost` in the JSON holds its wall and CPU seconds and the marginal rates (extra
    rows / extra seconds, wall and CPU).

parse
    tf.data examples/s over the TFRecords written by (a): `ecdctr.data.datasets.make_dataset` (batch
    1024, then one vectorised `tf.io.parse_example` per batch) against a per-example baseline
    (the same files through `TFRecordDataset(..., num_parallel_reads=4)`,
    `.map(tf.io.parse_single_example, AUTOTUNE)`, `.ragged_batch(1024)`). Two more arms
    locate the cost: `read_only` reads and batches the serialized records (GZIP decode +
    TFRecord framing, no parse), `parse_in_memory` runs make_dataset's batched parse on
    serialized batches already in memory (no file, no decompression), and
    `batched_sequential_read` is make_dataset's batched parse behind a plain sequential
    `TFRecordDataset(files, "GZIP")` instead of its parallel interleave of 4 files. Each
    measurement iterates whole passes until >= 1 s. Ratios batched/per_example,
    batched/read_only and batched_sequential_read/batched.

train
    Training examples/s of the A-CTR model (`build_model(spec.features, ...)`, ModelConfig
    hidden (128, 64), batch 1024, Adam, BCE, AUC metric, no multi-domain tower) against a
    plain tf_keras functional model with the same embedding tables (same sizes and dims), the
    same frozen TPM tables and the same MLP (Dense+BatchNorm+ReLU 128, 64, sigmoid output),
    fed integer ids and floats computed beforehand by the ecdctr model's own lookup layers (no
    string lookup, hashing, bucketing or domain key in the step). Every arm gets the same
    batches (the first `--train-steps` full batches of (a)'s output, cached in memory) and the
    same optimizer, and is timed by `ecdctr.training.loop.fit` over `--train-epochs` epochs after a
    warm-up epoch (tracing, cache fill). The arms:
      ecdctr: as `pipelines.steps.fit_on` trains: `make_dataset(..., preprocess=
        model.preprocess)` (the lookups in the input pipeline, cached here as the parse is, so
        they run once per row as the plain model's did), the step on ids,
        `ecdctr.training.loop.STEPS_PER_EXECUTION` steps per call of the train function;
      ecdctr_preprocess_every_epoch: the same, but preprocess mapped (parallel calls) over the
        cached parsed batches on every epoch, its CPU time counted;
      ecdctr_one_step_per_call: ecdctr with one step per call;
      ecdctr_lookups_in_step: the model on raw parsed features, one step per call (the arm
        before the input pipeline took the lookups);
      plain: the baseline, one step per call (tf_keras' default);
      plain_multi_step: the baseline with STEPS_PER_EXECUTION steps per call (for reference).
    Vocabularies come from `ecdctr.data.vocab.build_vocabularies` over the counts the build wrote,
    numeric stats from `ecdctr.data.vocab.numeric_stats`. The TPM tables are RANDOM matrices
    (normal, std 0.1, dim 16) keyed by the user_id and item_id vocabulary tokens: only their
    shape matters for speed. Ratios: every arm / plain, and ecdctr / plain_multi_step.

Results: a Markdown table per benchmark on stdout, all figures in benchmarks/results.json
(a run with --only updates only that benchmark's entry). Scratch data: benchmarks/.data/
(Beam's own log: benchmarks/.data/beam.log).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import gzip
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# ruff: noqa: I001  (keep `import ecdctr` ahead of TensorFlow, whatever the import sorter wants)
import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.data.datasets import feature_description, make_dataset, parse_batch
from ecdctr.data.rows import RowError, RowParser, to_example
from ecdctr.data.simulator import SOURCES, SimConfig, simulate
from ecdctr.seeding import set_random_seed
from ecdctr.spec.feature_spec import Spec, load_spec
from ecdctr.data.vocab import build_vocabularies, numeric_stats, read_stats
from pipelines.build import build, built_partitions

if TYPE_CHECKING:
    from ecdctr.models.ctr_model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DATA = BENCH / ".data"
RESULTS = BENCH / "results.json"
BEAM_LOG = DATA / "beam.log"  # Beam's own logging (its worker processes log to stderr)
SPEC_PATH = ROOT / "features" / "default.yaml"
START = dt.date(2024, 1, 1)
DAYS = 4
BATCH = 1024
TPM_DIM = 16
BENCHMARKS = ("beam_vs_plain", "parse", "train")
MULTI_ARGS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Say(logging.Handler):
    """Says the records of a logger (the simulator's progress) as `say` does."""

    def emit(self, record: logging.LogRecord) -> None:
        say(record.getMessage())


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Sends file descriptor 2 (ours and that of Beam's worker processes) to a log file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children (Beam workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def loadavg() -> float:
    """1-minute load average: how busy the shared machine was (2 cores: 2.0 = saturated)."""
    return round(os.getloadavg()[0], 2)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def measure(arms: dict[str, Callable[[], int]], repeats: int, label: str,
            sweeps: int = 1) -> dict[str, dict[str, list[float]]]:
    """Runs every arm once per sweep, `sweeps` sweeps per repeat (forward, then backward, then
    forward ...: A B B A cancels a linear drift), starting each repeat at another arm. arm()
    does its work and returns how many units (rows, examples) it processed. Per repeat and
    arm: units per wall-clock second and units per CPU second (user + system, Beam's worker
    processes included), each over the repeat's sweeps together."""
    runs: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in arms}
    for r in range(repeats):
        order = rotated(list(arms), r)
        totals = {name: [0, 0.0, 0.0] for name in arms}  # units, wall s, cpu s
        for sweep in range(sweeps):
            for name in order if sweep % 2 == 0 else order[::-1]:
                cpu, began = cpu_seconds(), time.perf_counter()
                units = arms[name]()
                wall, cpu = time.perf_counter() - began, cpu_seconds() - cpu
                for i, x in enumerate((units, wall, cpu)):
                    totals[name][i] += x
                say(f"{label} repeat {r + 1}/{repeats} sweep {sweep + 1}/{sweeps}: {name} "
                    f"{units / wall:,.0f}/s ({units / max(cpu, 1e-9):,.0f}/CPU-s)")
        for name, (units, wall, cpu) in totals.items():
            runs[name]["wall"].append(units / wall)
            runs[name]["cpu"].append(units / max(cpu, 1e-9))
    return runs


def summarize(runs: dict[str, dict[str, list[float]]], unit: str,
              ratios: dict[str, tuple[str, str]], extra: dict | None = None) -> dict:
    """Medians of each arm and of the per-repeat ratios num/den, per wall and per CPU second."""
    out: dict = {"unit": unit, "arms": {}, "ratios": {}}
    for name, r in runs.items():
        out["arms"][name] = {"median": round(median(r["wall"])), "runs": [round(x) for x in r["wall"]],
                             "median_per_cpu_s": round(median(r["cpu"])),
                             "runs_per_cpu_s": [round(x) for x in r["cpu"]]}
    for name, (num, den) in ratios.items():
        per = [a / b for a, b in zip(runs[num]["wall"], runs[den]["wall"], strict=True)]
        per_cpu = [a / b for a, b in zip(runs[num]["cpu"], runs[den]["cpu"], strict=True)]
        out["ratios"][name] = {"median": round(median(per), 3), "runs": [round(x, 3) for x in per],
                               "median_per_cpu_s": round(median(per_cpu), 3),
                               "runs_per_cpu_s": [round(x, 3) for x in per_cpu]}
    if extra:
        out.update(extra)
    return out


# ---------------------------------------------------------------- data

def sim_config(rows: int) -> SimConfig:
    """A world whose DAYS days of natural + ad traffic hold about `rows` rows."""
    natural = max(10, round(rows / DAYS / 1.1))
    return SimConfig(natural_rows_per_day=natural, ad_ratio=0.1)


def ensure_logs(rows: int) -> tuple[Path, int]:
    """Simulated logs of ~rows rows (made once, reused); returns (folder, exact rows)."""
    logs = DATA / f"logs-{rows}"
    marker = logs / "summary.json"
    if marker.exists():
        summary = json.loads(marker.read_text())
    else:
        shutil.rmtree(logs, ignore_errors=True)
        say(f"simulating ~{rows:,} rows over {DAYS} days into {logs}")
        summary = simulate(str(logs), START, DAYS, sim_config(rows))
        marker.write_text(json.dumps(summary))
    return logs, summary["natural"]["rows"] + summary["ad"]["rows"]


def ensure_built(spec: Spec, rows: int) -> Path:
    """The DirectRunner build of the logs (made by beam_vs_plain, or here when it did not run)."""
    logs, _ = ensure_logs(rows)
    work = DATA / f"work-{rows}-direct"
    if sum(len(built_partitions(str(work), s)) for s in SOURCES) < DAYS * len(SOURCES):
        say(f"building {logs} into {work} (untimed)")
        timed_build(spec, logs, work, ())
    return work


def built_files(work: Path) -> list[str]:
    return sorted(glob.glob(str(work / "examples" / "*" / "date=*" / "*.tfrecord.gz")))


def plain_write(spec: Spec, logs: Path, out: Path) -> int:
    """The baseline writer: one process, json.loads -> RowParser.parse -> to_example -> GZIP."""
    parser = RowParser(spec)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    rows = 0
    for path in sorted(glob.glob(str(logs / "*" / "date=*" / "*.jsonl.gz"))):
        folder = Path(path).parent
        date = dt.date.fromisoformat(folder.name[len("date="):])
        target = out / folder.parent.name / folder.name
        target.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "rb") as src, \
                tf.io.TFRecordWriter(str(target / "part-00000.tfrecord.gz"), options) as writer:
            for line in src:
                rows += 1
                try:
                    parsed = parser.parse(json.loads(line), date)
                except RowError:
                    continue
                writer.write(to_example(spec, parsed).SerializeToString())
    return rows


# ---------------------------------------------------------------- 1. beam_vs_plain

def timed_build(spec: Spec, logs: Path, work: Path, beam_args: tuple[str, ...],
                **window) -> tuple[int, float, float]:
    """(rows read, wall seconds, CPU seconds) of one build into a fresh work folder; Beam's
    logging goes to a file."""
    shutil.rmtree(work, ignore_errors=True)
    with stderr_to(BEAM_LOG):
        cpu, began = cpu_seconds(), time.perf_counter()
        results = build(spec, str(logs), str(work), beam_args=beam_args, **window)
        seconds, cpu = time.perf_counter() - began, cpu_seconds() - cpu
    return sum(s["rows_read"] for s in results), seconds, cpu


def bench_beam_vs_plain(spec: Spec, args: argparse.Namespace) -> dict:
    logs, rows = ensure_logs(args.rows)
    beam_args = {"beam_direct": (), "beam_direct_2proc": MULTI_ARGS}
    work = {"beam_direct": DATA / f"work-{args.rows}-direct",
            "beam_direct_2proc": DATA / f"work-{args.rows}-multi"}
    plain_out = DATA / f"plain-{args.rows}"

    def beam_arm(name: str) -> Callable[[], int]:
        def arm() -> int:
            read, _, _ = timed_build(spec, logs, work[name], beam_args[name])
            if read != rows:
                raise RuntimeError(f"{name}: build read {read} rows, the logs hold {rows}")
            return read
        return arm

    def plain_arm() -> int:
        shutil.rmtree(plain_out, ignore_errors=True)
        return plain_write(spec, logs, plain_out)

    arms = {"beam_direct": beam_arm("beam_direct"), "beam_direct_2proc": beam_arm("beam_direct_2proc"),
            "plain_writer": plain_arm}
    runs = measure(arms, args.repeats, "beam_vs_plain")
    # Fixed cost: the same builds over one ad day only (~2% of the rows). The marginal rate
    # (rows beyond the small build / seconds beyond it) is the throughput without start-up.
    small: dict[str, list[float]] = {name: [] for name in beam_args}
    small_cpu: dict[str, list[float]] = {name: [] for name in beam_args}
    small_rows = 0
    for r in range(args.repeats):
        for name in rotated(list(beam_args), r):
            small_rows, seconds, used = timed_build(spec, logs, DATA / f"work-{args.rows}-small",
                                                    beam_args[name], start=START, end=START,
                                                    sources=("ad",))
            small[name].append(seconds)
            small_cpu[name].append(used)
            say(f"beam_vs_plain repeat {r + 1}/{args.repeats}: {name} on {small_rows} rows "
                f"(one ad day) {seconds:.1f} s")
    fixed = {}
    for name in beam_args:
        big, little = rows / median(runs[name]["wall"]), median(small[name])
        big_cpu, little_cpu = rows / median(runs[name]["cpu"]), median(small_cpu[name])
        fixed[name] = {"small_build_rows": small_rows, "small_build_seconds": round(little, 2),
                       "small_build_cpu_seconds": round(little_cpu, 2),
                       "marginal_rows_per_s": round((rows - small_rows) / max(big - little, 1e-9)),
                       "marginal_rows_per_cpu_s": round((rows - small_rows)
                                                        / max(big_cpu - little_cpu, 1e-9))}
    return summarize(runs, "rows/s", {"beam_direct/plain": ("beam_direct", "plain_writer"),
                                      "beam_direct_2proc/plain": ("beam_direct_2proc", "plain_writer")},
                     {"rows": rows, "fixed_cost": fixed})


# ---------------------------------------------------------------- 2. parse

def per_example_dataset(spec: Spec, files: list[str]) -> tf.data.Dataset:
    desc = feature_description(spec)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=min(4, len(files)))
    ds = ds.map(lambda s: tf.io.parse_single_example(s, desc), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.ragged_batch(BATCH).prefetch(tf.data.AUTOTUNE)  # hist_categories varies in length


def read_only_dataset(files: list[str]) -> tf.data.Dataset:
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=min(4, len(files)))
    return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)


def passes(make: Callable[[], tf.data.Dataset], rows: int, min_seconds: float = 1.0) -> int:
    """Iterates whole passes of a fresh dataset until at least min_seconds; returns examples."""
    done, began = 0, time.perf_counter()
    while True:
        for _ in make():
            pass
        done += 1
        if time.perf_counter() - began >= min_seconds:
            return done * rows


def bench_parse(spec: Spec, args: argparse.Namespace) -> dict:
    files = built_files(ensure_built(spec, args.rows))
    serialized = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(BATCH).cache()
    rows = sum(int(b.shape[0]) for b in serialized)  # also fills the in-memory cache

    def parsed(ds: tf.data.Dataset) -> tf.data.Dataset:  # make_dataset's parse stage
        return ds.map(lambda b: parse_batch(spec, b),
                      num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def sequential() -> tf.data.Dataset:
        return parsed(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(BATCH))

    makers = {"batched": lambda: make_dataset(spec, files, BATCH),
              "per_example": lambda: per_example_dataset(spec, files),
              "read_only": lambda: read_only_dataset(files),
              "parse_in_memory": lambda: parsed(serialized),
              "batched_sequential_read": sequential}
    for make in makers.values():
        for _ in make().take(2):  # warm-up: graph building, file cache
            pass
    arms = {name: (lambda make=make: passes(make, rows)) for name, make in makers.items()}
    runs = measure(arms, args.repeats, "parse", sweeps=2)
    return summarize(runs, "examples/s", {"batched/per_example": ("batched", "per_example"),
                                          "batched/read_only": ("batched", "read_only"),
                                          "batched_sequential_read/batched": ("batched_sequential_read",
                                                                              "batched")},
                     {"rows": rows, "files": len(files)})


# ---------------------------------------------------------------- 3. train

def precomputed_ids(model: keras.Model, spec: Spec, features: dict, hist_len: int) -> dict:
    """What the plain model eats: the ids and floats the ecdctr model computes inside its step."""
    enc = model.encoder
    out = {}
    for f in spec.features:
        value = features[f.name]
        if f.name in enc.embeddings:
            ids = enc.ids(f.name, value)
            if f.kind == "categorical_list":
                out[f.name] = ids.to_tensor(0, shape=[None, hist_len])
                out[f.name + "_mask"] = tf.ones_like(ids, tf.float32).to_tensor(0.0, shape=[None, hist_len])
            else:
                out[f.name] = ids
        else:
            out[f.name] = enc._normalize(f, tf.cast(value, tf.float32))[:, None]
    for name in model.tpm.feature_names:
        out["tpm_" + name] = model.tpm.lookups[name](features[name])
    return out


def plain_model(spec: Spec, model: keras.Model, tpm: dict, hist_len: int, config: ModelConfig,
                initial_ctr: float) -> keras.Model:
    """A functional tf_keras model on precomputed ids: same tables, same MLP, same optimizer."""
    set_random_seed(config.seed)
    inputs, parts = {}, []
    for i, f in enumerate(spec.features):
        emb = model.encoder.embeddings.get(f.name)
        if emb is None:
            inputs[f.name] = keras.Input((1,), name=f.name, dtype=tf.float32)
            parts.append(inputs[f.name])
            continue
        table = keras.layers.Embedding(emb.input_dim, emb.output_dim, name=f"emb_{f.name}",
                                       embeddings_initializer=keras.initializers.RandomNormal(
                                           stddev=0.05, seed=i))
        if f.kind == "categorical_list":
            ids = inputs[f.name] = keras.Input((hist_len,), name=f.name, dtype=tf.int64)
            mask = inputs[f.name + "_mask"] = keras.Input((hist_len,), name=f.name + "_mask")
            summed = keras.layers.Dot(axes=1)([table(ids), mask])  # [B, dim]: sum of masked rows
            count = keras.layers.Lambda(lambda m: tf.maximum(tf.reduce_sum(m, 1, keepdims=True), 1.0))(mask)
            parts.append(summed / count)
        else:
            inputs[f.name] = keras.Input((), name=f.name, dtype=tf.int64)
            parts.append(table(inputs[f.name]))
    for name in sorted(tpm):
        keys, matrix = tpm[name]
        padded = np.vstack([np.zeros((1, matrix.shape[1]), np.float32), matrix])
        frozen = keras.layers.Embedding(padded.shape[0], padded.shape[1], trainable=False,
                                        embeddings_initializer=keras.initializers.Constant(padded),
                                        name=f"tpm_{name}")
        inputs["tpm_" + name] = keras.Input((), name=f"tpm_ids_{name}", dtype=tf.int64)
        parts.append(frozen(inputs["tpm_" + name]))
    x = keras.layers.Concatenate()(parts)
    for i, units in enumerate(config.hidden):
        x = keras.layers.Dense(units, name=f"dense_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.ReLU()(x)
    bias = float(np.log(initial_ctr / (1 - initial_ctr)))
    out = keras.layers.Dense(1, activation="sigmoid", name="logit",
                             bias_initializer=keras.initializers.Constant(bias))(x)
    plain = keras.Model(inputs, out, name="plain")
    plain.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.BinaryCrossentropy(), metrics=[keras.metrics.AUC(name="auc")])
    return plain


def bench_train(spec: Spec, args: argparse.Namespace) -> dict:
    """The train step against a plain tf_keras model. One function on purpose (71 lines): its
    six arms share the batches, vocabularies and models it builds, and timing them in one
    place keeps the arms' turns visible."""
    from ecdctr.models.ctr_model import ModelConfig, build_model  # here: other benchmarks need no model
    from ecdctr.training.loop import STEPS_PER_EXECUTION, fit

    work = ensure_built(spec, args.rows)
    files = built_files(work)
    parts = [(s, d) for s in SOURCES for d in built_partitions(str(work), s)]
    vocabs = build_vocabularies(spec, str(work), parts)
    stats = numeric_stats(spec, str(work), parts)
    days = [read_stats(str(work), s, d) for s, d in parts]
    ctr = sum(s["clicks"] for s in days) / sum(s["rows_written"] for s in days)
    rng = np.random.default_rng(0)
    tpm = {f.name: (vocabs[f.name], rng.normal(0.0, 0.1, (len(vocabs[f.name]), TPM_DIM)).astype(np.float32))
           for f in spec.features if f.entity}
    config = ModelConfig(hidden=(128, 64), batch_size=BATCH)

    # the same batches for every arm, parsed once and kept in memory; full batches only
    parsed = make_dataset(spec, files, BATCH).take(args.train_steps).cache()
    batches = [b for b in parsed if int(b[1].shape[0]) == BATCH]
    steps = len(batches)
    sized = tf.data.experimental.assert_cardinality(steps)  # as fit_on's datasets (rows known)
    parsed = parsed.take(steps).apply(sized)
    hist = next(f for f in spec.features if f.kind == "categorical_list")
    hist_len = max(int(tf.reduce_max(b[0][hist.name].row_lengths())) for b in batches)

    def ecdctr_model() -> keras.Model:
        return build_model(spec.features, vocabs, stats, config, batches[0][0], tpm_tables=tpm,
                           initial_ctr=ctr, name="actr")

    model, one_step = ecdctr_model(), ecdctr_model()  # STEPS_PER_EXECUTION / 1 step per call
    # fit_on's input: make_dataset maps CtrModel.preprocess over each parsed batch; cached here
    # as the parse is, so this arm's lookups run once per row, like the plain model's
    preprocessed = make_dataset(spec, files, BATCH, preprocess=model.preprocess
                                ).take(args.train_steps).cache()
    for _ in preprocessed:  # fills the cache: a fit of known length stops short of the end
        pass
    preprocessed = preprocessed.take(steps).apply(sized)
    every_epoch = parsed.map(lambda x, y: (model.preprocess(x), y),
                             num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE).apply(sized)
    id_batches = [(precomputed_ids(model, spec, x, hist_len), y) for x, y in batches]
    ids = tf.data.Dataset.from_generator(
        lambda: iter(id_batches),
        output_signature=tf.nest.map_structure(tf.TensorSpec.from_tensor, id_batches[0])).cache()
    plain = plain_model(spec, model, tpm, hist_len, config, ctr)
    plain_multi = plain_model(spec, model, tpm, hist_len, config, ctr)
    say(f"train: {steps} batches of {BATCH}; ecdctr {model.count_params():,} params, "
        f"plain {plain.count_params():,} params")
    runs_of = {  # arm -> (model, dataset, steps per call)
        "ecdctr": (model, preprocessed, STEPS_PER_EXECUTION),
        "ecdctr_preprocess_every_epoch": (model, every_epoch, STEPS_PER_EXECUTION),
        "ecdctr_one_step_per_call": (one_step, preprocessed, 1),
        "ecdctr_lookups_in_step": (one_step, parsed, 1),
        "plain": (plain, ids, 1),
        "plain_multi_step": (plain_multi, ids.apply(sized), STEPS_PER_EXECUTION)}
    for m, ds, per_call in runs_of.values():  # warm-up epoch: tracing and cache fill
        fit(m, ds, 1, BATCH, m.name, steps_per_execution=per_call)
    epochs = args.train_epochs

    def arm(m: keras.Model, ds: tf.data.Dataset, per_call: int) -> Callable[[], int]:
        return lambda: fit(m, ds, epochs, BATCH, m.name,
                           steps_per_execution=per_call)["steps"] * BATCH

    arms = {name: arm(*run) for name, run in runs_of.items()}
    runs = measure(arms, args.repeats, "train", sweeps=2)
    ratios = {f"{name}/plain": (name, "plain") for name in runs_of if name != "plain"}
    ratios["ecdctr/plain_multi_step"] = ("ecdctr", "plain_multi_step")
    return summarize(runs, "examples/s", ratios,
                     {"steps": steps, "epochs_per_measurement": epochs, "batch_size": BATCH,
                      "steps_per_execution": STEPS_PER_EXECUTION,
                      "params": {"ecdctr": model.count_params(), "plain": plain.count_params()},
                      "vocab_sizes": {k: len(v) for k, v in vocabs.items()}})


# ---------------------------------------------------------------- report

def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import apache_beam

    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "tensorflow": tf.__version__, "tf_keras": keras.__version__,
            "apache_beam": apache_beam.__version__}


def table(name: str, result: dict) -> str:
    unit = result["unit"]
    lines = [f"### {name}", "", f"| arm | median {unit} (wall) | runs | median per CPU-second | runs |",
             "|---|---:|---|---:|---|"]
    for arm, r in result["arms"].items():
        lines.append(f"| {arm} | {r['median']:,} | {', '.join(f'{x:,}' for x in r['runs'])} "
                     f"| {r['median_per_cpu_s']:,} | {', '.join(f'{x:,}' for x in r['runs_per_cpu_s'])} |")
    for ratio, r in result["ratios"].items():
        lines.append(f"| **{ratio}** | **{r['median']:.3f}** | {', '.join(f'{x:.3f}' for x in r['runs'])} "
                     f"| **{r['median_per_cpu_s']:.3f}** "
                     f"| {', '.join(f'{x:.3f}' for x in r['runs_per_cpu_s'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=BENCHMARKS, help="run one benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per arm (default 3)")
    parser.add_argument("--rows", type=int, default=200_000, help="simulated log rows (default 200000)")
    parser.add_argument("--train-steps", type=int, default=150,
                        help="batches cached for the train benchmark (default 150)")
    parser.add_argument("--train-epochs", type=int, default=2,
                        help="epochs over those batches per timed measurement (default 2)")
    args = parser.parse_args(argv)
    if min(args.repeats, args.train_steps, args.train_epochs) < 1 or args.rows < 1000:
        parser.error("--repeats, --train-steps and --train-epochs must be >= 1, --rows >= 1000")
    logging.getLogger().setLevel(logging.ERROR)
    tf.get_logger().setLevel(logging.ERROR)
    simulator = logging.getLogger(simulate.__module__)  # its progress, said; nothing else is
    simulator.addHandler(Say())
    simulator.setLevel(logging.INFO)
    simulator.propagate = False
    DATA.mkdir(parents=True, exist_ok=True)
    BEAM_LOG.write_bytes(b"")
    spec = load_spec(str(SPEC_PATH))
    runners = {"beam_vs_plain": bench_beam_vs_plain, "parse": bench_parse, "train": bench_train}
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("benchmarks", {})
    results["machine"] = machine()
    began = time.perf_counter()
    for name in [args.only] if args.only else BENCHMARKS:
        t0, load = time.perf_counter(), loadavg()
        result = runners[name](spec, args)
        result.update(repeats=args.repeats, seconds=round(time.perf_counter() - t0, 1),
                      loadavg_before=load, loadavg_after=loadavg(),
                      date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        results["benchmarks"][name] = result
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        say(f"{name} done in {result['seconds']} s")
    say(f"all done in {time.perf_counter() - began:.0f} s; results in {RESULTS}")
    m = results["machine"]
    print(f"nproc {m['nproc']}, {m['cpu']}, TF {m['tensorflow']}, Beam {m['apache_beam']}\n")
    for name in [args.only] if args.only else BENCHMARKS:
        print(table(name, results["benchmarks"][name]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
