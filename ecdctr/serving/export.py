"""SavedModel export for TF Serving: signatures, warmup requests and versioned publishing
that TF Serving never sees half of, on a local disk or an object store.

`serving_default` takes serialized tf.train.Example strings (the predict API); `predict_raw`
takes one named tensor per raw column. A version is written to a staging folder beside the
versions (`.staging-*`, a name TF Serving ignores: it only loads integer folders), gated, then
published (`publish`):
- on a local disk or HDFS, by one atomic rename to its integer name;
- on an object store (s3://, gs://), where a rename is a copy and a folder appears with its
  first file, by copying every file but `saved_model.pb`, then `saved_model.pb` (TF Serving's
  loader refuses a folder without it, so the folder is whole once it can load), then the
  marker `assets.extra/published.json`. Only versions with the marker count as published
  (`versions`): the gate compares against them and the next run deletes an integer folder
  without it (a publish killed mid-copy) before choosing the next version number.
Staging and publishing go through ecdctr/io/commit.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence

import tensorflow as tf
import tf_keras as keras
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from ecdctr.data.datasets import feature_description, features_by_name, serving_features
from ecdctr.data.rows import features_example
from ecdctr.io import commit, storage
from ecdctr.io.jsonio import DamagedFile, read_json_object, write_json
from ecdctr.models.ctr_model import CtrModel, serving_form
from ecdctr.models.tower import Tower
from ecdctr.serving.vocab_assets import vocabulary_assets
from ecdctr.spec.feature_spec import Spec

logger = logging.getLogger(__name__)

OUTPUT_KEY = "click_probability"
INPUT_KEY = "examples"
RAW_SIGNATURE = "predict_raw"
SPEC_FILE = "spec.yaml"  # in assets.extra/: lets clients build Examples without the repo
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving looks for in assets.extra/
WARMUP_BATCH_SIZES = (1, 8, 64, 256)
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
WARMUP_ROWS = 256  # distinct synthetic rows; the warmup batches cycle over them
WARMUP_SEED = 0  # the synthetic rows are seeded: the same model exports the same warmup file
MAX_SAFE_VOCAB = 100  # a vocabulary with more tokens is taken for an id (see safe_vocab_tokens)
REJECTED = "rejected"  # <base>/rejected/<name>/: gated-out models, kept with their reason
PUBLISHED_MARKER = "published.json"  # in assets.extra/, written last: the version is whole
EXPORT_MARKER = "actr.json"  # in assets.extra/: the checkpoint an export came from, its gate
ROLLBACK_MARKER = "rollback.json"  # in assets.extra/ of a version that re-serves an older one
HOLD_FILE = "rollback.json"  # in the base: a rollback is in force, new candidates wait
SAVED_MODEL = "saved_model.pb"
TIMING_ROWS = 256  # held-out rows that time the pruned inference path


def serving_function(model: keras.Model, spec: Spec) -> tf.types.experimental.ConcreteFunction:
    """The predict signature: serialized Examples [B] -> {click_probability: [B]}; missing
    features take the spec's defaults, unseen ids go to the OOV row."""
    description = feature_description(spec, with_label=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    def serve(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, description)
        probs = model(serving_features(spec, parsed), training=False)
        return {OUTPUT_KEY: tf.reshape(probs, [-1])}

    return serve.get_concrete_function()


def raw_input_specs(spec: Spec) -> dict[str, tf.TensorSpec]:
    """One input per raw column: ids as strings [B], numbers as float32 [B], id lists as
    strings [B, L] padded with empty strings."""
    specs: dict[str, tf.TensorSpec] = {}
    for f in spec.features:
        if f.column in specs:
            continue
        if f.kind == "numeric":
            specs[f.column] = tf.TensorSpec([None], tf.float32, name=f.column)
        elif f.kind == "categorical":
            specs[f.column] = tf.TensorSpec([None], tf.string, name=f.column)
        else:
            specs[f.column] = tf.TensorSpec([None, None], tf.string, name=f.column)
    return specs


def raw_function(model: keras.Model, spec: Spec) -> tf.types.experimental.ConcreteFunction:
    """The raw-feature signature: named column tensors -> {click_probability: [B]}."""
    specs = raw_input_specs(spec)
    lists = {f.column for f in spec.features if f.kind == "categorical_list"}

    @tf.function(input_signature=[specs])
    def serve_raw(columns: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        parsed = {c: tf.RaggedTensor.from_tensor(v, padding="", row_splits_dtype=tf.int64)
                  if c in lists else v for c, v in columns.items()}
        probs = model(serving_features(spec, parsed), training=False)
        return {OUTPUT_KEY: tf.reshape(probs, [-1])}

    return serve_raw.get_concrete_function()


def safe_vocab_tokens(spec: Spec, vocabs: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The one privacy rule of the warmup file: per raw column, the vocabulary tokens a
    synthetic warmup row may carry (an empty list: synthetic out-of-vocabulary tokens only).

    A column is identifying, and gets no real token, when any feature reading it is an entity
    (`entity: user|item`), a TPM id (`tpm: true`), the GAUC `group_by` feature, or has a
    vocabulary of more than MAX_SAFE_VOCAB tokens (likely an id); the request id column is
    never a feature (the spec forbids it) and never appears. Other columns (gender, age level,
    scenario, position...) are low-cardinality and not personal: their tokens are used, less
    any token that is also in an identifying column's vocabulary. Hashed features have no
    vocabulary and get synthetic tokens."""
    group = {f.column for f in spec.features if f.name == spec.group_by}
    identifying = {f.column for f in spec.features
                   if f.entity or f.tpm or f.column in group or f.column == spec.request_id
                   or len(vocabs.get(f.name, ())) > MAX_SAFE_VOCAB}
    ids = {t for f in spec.features if f.column in identifying for t in vocabs.get(f.name, ())}
    out: dict[str, list[str]] = {}
    for f in spec.features:
        if f.kind == "numeric":
            continue
        tokens = out.setdefault(f.column, [])
        if f.column not in identifying:
            tokens.extend(t for t in vocabs.get(f.name, ()) if t not in ids and t not in tokens)
    return out


def warmup_examples(model: keras.Model, spec: Spec, rows: int = WARMUP_ROWS,
                    seed: int = WARMUP_SEED) -> list[bytes]:
    """Synthetic serialized Examples for TF Serving's warmup, built from the spec and the
    model's own vocabularies and statistics, never from logs: no user or request id of the
    data is written into the export.

    Every feature column has a value in every row. Categorical columns alternate between a
    token of safe_vocab_tokens and a synthetic one ("warmup-oov-<row>"); identifying columns
    (user and item ids...) only ever get synthetic tokens. That leaves known ids unlooked-up,
    which warmup does not need: it is there to trigger lazy initialization and tracing for each
    batch shape, and any string, known or not, goes through the same StringLookup / Hashing
    op. Every 4th row has a known domain when the model has one made of safe tokens. Lists
    have 0 to 3 tokens (ragged shapes, the empty list included). Numbers cycle
    through every bucket of a bucketized column, else are drawn in mean ± std of the training
    statistics, else around the spec default. Seeded: reproducible exports."""
    encoder = getattr(model, "encoder", None)
    vocabs: Mapping[str, Sequence[str]] = getattr(encoder, "vocabs", {})
    stats: Mapping[str, tuple[float, float]] = getattr(encoder, "numeric_stats", {})
    tokens = safe_vocab_tokens(spec, vocabs)
    kinds: dict[str, str] = {}
    for f in spec.features:
        kinds.setdefault(f.column, f.kind)  # the first feature's kind, as feature_description
    # known domains (the domain features' tokens joined by "|") made of safe tokens only:
    # every 4th row is one of them, so the multi-domain towers also see a known domain index
    domain_columns = [f.column for f in spec.domain_features]
    combos = [parts for parts in (d.split("|") for d in getattr(model, "domains", ()))
              if len(parts) == len(domain_columns)
              and all(t in tokens.get(c, ()) for c, t in zip(domain_columns, parts, strict=True))]
    rng = random.Random(seed)
    out = []
    for r in range(rows):
        values: dict = {}
        if combos and r % 4 == 0:
            values.update(zip(domain_columns, combos[(r // 4) % len(combos)], strict=True))
        for c, (column, kind) in enumerate(kinds.items()):
            if kind == "numeric":
                values[column] = _warmup_number(spec, column, stats, r + c, rng)
                continue
            pool = tokens.get(column, [])
            if kind == "categorical":
                values.setdefault(column, _warmup_token(pool, r + c, f"warmup-oov-{r}"))
            else:
                values[column] = [_warmup_token(pool, r + c + j, f"warmup-oov-{r}-{j}")
                                  for j in range((r + c) % 4)]
        out.append(features_example(values).SerializeToString())
    return out


def _warmup_token(pool: Sequence[str], i: int, oov: str) -> str:
    """Every other i a safe vocabulary token (cycling through the pool), else the OOV token."""
    return pool[(i // 2) % len(pool)] if pool and i % 2 == 0 else oov


def _warmup_number(spec: Spec, column: str, stats: Mapping[str, tuple[float, float]], i: int,
                   rng: random.Random) -> float:
    features = [f for f in spec.features if f.column == column]
    bounds = next((list(f.boundaries) for f in features if f.boundaries), None)
    if bounds:  # bucket i % (len + 1), from below the first boundary to above the last
        lows = [bounds[0] - max(1.0, abs(bounds[0])), *bounds]
        highs = [*bounds, bounds[-1] + max(1.0, abs(bounds[-1]))]
        k = i % len(lows)
        return rng.uniform(lows[k], highs[k])
    if column in stats:
        mean, std = stats[column]
        return rng.uniform(mean - std, mean + std)
    return rng.uniform(features[0].default - 1.0, features[0].default + 1.0)


def warmup_records(examples: Sequence[bytes], model_name: str) -> list[bytes]:
    """PredictionLog records (TF Serving's warmup format) replaying batches of the given
    examples (warmup_examples: synthetic rows) through serving_default, batch sizes cycling
    over WARMUP_BATCH_SIZES."""
    records: list[bytes] = []
    start = 0
    while examples and len(records) < min(MAX_WARMUP_RECORDS, 4 * len(WARMUP_BATCH_SIZES)):
        size = WARMUP_BATCH_SIZES[len(records) % len(WARMUP_BATCH_SIZES)]
        batch = [examples[(start + i) % len(examples)] for i in range(min(size, len(examples)))]
        start += len(batch)
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
        request.inputs[INPUT_KEY].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def read_warmup(path: str) -> list[prediction_log_pb2.PredictionLog]:
    """The PredictionLog records of a warmup file."""
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]


def choose_pruned_path(model: keras.Model, spec: Spec, examples: Sequence[bytes],
                       repeats: int = 7) -> dict | None:
    """For a tower with a tf.sparse inference path (AdaSparse): times the dense and the sparse
    path on these examples (median of `repeats`) and keeps the faster one for the export."""
    tower = getattr(model, "mlp", None)
    if not (isinstance(tower, Tower) and tower.has_sparse_path) or not examples:
        return None
    parsed = tf.io.parse_example(tf.constant(list(examples)), feature_description(spec, False))
    features = features_by_name(spec, parsed)
    medians = {}
    for sparse in (False, True):
        tower.sparse_inference = sparse
        call = tf.function(lambda x: model(x, training=False))
        call(features)  # trace once
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call(features).numpy()
            times.append(time.perf_counter() - started)
        medians["sparse" if sparse else "dense"] = sorted(times)[len(times) // 2] * 1000
    tower.sparse_inference = medians["sparse"] < medians["dense"]
    chosen = "sparse" if tower.sparse_inference else "dense"
    return {"dense_ms": round(medians["dense"], 3), "sparse_ms": round(medians["sparse"], 3),
            "rows": len(examples), "chosen": chosen}


def _integer_folders(base: str) -> list[int]:
    return sorted(int(name) for name in storage.listdir(base) if name.isdigit())


def _whole(folder: str) -> bool:
    if storage.exists(storage.join(folder, "assets.extra", PUBLISHED_MARKER)):
        return True
    # renamed into place whole (a version published before the marker existed, or by hand)
    return storage.renames_atomically(folder) and storage.exists(storage.join(folder, SAVED_MODEL))


def versions(base: str) -> list[int]:
    """Published integer versions under base, ascending: those with the publish marker (and,
    where publishing renames, any with saved_model.pb)."""
    return [v for v in _integer_folders(base) if _whole(storage.join(base, str(v)))]


def unfinished_versions(base: str) -> list[str]:
    """Integer folders under base that are not whole versions: publishes killed mid-copy."""
    if storage.renames_atomically(base):
        return []  # a rename publishes whole: an integer folder there is someone else's
    return [storage.join(base, str(v)) for v in _integer_folders(base)
            if not _whole(storage.join(base, str(v)))]


def stage_saved_model(model: keras.Model, spec: Spec, base: str,
                      timing_examples: Sequence[bytes] = (), model_name: str = "actr") -> str:
    """Writes the SavedModel (both signatures, its vocabularies as files in assets/, the spec
    and synthetic warmup requests in assets.extra/) into a staging folder under base that TF
    Serving ignores; returns its path.
    A CtrModel is saved in its serving form (models.ctr_model.serving_form: merged TPM table,
    its tower folded for inference).
    timing_examples (real held-out rows) only time the pruned inference path in memory
    (choose_pruned_path; the synthetic rows when there are none): nothing of them is written."""
    storage.makedirs(base)
    staging = commit.staging_folder(base, storage.FILES)
    storage.rmtree(staging)
    started = time.perf_counter()
    warmup = warmup_examples(model, spec)
    with serving_form(model) if isinstance(model, CtrModel) else contextlib.nullcontext():
        path_choice = choose_pruned_path(model, spec, list(timing_examples[:TIMING_ROWS]) or warmup)
        if path_choice:
            logger.info(f"pruned MLP inference: dense {path_choice['dense_ms']} ms vs tf.sparse "
                        f"{path_choice['sparse_ms']} ms on {path_choice['rows']} rows -> "
                        f"{path_choice['chosen']}")
        with vocabulary_assets(model):
            tf.saved_model.save(model, staging, signatures={
                "serving_default": serving_function(model, spec),
                RAW_SIGNATURE: raw_function(model, spec)})
    extra = storage.join(staging, "assets.extra")
    storage.makedirs(extra)
    storage.copy(spec.path, storage.join(extra, SPEC_FILE))
    records = warmup_records(warmup, model_name)
    with tf.io.TFRecordWriter(storage.join(extra, WARMUP_FILE)) as writer:
        for record in records:
            writer.write(record)
    logger.info(f"staged SavedModel in {staging} ({len(records)} warmup requests) "
                f"in {time.perf_counter() - started:.1f}s")
    return staging


def publish(staging: str, base: str, keep: int = 5) -> str:
    """Publishes a staged SavedModel as base/<next integer version> so that TF Serving never
    loads half of it (see the module's docstring for the protocol on each kind of storage)
    and removes all but the newest `keep` versions."""
    version = max([*_integer_folders(base), 0]) + 1
    final = storage.join(base, str(version))
    marker = storage.join("assets.extra", PUBLISHED_MARKER)
    body = json.dumps({"version": version, "published_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "files": len(storage.files_under(staging)) + 1})
    commit.publish_folder(storage.FILES, staging, final, (SAVED_MODEL,), marker,
                          body.encode("utf-8"))
    for old in versions(base)[:-keep]:
        remove_version(storage.join(base, str(old)))
        logger.info(f"removed old version {old}")
    logger.info(f"published version {version} at {final}")
    return final


def remove_version(folder: str) -> None:
    """Deletes a version folder, the marker and saved_model.pb first: a reader never finds a
    loadable version with files missing, even on an object store that deletes file by file."""
    storage.remove(storage.join(folder, "assets.extra", PUBLISHED_MARKER))
    storage.remove(storage.join(folder, SAVED_MODEL))
    storage.rmtree(folder)


def reject(staging: str, base: str, reasons: list[str]) -> str:
    """Moves a gated-out SavedModel to base/rejected/<staging name> with reason.json."""
    folder = storage.join(base, REJECTED, storage.basename(staging).lstrip("."))
    storage.makedirs(storage.dirname(folder))
    storage.rename(staging, folder)
    write_json(storage.join(folder, "reason.json"), {"reasons": reasons})
    logger.info(f"REJECTED, not published: {'; '.join(reasons)} (kept in {folder})")
    return folder


def export_saved_model(model: keras.Model, spec: Spec, base: str,
                       timing_examples: Sequence[bytes] = ()) -> str:
    """Stages and publishes without a gate (tests, tools); the daily job gates in between."""
    return publish(stage_saved_model(model, spec, base, timing_examples), base)


def describe_versions(base: str) -> list[dict]:
    """The published versions under base, oldest first: day, checkpoint, metrics, gate result,
    when published, and which older version a rollback version re-serves."""
    rows = []
    for v in versions(base):
        extra = storage.join(base, str(v), "assets.extra")
        marker = _read_optional(storage.join(extra, EXPORT_MARKER))
        gate = marker.get("gate") or {}
        rows.append({
            "version": v, "date": marker.get("date"), "checkpoint": marker.get("checkpoint"),
            "auc": gate.get("candidate_auc"), "gate": "passed" if gate.get("passed") else
            ("rejected" if gate else None), "serving_auc": (gate.get("serving") or {}).get("auc"),
            "published_at": _read_optional(storage.join(extra, PUBLISHED_MARKER)).get("published_at"),
            "rollback_of": _read_optional(storage.join(extra, ROLLBACK_MARKER)).get("to")})
    return rows


def _read_optional(path: str) -> dict:
    try:
        return json.loads(storage.read_text(path))
    except (FileNotFoundError, ValueError):
        return {}


def rollback(base: str, to: int, keep: int = 5) -> dict:
    """Makes version `to` the served one. TF Serving serves the highest version, so `to` is
    published again as the next version (a copy, with assets.extra/rollback.json), and a hold
    file in the base stops the daily job from publishing new candidates over it until
    `release`: they are gated and kept in rejected/ with the reason."""
    if to not in versions(base):
        raise ValueError(f"{base}: no published version {to} (published: {versions(base)}). "
                         f"Fix: pick one that `ecdctr versions` lists.")
    source = storage.join(base, str(to))
    staging = commit.staging_folder(base, storage.FILES, label="rollback-")
    storage.rmtree(staging)
    skip = {storage.join("assets.extra", PUBLISHED_MARKER)}
    for relative in storage.files_under(source):
        if relative not in skip:
            storage.copy(storage.join(source, relative), storage.join(staging, relative))
    at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    storage.write_text(storage.join(staging, "assets.extra", ROLLBACK_MARKER),
                       json.dumps({"to": to, "at": at}))
    final = publish(staging, base, max(keep, 2))
    hold = {"to": to, "version": int(storage.basename(final)), "at": at}
    storage.write_text(storage.join(base, HOLD_FILE), json.dumps(hold))
    logger.info(f"rolled back: version {hold['version']} serves the model of version {to}; the daily job "
                f"publishes nothing new until `ecdctr rollback --release`")
    return hold


def held(base: str) -> dict | None:
    """The rollback in force under base, if any (see rollback). DamagedFile, naming the hold
    file, when it is there but empty, truncated, not JSON or not {to, version, at}: a hold
    that cannot be read is safety state, so its callers keep new versions out (fail closed)."""
    path = storage.join(base, HOLD_FILE)
    if not storage.exists(path):
        return None
    hold = read_json_object(path)
    if not (all(isinstance(hold.get(k), int) and not isinstance(hold.get(k), bool)
                for k in ("to", "version")) and isinstance(hold.get("at"), str)):
        raise DamagedFile(f"{path}: damaged (not a rollback hold: "
                          f"{{\"to\": version, \"version\": version, \"at\": time}} expected)")
    return hold


def release(base: str) -> dict | None:
    """Ends a rollback hold, a damaged one too ({"damaged": what is wrong}): the next daily
    run publishes through the gate again."""
    try:
        hold = held(base)
    except DamagedFile as e:
        hold = {"damaged": str(e)}
    storage.remove(storage.join(base, HOLD_FILE))
    return hold
