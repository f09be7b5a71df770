"""Self-describing model folders: a checkpoint holds all it takes to rebuild its Keras model.

A folder (TPM snapshot, CPM, A-CTR, or a compare variant) holds:
    weights/ckpt*        the model's variables (frozen TPM tables included)
    vocab/<feature>.txt  the vocabularies its lookups were built with
    spec.yaml            the feature spec it was trained with
    tpm/<k>/<feature>.keys.json  the ids of each TPM snapshot it reads (their vectors are in
                         the weights; meta.json records each snapshot's content hash)
    meta.json            written last: kind, structure, numeric stats, domains, training
                         window, rows, parent, training summary (chosen epoch), metrics, and
                         `files`: the size and crc32c of every other file (ecdctr.io.digest),
                         checked before the folder is trusted (folder_damage)
`load_checkpoint` rebuilds the model from these alone: no TFRecords, stats or TPM folders are
read. Writes go to `<folder>.tmp`, renamed into place when whole; on an object store (no
atomic rename) straight into the folder, its meta.json removed first and written last, so a
reader (and the daily job) never takes a half-written folder for a checkpoint
(ecdctr.io.commit.writing_folder). Folders may be
local paths or URIs (ecdctr.io.storage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ecdctr.config import MODEL_KEYS
from ecdctr.data.datasets import example_batch
from ecdctr.data.vocab import read_vocabularies, write_vocabularies
from ecdctr.io import commit, storage
from ecdctr.io.digest import content_problem, is_record, record_of, size_problem, stream_record
from ecdctr.io.jsonio import DamagedFile, json_object, read_json_object, write_json
from ecdctr.layers.aggregator import TpmAggregator
from ecdctr.models.adasparse import AdaSparseConfig
from ecdctr.models.ctr_model import CtrModel, ModelConfig, TpmSnapshot, build_model
from ecdctr.spec.feature_spec import Spec, feature_fingerprints, load_spec

META = "meta.json"
FILES = "files"  # meta.json's records of the folder's other files


@dataclass(frozen=True)
class Snapshot:
    """One TPM snapshot as a model reads it: its name, content hash and tables."""

    name: str
    tables: TpmSnapshot
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", tables_hash(self.tables))


@dataclass
class Checkpoint:
    """A model rebuilt from its folder, with its meta and spec."""

    folder: str
    model: CtrModel
    meta: dict
    spec: Spec
    vocabs: dict[str, list[str]]

    @property
    def snapshots(self) -> list[Snapshot]:
        """The TPM snapshots the model reads, recovered from its own frozen tables."""
        return model_snapshots(self.model, [s["name"] for s in self.meta.get("tpm_snapshots", [])])


def tables_hash(tables: TpmSnapshot) -> str:
    """Content hash of one snapshot's tables (ids and vectors, in id order)."""
    digest = hashlib.sha256()
    for feature in sorted(tables):
        keys, matrix = tables[feature]
        order = np.argsort(np.asarray(keys, dtype=object).astype(str), kind="stable")
        digest.update(feature.encode())
        digest.update(json.dumps([keys[i] for i in order]).encode())
        digest.update(np.ascontiguousarray(np.asarray(matrix, np.float32)[order]).tobytes())
    return digest.hexdigest()


def model_snapshots(model: CtrModel, names: Sequence[str]) -> list[Snapshot]:
    """The snapshots (oldest first) inside a model's TPM aggregator, as (ids, vectors) tables."""
    aggregator = model.tpm
    if not isinstance(aggregator, TpmAggregator):
        return []
    snapshots = []
    for k in range(aggregator.snapshot_count):
        tables = {}
        for feature in aggregator.feature_names:
            present = aggregator.present[feature].numpy()[:, k]
            rows = np.flatnonzero(present)
            keys = [aggregator.keys[feature][r - 1] for r in rows]
            tables[feature] = (keys, aggregator.snapshot_tables[feature][k].numpy()[rows])
        snapshots.append(Snapshot(names[k] if k < len(names) else f"snapshot-{k}", tables))
    return snapshots


def structure(config: ModelConfig) -> dict:
    """The model structure a checkpoint was built with (JSON), so it can be rebuilt."""
    body = {k: getattr(config, k) for k in MODEL_KEYS}
    body["hidden"] = list(config.hidden)
    body["adasparse"] = dataclasses.asdict(config.adasparse)
    return body


def with_structure(config: ModelConfig, body: Mapping) -> ModelConfig:
    """config with the structure of a checkpoint's meta["model"]."""
    body = {**body, "hidden": tuple(body["hidden"]),
            "adasparse": AdaSparseConfig(**body["adasparse"])}
    return dataclasses.replace(config, **body)


def save_checkpoint(folder: str, model: CtrModel, spec: Spec, vocabs: Mapping[str, Sequence[str]],
                    meta: dict, snapshots: Sequence[Snapshot] = (),
                    extra: Mapping[str, object] | None = None) -> None:
    """Writes the model folder (see the module docstring) to folder.tmp, then swaps it in.
    meta must hold kind, features ("all" or "tpm"), numeric_stats and domains; the structure,
    the snapshots' names and hashes and the spec fingerprints are added here. `extra`: more
    files, {relative path: callable(path)} writers (a TPM snapshot's exported tables)."""
    with commit.writing_folder(storage.FILES, folder, last=META) as tmp:
        write_vocabularies(dict(vocabs), storage.join(tmp, "vocab"))
        model.save_weights(storage.join(tmp, "weights", "ckpt"))
        storage.copy(spec.path, storage.join(tmp, "spec.yaml"))
        described = []
        for k, snapshot in enumerate(snapshots):
            for feature, (keys, _) in snapshot.tables.items():
                storage.write_text(storage.join(tmp, "tpm", str(k), f"{feature}.keys.json"),
                                   json.dumps(list(keys)))
            described.append({"name": snapshot.name, "sha256": snapshot.sha256,
                              "features": {n: {"rows": len(t[0]), "dim": int(np.shape(t[1])[1])}
                                           for n, t in snapshot.tables.items()}})
        for relative, writer in (extra or {}).items():
            writer(storage.join(tmp, relative))
        meta = {**meta, "model": structure(model.config), "model_name": model.name,
                "tpm_snapshots": described, "spec_fingerprint": spec.fingerprint,
                "feature_fingerprints": feature_fingerprints(spec), FILES: file_records(tmp)}
        write_json(storage.join(tmp, META), meta)


def file_records(folder: str) -> dict[str, dict]:
    """{relative path: size and crc32c} of every file under folder but meta.json."""
    records = {}
    for relative in storage.files_under(folder):
        if relative != META and not commit.is_temp_file(relative, of=META):
            with storage.open(storage.join(folder, relative), "rb") as f:
                records[relative] = stream_record(f)
    return records


def folder_damage(folder: str, meta: dict, content: bool = False) -> str | None:
    """What is wrong with a model folder whose meta.json says `meta` (None: every file it
    records is there with its size, and with content=True its crc32c; or the folder predates
    file records): the first file missing, of another size or of other bytes."""
    records = meta.get(FILES)
    if records is None:
        return None
    if not isinstance(records, dict) or not all(is_record(r) for r in records.values()):
        return f"{storage.join(folder, META)}: damaged ({FILES} is not {{file: {{size, crc32c}}}})"
    for relative, record in sorted(records.items()):
        path = storage.join(folder, relative)
        if not storage.exists(path):
            return f"{path}: missing ({record['size']:,} bytes written)"
        with storage.open(path, "rb") as f:
            problem = (content_problem(path, record, stream_record(f)) if content
                       else size_problem(path, record, f.size()))
        if problem:
            return problem
    return None


RETRAIN_FIX = ("Fix: none needed: `ecdctr daily` takes it as missing, uses the previous one "
               "and retrains it when due (delete it to free the disk)")


def is_checkpoint(folder: str) -> bool:
    """True when folder holds a whole checkpoint (its meta.json, written last)."""
    return storage.exists(storage.join(folder, META))


def is_current(meta: dict) -> bool:
    """False for a model folder written before folders described themselves (no kind or
    model_name, TPM snapshots listed by name only): it cannot be rebuilt and is retrained."""
    snapshots = meta.get("tpm_snapshots", [])
    return ("kind" in meta and "model_name" in meta and isinstance(snapshots, list)
            and all(isinstance(s, dict) for s in snapshots))


def _read_meta(folder: str) -> dict:
    meta = read_json_object(storage.join(folder, META))
    if not is_current(meta):
        raise ValueError(f"{folder} was written by an ecdctr before model folders described "
                         f"themselves and cannot be rebuilt. Fix: delete it; `ecdctr daily` "
                         f"retrains what is missing.")
    return meta


def load_checkpoint(folder: str, config: ModelConfig | None = None) -> Checkpoint:
    """Rebuilds the model saved in folder as it was trained and loads its weights. config
    supplies training settings (learning rate, batch size); the structure is the folder's."""
    if not is_checkpoint(folder):
        raise FileNotFoundError(f"{folder}: no {META}, so not a whole checkpoint. Fix: point to a "
                                f"model folder (e.g. <work>/models/actr/<date>) or retrain it.")
    meta = _read_meta(folder)
    damage = folder_damage(folder, meta)
    if damage:
        raise DamagedFile(f"{damage}: model folder {folder} is damaged. {RETRAIN_FIX}")
    spec = load_spec(storage.join(folder, "spec.yaml"))
    config = with_structure(config or ModelConfig(), meta["model"])
    vocabs = read_vocabularies(storage.join(folder, "vocab"))
    snapshots = []
    for k, info in enumerate(meta.get("tpm_snapshots", [])):
        tables = {}
        for feature, shape in info["features"].items():
            keys = json.loads(storage.read_text(
                storage.join(folder, "tpm", str(k), f"{feature}.keys.json")))
            tables[feature] = (keys, np.zeros((shape["rows"], shape["dim"]), np.float32))
        snapshots.append(tables)
    features = spec.tpm_features if meta.get("features") == "tpm" else spec.features
    stats = {k: tuple(v) for k, v in meta["numeric_stats"].items()}
    model = build_model(features, vocabs, stats, config, example_batch(spec), snapshots or None,
                        domains=meta["domains"], name=meta.get("model_name", meta["kind"]))
    model.load_weights(storage.join(folder, "weights", "ckpt")).expect_partial()
    return Checkpoint(folder, model, meta, spec, vocabs)


def describe(folder: str) -> str:
    """What a model folder is, for `ecdctr inspect`: kind, window, rows, spec, parent, epochs,
    metrics, structure and the TPM snapshots it reads; reads only meta.json."""
    if not is_checkpoint(folder):
        raise FileNotFoundError(f"{folder}: no {META}; not a model folder written by ecdctr. Fix: "
                                f"point to <work>/tpm/<period>, <work>/models/cpm/<period> or "
                                f"<work>/models/actr/<date>.")
    meta = _read_meta(folder)
    train = meta.get("train") or {}
    window = meta.get("window") or ["?", "?"]
    model = meta.get("model", {})
    lines = [
        f"folder:            {folder}",
        f"kind:              {meta.get('kind', '?')}",
        f"training window:   {window[0]} .. {window[-1]}"
        + (f" (validation: {train['validation_share']:.0%} of the requests of "
           f"{train['validation_days'][0]} .. {train['validation_days'][-1]}, "
           f"{train['validation_clicks']:,} clicks)" if train.get("validation_share") else ""),
        f"rows:              {meta.get('rows', '?'):,}" if isinstance(meta.get("rows"), int)
        else f"rows:              {meta.get('rows', '?')}",
        f"spec fingerprint:  {meta.get('spec_fingerprint', '?')}",
        f"parent:            {meta.get('parent') or 'none (trained from scratch)'}",
        f"chosen epoch:      {train.get('chosen_epoch', '?')} of {train.get('epochs_run', '?')} run"
        + (f", validation AUC by epoch {train['validation_auc']}" if train.get("validation_auc")
           else ""),
        f"structure:         {model.get('backbone', '?')} {model.get('hidden', '?')} "
        f"multi_domain={model.get('multi_domain', '?')}",
        f"domains:           {len(meta.get('domains', []))}",
        "tpm snapshots:     " + (", ".join(f"{s['name']} ({s['sha256'][:12]})"
                                           for s in meta.get("tpm_snapshots", [])) or "none"),
    ]
    for name, values in (meta.get("metrics") or {}).items():
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in values.items() if k in ("rows", "auc", "gauc", "logloss"))
        lines.append(f"metrics {name + ':':<10} {shown}")
    return "\n".join(lines)



def save_snapshot(folder: str, model: CtrModel, spec: Spec, vocabs: Mapping[str, Sequence[str]],
                  meta: dict, tables: TpmSnapshot) -> None:
    """A TPM snapshot folder: the TPM's checkpoint (so the next TPM can warm-start from it)
    plus its exported tables, <entity>.npy and <entity>.keys.json, listed in manifest.json."""
    entities = {entity: feature.name for entity, feature in spec.entities.items()}

    def writer(entity: str, feature: str) -> Callable[[str], None]:
        def write(path: str) -> None:
            keys, rows = tables[feature]
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(rows, np.float32))
            storage.write_bytes(path + ".npy", buffer.getvalue())
            storage.write_text(path + ".keys.json", json.dumps(list(keys)))
        return write

    manifest = {"window": meta["window"], "rows": meta["rows"], "train": meta["train"],
                "sha256": tables_hash(tables), "spec_fingerprint": spec.fingerprint,
                "entities": {e: {"feature": n, "rows": len(tables[n][0]),
                                 "dim": int(np.shape(tables[n][1])[1])}
                             for e, n in entities.items()}}
    extra: dict[str, Callable[[str], None]] = {e: writer(e, n) for e, n in entities.items()}
    extra["manifest.json"] = lambda path: write_json(path, manifest)
    save_checkpoint(folder, model, spec, vocabs, meta, extra=extra)


def load_snapshot(folder: str, name: str | None = None) -> Snapshot:
    """The exported tables of a TPM snapshot folder, named by the folder; DamagedFile (naming
    the file and what is wrong) when a table or its manifest is not as written."""
    path = storage.join(folder, "manifest.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"TPM snapshot {folder} has no manifest.json. Fix: delete {folder} "
                                f"and rerun the day: the TPM of its period retrains.")
    records = read_json_object(storage.join(folder, META)).get(FILES) or {}

    def proven(relative: str) -> bytes:
        data = storage.read_bytes(storage.join(folder, relative))
        if is_record(records.get(relative)):
            problem = content_problem(storage.join(folder, relative), records[relative],
                                      record_of(data))
            if problem:
                raise DamagedFile(f"{problem}: TPM snapshot {folder} is damaged. {RETRAIN_FIX}")
        return data

    manifest = json_object(proven("manifest.json"), path)
    tables = {}
    for entity, info in manifest["entities"].items():
        keys = json.loads(proven(f"{entity}.keys.json"))
        table = proven(f"{entity}.npy")  # DamagedFile is a ValueError: not caught below
        try:
            rows = np.load(io.BytesIO(table))
        except ValueError as e:  # a snapshot written before file records, damaged
            raise DamagedFile(f"{storage.join(folder, entity + '.npy')}: damaged ({e}): TPM "
                              f"snapshot {folder} is damaged. {RETRAIN_FIX}") from None
        tables[info["feature"]] = (keys, rows)
    return Snapshot(name or storage.basename(folder), tables, manifest["sha256"])
