"""The daily job: build missing days, train TPM/CPM when due, fine-tune A-CTR, evaluate, export.

Day D is the evaluation day: every model trains on days before D and A-CTR is scored on
the ad traffic of D, which it never saw. The run config's `schedule` says how often TPM and
CPM retrain: a step is due when its output for D's period (D's month for a monthly TPM, the
week holding D for a weekly CPM, ...) is missing. A new CPM warm-starts from the previous CPM
(weights by name, embedding rows by token, BatchNorm kept; features whose spec fingerprint
changed start fresh). The A-CTR of D fine-tunes from the A-CTR of the day before, or is
re-derived from the newest CPM (BatchNorm reset, output prior shifted) when there is none or
a newer CPM landed since. Each step's outcome goes to the day's report, rewritten as steps run.

Resumable: outputs are written to `<name>.tmp` folders (exports to a staging folder) and
renamed into place when whole; a killed run leaves only such leftovers, which the next run
deletes under the work lock. A rerun reuses D's A-CTR checkpoint, and every export carries the
id of the checkpoint it came from (assets.extra/actr.json), so a day is never published twice.

Layout: <work>/tpm/<YYYY-MM or period start>/, <work>/models/cpm/<period start>/ and
<work>/models/actr/<D>/ (weights/, vocab/, spec.yaml: the spec it was trained with, meta.json).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from ecdctr import metrics
from ecdctr.adasparse import AdaSparseConfig
from ecdctr.config import MODEL_KEYS, RunConfig
from ecdctr.data import make_dataset, partition_files
from ecdctr.export import REJECTED, publish, reject, stage_saved_model, versions
from ecdctr.gate import run_gate
from ecdctr.jsonio import read_json, write_json
from ecdctr.models import (
    CtrModel,
    ModelConfig,
    build_model,
    embedding_table,
    merged_tpm,
    shift_output_prior,
    transfer_weights,
)
from ecdctr.spec import Spec, load_spec
from ecdctr.training import fit, predict, recalibrate_batchnorm
from ecdctr.vocab import (
    build_vocabularies,
    domain_sizes,
    numeric_stats,
    read_vocabularies,
    traffic,
    write_vocabularies,
)
from pipelines.build import STAGING, build, built_partitions

Log = Callable[[str], None]
TPM_KEEP = 3  # K: the newest TPM snapshots kept and aggregated (plus those the newest CPM used)
CPM_KEEP = 4  # newest CPM checkpoints kept
ACTR_KEEP = 7  # newest A-CTR checkpoints kept
EXPORT_MARKER = "actr.json"  # in an export's assets.extra/: the checkpoint it came from, its gate
_NAME = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")  # snapshot / checkpoint folder names


class DailyError(RuntimeError):
    """The daily job cannot run for this date; the message says what is missing."""


def report_path(config: RunConfig, date: dt.date) -> str:
    """Where the report of day `date` lives."""
    return os.path.join(config.work, "reports", f"{date.isoformat()}.json")


@contextlib.contextmanager
def work_lock(work: str) -> Iterator[None]:
    """Refuses a second daily run on the same work folder while one runs (a flock, released
    by the kernel if the process dies)."""
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, ".daily.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DailyError(f"another daily run holds {lock.name}; wait for it to finish") from None
        yield


def run_daily(config: RunConfig, date: dt.date, log: Log = print, force: bool = False) -> dict:
    """Runs every step due for `date` and writes <work>/reports/<date>.json. A day whose
    report says ok is not run again unless `force`; a day whose run was killed resumes."""
    path = report_path(config, date)
    if not force and os.path.exists(path) and read_json(path).get("status") == "ok":
        log(f"{date} is done (report {path} says ok); nothing to do. Use --force to run it again.")
        return read_json(path)
    spec = load_spec(config.spec)
    report: dict = {"date": date.isoformat(), "config": config.path, "status": "running",
                    "spec_fingerprint": spec.fingerprint, "steps": {}}
    def written() -> None:
        write_json(path, report)
        log(f"report written to {path}")

    with work_lock(config.work), tracked(report, written):
        _DailyJob(config, spec, date, report, log, force).run()
    return report


@contextlib.contextmanager
def tracked(entry: dict, done: Callable[[], None]) -> Iterator[None]:
    """Status bookkeeping of the report and of each step: `ok` unless the block set another
    status (e.g. skipped), `failed` with the error if it raised; the seconds it took; then
    `done` (write the report, log), whatever happened."""
    started = time.perf_counter()
    try:
        yield
        if entry["status"] == "running":
            entry["status"] = "ok"
    except Exception as e:
        entry["status"] = "failed"
        entry["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        entry["seconds"] = round(time.perf_counter() - started, 1)
        done()


def run_backfill(config: RunConfig, start: dt.date, end: dt.date, log: Log = print,
                 force: bool = False) -> list[dict]:
    """run_daily for every day from start to end, in order; stops at the first failure."""
    if start > end:
        raise ValueError(f"backfill start {start} is after end {end}")
    reports = []
    day = start
    while day <= end:
        log(f"=== backfill {day} ===")
        reports.append(run_daily(config, day, log, force))
        day += dt.timedelta(days=1)
    return reports


def feature_diff(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """Compares two {feature: fingerprint} maps: features new in `new`, changed (fingerprint
    differs), removed (only in `old`) and restored (same fingerprint: their weights carry over)."""
    return {"new": sorted(set(new) - set(old)),
            "changed": sorted(n for n in set(new) & set(old) if new[n] != old[n]),
            "removed": sorted(set(old) - set(new)),
            "restored": sorted(n for n in set(new) & set(old) if new[n] == old[n])}


def feature_fingerprints(spec: Spec) -> dict[str, str]:
    """{feature name: fingerprint} of a spec, as checkpoints record it."""
    return {f.name: f.fingerprint for f in spec.features}


class _DailyJob:
    def __init__(self, config: RunConfig, spec: Spec, date: dt.date, report: dict, log: Log,
                 force: bool = False):
        self.config, self.spec, self.date, self.report, self.log = config, spec, date, report, log
        self.work, self.force = config.work, force
        self.cpm_root = os.path.join(self.work, "models", "cpm")
        self.actr_root = os.path.join(self.work, "models", "actr")
        self.tpm_root = os.path.join(self.work, "tpm")
        self.export_base = os.path.join(config.export, "actr")
        self.examples: dict[str, dict] = {}
        self.actr_model: CtrModel | None = None
        self.actr_meta: dict = {}
        self.actr_folder = ""

    def run(self) -> None:
        self.remove_leftovers()
        with self.step("build") as s:
            w = self.config.windows
            start = self.date - dt.timedelta(days=max(w.tpm_days, w.cpm_days))
            built = build(self.spec, self.config.logs, self.work, start=start, end=self.date,
                          beam_args=self.config.beam_args, skip_built=True, log=self.log)
            s["partitions_built"] = len(built)
        with self.step("tpm") as s:
            self.tpm(s)
        with self.step("cpm") as s:
            self.cpm(s)
        with self.step("actr") as s:
            self.actr(s)
        with self.step("export") as s:
            self.export(s)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict]:
        entry: dict = {"status": "running"}
        self.report["steps"][name] = entry
        self.save_report()
        self.log(f"== {name} ==")

        def done() -> None:
            self.log(f"== {name}: {entry['status']} in {entry['seconds']}s ==")
            self.save_report()

        with tracked(entry, done):
            yield entry

    def save_report(self) -> None:
        """The report so far (status "running"): shows how far a killed run got."""
        write_json(report_path(self.config, self.date), self.report)

    def remove_leftovers(self) -> None:
        """Deletes what killed runs left: unfinished `.tmp` folders, the Beam build's staging
        (when no build runs), export staging folders and report temp files of dead processes.
        Runs under the work lock, so no other daily run is writing them."""
        for root in (self.tpm_root, self.cpm_root, self.actr_root):
            for name in _listdir(root):
                if name.endswith(".tmp"):
                    self.log(f"removing leftovers of an interrupted run: {os.path.join(root, name)}")
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        staging = os.path.join(self.work, STAGING)
        if _listdir(staging):
            with open(os.path.join(self.work, ".build.lock"), "w") as lock:
                with contextlib.suppress(BlockingIOError):  # a build runs: its staging is live
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    for name in _listdir(staging):
                        self.log(f"removing leftovers of an interrupted build: "
                                 f"{os.path.join(staging, name)}")
                        shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
        for folder, prefix in ((self.export_base, ".staging-"),
                               (os.path.join(self.work, "reports"), "")):
            for name in _listdir(folder):
                if name.startswith(prefix) and re.search(r"[.-]tmp-\d+$|^\.staging-.*-\d+$", name):
                    pid = int(name.rsplit("-", 1)[1])
                    if pid != os.getpid() and not _alive(pid):
                        path = os.path.join(folder, name)
                        self.log(f"removing leftovers of an interrupted run: {path}")
                        if os.path.isdir(path):
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            os.remove(path)

    # -- data -----------------------------------------------------------------------------
    def window(self, source: str, days: int) -> list[dt.date]:
        """Built days of source in [date - days, date)."""
        first = self.date - dt.timedelta(days=days)
        return [d for d in built_partitions(self.work, source) if first <= d < self.date]

    def rows(self, source: str, dates: list[dt.date]) -> int:
        return traffic(self.work, [(source, d) for d in dates])[0]

    def ctr(self, source: str, dates: list[dt.date]) -> float:
        return traffic(self.work, [(source, d) for d in dates])[1]

    def dataset(self, source: str, dates: list[dt.date], model: ModelConfig,
                shuffle: bool, spec: Spec | None = None) -> tf.data.Dataset:
        if not dates:
            raise DailyError(f"no built {source} days before {self.date} in the window. Fix: put "
                             f"logs under {self.config.logs}/{source}/date=YYYY-MM-DD/.")
        files = partition_files(self.work, source, dates)
        return make_dataset(spec or self.spec, files, model.batch_size, shuffle=shuffle,
                            seed=model.seed)

    def example(self, spec: Spec) -> dict:
        """One batch of input parsed with `spec`, to create a model's variables."""
        if spec.fingerprint not in self.examples:
            days = self.window("natural", self.config.windows.cpm_days)[-1:]
            source = "natural" if days else "ad"
            days = days or self.window("ad", self.config.windows.actr_days)[-1:]
            ds = self.dataset(source, days, ModelConfig(batch_size=64), False, spec)
            self.examples[spec.fingerprint] = next(iter(ds))[0]
        return self.examples[spec.fingerprint]

    def shared_partitions(self) -> list[tuple[str, dt.date]]:
        """Where CPM and A-CTR vocabularies and domains come from: the natural CPM window
        and the ad A-CTR window."""
        w = self.config.windows
        parts = [("natural", d) for d in self.window("natural", w.cpm_days)]
        return parts + [("ad", d) for d in self.window("ad", w.actr_days)]

    def train(self, model: CtrModel, ds: tf.data.Dataset, cfg: ModelConfig, rows: int,
              name: str) -> dict:
        board = os.path.join(self.work, "tensorboard", name, self.date.isoformat())
        return fit(model, ds, cfg.epochs, cfg.batch_size, name, self.log, board, rows)

    # -- schedule and stored outputs ------------------------------------------------------
    def period(self, step: str) -> str | None:
        """The name of D's period for step ("tpm" or "cpm"): its output folder's name. A
        monthly TPM's is the month (YYYY-MM) its period starts in, every other the period's
        first day; None for `once`."""
        start = self.config.schedule.period_start(step, self.date)
        if start is None:
            return None
        if step == "tpm" and self.config.schedule.tpm == "monthly":
            return start.strftime("%Y-%m")
        return start.isoformat()

    def due(self, step: str, root: str, marker: str, entry: dict) -> str | None:
        """The folder name step must write for D, or None when D's period already has its
        output (the entry then says skipped and why)."""
        frequency = getattr(self.config.schedule, step)
        key = self.period(step)
        entry.update(schedule=frequency, period=key)
        if key is None:
            usable = self.usable(root, marker)
            if usable:
                existing = os.path.join(root, usable[-1][0])
                entry.update(status="skipped", reason=f"{existing} exists (schedule once)")
                return None
            return self.date.isoformat()
        if os.path.exists(os.path.join(root, key, marker)):
            entry.update(status="skipped",
                         reason=f"{os.path.join(root, key)} exists ({frequency} period {key})")
            return None
        return key

    def complete(self, root: str, marker: str) -> list[tuple[str, dict]]:
        """(name, meta) of the whole outputs under root, oldest first (by the last day they
        were trained on, then name)."""
        found = [(name, read_json(os.path.join(root, name, marker))) for name in _listdir(root)
                 if _NAME.match(name) and os.path.exists(os.path.join(root, name, marker))]
        return sorted(found, key=lambda item: (item[1].get("window", [item[0]] * 2)[-1], item[0]))

    def usable(self, root: str, marker: str) -> list[tuple[str, dict]]:
        """The outputs under root trained on days before D only (so D stays held out)."""
        return [(name, meta) for name, meta in self.complete(root, marker)
                if meta.get("window", [name] * 2)[-1] < self.date.isoformat()]

    def prune(self, root: str, marker: str, keep: int, protect: set[str]) -> None:
        """Removes all but the newest `keep` outputs under root (never those in protect); each
        is renamed to <name>.tmp first, so a kill mid-delete leaves nothing that looks whole."""
        for name, _ in self.complete(root, marker)[:-keep]:
            if name in protect:
                continue
            trash = os.path.join(root, name + ".tmp")
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(os.path.join(root, name), trash)
            shutil.rmtree(trash)
            self.log(f"removed old {os.path.join(root, name)}")

    def save_checkpoint(self, folder: str, model: CtrModel, vocabs: dict, meta: dict) -> None:
        """Writes weights, vocabularies, the spec and meta.json (last) to folder.tmp, then
        swaps it in by renames."""
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write_vocabularies(vocabs, os.path.join(tmp, "vocab"))
        model.save_weights(os.path.join(tmp, "weights", "ckpt"))
        shutil.copyfile(self.spec.path, os.path.join(tmp, "spec.yaml"))
        write_json(os.path.join(tmp, "meta.json"), meta)
        if os.path.exists(folder):
            old = folder + ".old.tmp"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old)
        else:
            os.rename(tmp, folder)

    def load_checkpoint(self, folder: str, config: ModelConfig, name: str
                        ) -> tuple[CtrModel, dict, Spec]:
        """Rebuilds the model saved in folder as it was trained (its spec, vocabularies,
        structure, domains, TPM snapshot) and loads its weights: (model, meta, spec)."""
        meta = read_json(os.path.join(folder, "meta.json"))
        spec_file = os.path.join(folder, "spec.yaml")
        spec = load_spec(spec_file) if os.path.exists(spec_file) else self.spec
        if "model" in meta:
            config = _with_structure(config, meta["model"])
        stats = {k: tuple(v) for k, v in meta["numeric_stats"].items()}
        model = build_model(spec.features, read_vocabularies(os.path.join(folder, "vocab")), stats,
                            config, self.example(spec), self.snapshot_tables(meta),
                            domains=meta["domains"], name=name)
        model.load_weights(os.path.join(folder, "weights", "ckpt")).expect_partial()
        return model, meta, spec

    def transfer(self, source: CtrModel, source_meta: dict, target: CtrModel, what: str,
                 **options: bool) -> dict:
        """transfer_weights with the spec diff: features new or changed since the source was
        trained start fresh, unchanged ones are restored, removed ones are dropped."""
        new = feature_fingerprints(self.spec)
        old = source_meta.get("feature_fingerprints")
        if old is None:  # a checkpoint from before per-feature fingerprints
            old = new if source_meta.get("spec_fingerprint") == self.spec.fingerprint else {}
        diff = feature_diff(old, new)
        result = transfer_weights(source, target, log=self.log,
                                  fresh_features=diff["new"] + diff["changed"], **options)
        self.log(f"{what}: features new {diff['new']}, changed {diff['changed']}, removed "
                 f"{diff['removed']} (new and changed start fresh), restored {diff['restored']}"
                 + (f"; shape changed with the feature set, started fresh: "
                    f"{result['shape_changed']}" if result["shape_changed"] else ""))
        return {**diff, "shape_changed": result["shape_changed"], "fresh": result["fresh"],
                "variables": {k: len(v) for k, v in result.items()}}

    # -- TPM ------------------------------------------------------------------------------
    def tpm(self, entry: dict) -> None:
        key = self.due("tpm", self.tpm_root, "manifest.json", entry)
        if key is None:
            return
        folder = os.path.join(self.tpm_root, key)
        cfg = self.config.tpm
        days = self.window("natural", self.config.windows.tpm_days)
        parts = [("natural", d) for d in days]
        vocabs = build_vocabularies(self.spec, self.work, parts)
        stats = numeric_stats(self.spec, self.work, parts)
        ds = self.dataset("natural", days, cfg, shuffle=True)
        self.log(f"TPM on {len(days)} natural days ({self.rows('natural', days):,} rows), "
                 f"features {[f.name for f in self.spec.tpm_features]}")
        model = build_model(self.spec.tpm_features, vocabs, stats, cfg, next(iter(ds))[0],
                            initial_ctr=self.ctr("natural", days), name="tpm")
        entry["train"] = self.train(model, ds, cfg, self.rows("natural", days), "tpm")
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        entities = {}
        for entity, feature in self.spec.entities.items():
            keys, rows = embedding_table(model, feature.name)
            np.save(os.path.join(tmp, f"{entity}.npy"), rows.astype(np.float32))
            with open(os.path.join(tmp, f"{entity}.keys.txt"), "w", encoding="utf-8") as f:
                f.write("".join(k + "\n" for k in keys))
            entities[entity] = {"feature": feature.name, "rows": len(keys), "dim": rows.shape[1]}
        manifest = {"window": [days[0].isoformat(), days[-1].isoformat()],
                    "rows": self.rows("natural", days), "entities": entities,
                    "train": entry["train"], "spec_fingerprint": self.spec.fingerprint}
        write_json(os.path.join(tmp, "manifest.json"), manifest)
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
        entry.update(snapshot=folder, entities=entities)
        self.log(f"TPM snapshot {folder}: " + ", ".join(f"{e} {v['rows']:,}x{v['dim']}"
                                                        for e, v in entities.items()))
        cpms = self.complete(self.cpm_root, "meta.json")
        self.prune(self.tpm_root, "manifest.json", TPM_KEEP,
                   {key} | (set(snapshot_names(cpms[-1][1])) if cpms else set()))

    def snapshot_tables(self, meta: dict) -> list[dict[str, tuple[list[str], np.ndarray]]]:
        """The TPM snapshots (oldest first) a checkpoint was trained with."""
        return [self.tpm_tables(name) for name in snapshot_names(meta)]

    def tpm_tables(self, name: str) -> dict[str, tuple[list[str], np.ndarray]]:
        folder = os.path.join(self.tpm_root, name)
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            raise DailyError(f"TPM snapshot {folder} is missing but a checkpoint was trained "
                             f"with it. Fix: rerun the day with --force so the models retrain.")
        manifest = read_json(os.path.join(folder, "manifest.json"))
        tables = {}
        for entity, info in manifest["entities"].items():
            with open(os.path.join(folder, f"{entity}.keys.txt"), encoding="utf-8") as f:
                keys = f.read().splitlines()
            tables[info["feature"]] = (keys, np.load(os.path.join(folder, f"{entity}.npy")))
        return tables

    # -- CPM ------------------------------------------------------------------------------
    def cpm(self, entry: dict) -> None:
        key = self.due("cpm", self.cpm_root, "meta.json", entry)
        if key is None:
            return
        folder = os.path.join(self.cpm_root, key)
        cfg = self.config.cpm
        days = self.window("natural", self.config.windows.cpm_days)
        snapshots = self.usable(self.tpm_root, "manifest.json")
        if not snapshots:
            raise DailyError("no TPM snapshot to build CPM on. Fix: let the tpm step run first.")
        names = [name for name, _ in snapshots[-TPM_KEEP:]]  # the last K, oldest first
        shared = self.shared_partitions()
        vocabs = build_vocabularies(self.spec, self.work, shared)
        domains = list(domain_sizes(self.work, shared))
        stats = numeric_stats(self.spec, self.work, [("natural", d) for d in days])
        ds = self.dataset("natural", days, cfg, shuffle=True)
        self.log(f"CPM on {len(days)} natural days ({self.rows('natural', days):,} rows) "
                 f"with TPM snapshots {names} through the attention aggregator")
        model = build_model(self.spec.features, vocabs, stats, cfg, next(iter(ds))[0],
                            [self.tpm_tables(n) for n in names], self.ctr("natural", days),
                            domains, name="cpm")
        previous = [name for name, _ in self.usable(self.cpm_root, "meta.json") if name != key]
        if previous:
            source_folder = os.path.join(self.cpm_root, previous[-1])
            source, source_meta, _ = self.load_checkpoint(source_folder, cfg, "cpm")
            entry["warm_start"] = {"from": source_folder, **self.transfer(
                source, source_meta, model, f"CPM warm start from {source_folder}",
                reset_batchnorm=False)}
        else:
            entry["warm_start"] = None
            self.log("CPM starts fresh: no earlier CPM checkpoint")
        entry["train"] = self.train(model, ds, cfg, self.rows("natural", days), "cpm")
        recalibrate_batchnorm(model, self.dataset("natural", days, cfg, shuffle=True), log=self.log)
        meta = {"period": key, "schedule": self.config.schedule.cpm,
                "window": [days[0].isoformat(), days[-1].isoformat()],
                "rows": self.rows("natural", days), "tpm_snapshots": names,
                "numeric_stats": stats, "domains": domains, "train": entry["train"],
                "ctr": self.ctr("natural", days), "model": _structure(cfg),
                "warm_start": entry["warm_start"] and entry["warm_start"]["from"],
                "spec_fingerprint": self.spec.fingerprint,
                "feature_fingerprints": feature_fingerprints(self.spec)}
        self.save_checkpoint(folder, model, vocabs, meta)
        entry["checkpoint"] = folder
        self.prune(self.cpm_root, "meta.json", CPM_KEEP, {key})

    # -- A-CTR ----------------------------------------------------------------------------
    def actr(self, entry: dict) -> None:
        cfg = self.config.actr
        days = self.window("ad", self.config.windows.actr_days)
        if self.date not in built_partitions(self.work, "ad"):
            raise DailyError(f"ad traffic of {self.date} (the evaluation day) is not built. Fix: "
                             f"put its logs under {self.config.logs}/ad/date={self.date}/.")
        cpms = self.usable(self.cpm_root, "meta.json")
        if not cpms:
            raise DailyError(f"no CPM checkpoint trained before {self.date} in {self.cpm_root}. "
                             f"Fix: let the cpm step run first.")
        cpm_name = cpms[-1][0]
        cpm_folder = os.path.join(self.cpm_root, cpm_name)
        cpm, cpm_meta, cpm_spec = self.load_checkpoint(cpm_folder, self.config.cpm, "cpm")
        self.log(f"loaded CPM {cpm_folder}")
        folder = os.path.join(self.actr_root, self.date.isoformat())
        entry["checkpoint"] = folder
        if self.resumable(folder, cpm_name):
            model, meta, _ = self.load_checkpoint(folder, cfg, "actr")
            entry.update(start=meta["start"], start_reason=meta["start_reason"], resumed=True,
                         train=meta["train"], transfer=meta["transfer"])
            self.log(f"A-CTR checkpoint {folder} of this day exists (an earlier run of the day "
                     f"trained it {meta['start']}): evaluating and exporting it as it is")
        else:
            model, meta = self.fine_tune(entry, cpm, cpm_meta, cpm_folder, days)
            self.save_checkpoint(folder, model, meta.pop("vocabs"), meta)
            self.prune(self.actr_root, "meta.json", ACTR_KEEP, {self.date.isoformat()})
        entry["metrics"] = {}
        for name, m, spec in (("actr", model, self.spec), ("cpm", cpm, cpm_spec)):
            scored = predict(m, spec, self.dataset("ad", [self.date], cfg, False, spec))
            entry["metrics"][name] = metrics.summary(scored["labels"], scored["probs"],
                                                     scored["groups"])
            r = entry["metrics"][name]
            self.log(f"{name} on ad {self.date} ({r['rows']:,} rows): logloss {r['logloss']:.4f} "
                     f"AUC {r['auc']:.4f} GAUC {r['gauc']:.4f} over {r['gauc_groups']} users "
                     f"(CTR {r['ctr']:.4f}, mean prediction {r['mean_prediction']:.4f})")
        self.report["metrics"] = entry["metrics"]["actr"]
        self.actr_model, self.actr_meta, self.actr_folder = model, meta, folder

    def resumable(self, folder: str, cpm_name: str) -> bool:
        """True when an earlier (killed) run of this day saved the A-CTR checkpoint that this
        run would train: same CPM, spec and structure; --force trains it again."""
        if self.force or not os.path.exists(os.path.join(folder, "meta.json")):
            return False
        meta = read_json(os.path.join(folder, "meta.json"))
        same = (meta.get("cpm") == cpm_name and meta.get("spec_fingerprint") == self.spec.fingerprint
                and meta.get("model") == _structure(self.config.actr))
        if not same:
            self.log(f"A-CTR checkpoint {folder} was trained with another CPM, spec or model "
                     f"structure: training it again")
        return same

    def fine_tune(self, entry: dict, cpm: CtrModel, cpm_meta: dict, cpm_folder: str,
                  days: list[dt.date]) -> tuple[CtrModel, dict]:
        """A-CTR of D: starts from the previous day's A-CTR when it descends from the same CPM,
        else re-derives from the CPM; fine-tunes on the ad window. Returns (model, meta)."""
        cfg = self.config.actr
        train = self.dataset("ad", days, cfg, shuffle=True)
        vocabs = build_vocabularies(self.spec, self.work, self.shared_partitions())
        stats = {k: tuple(v) for k, v in cpm_meta["numeric_stats"].items()}
        model = build_model(self.spec.features, vocabs, stats, cfg, next(iter(train))[0],
                            self.snapshot_tables(cpm_meta),
                            domains=cpm_meta["domains"], name="actr")
        cpm_name = os.path.basename(cpm_folder)
        earlier = [(n, m) for n, m in self.complete(self.actr_root, "meta.json")
                   if n < self.date.isoformat()]
        previous, previous_meta = earlier[-1] if earlier else (None, {})
        if previous and previous_meta.get("cpm") == cpm_name:
            source_folder = os.path.join(self.actr_root, previous)
            yesterday = (self.date - dt.timedelta(days=1)).isoformat()
            start = (f"from yesterday's A-CTR {source_folder}" if previous == yesterday
                     else f"from the A-CTR of {previous} {source_folder} (the newest earlier one)")
            reason = f"it descends from the newest CPM {cpm_name}"
            source, source_meta, _ = self.load_checkpoint(source_folder, cfg, "actr")
            transfer = self.transfer(source, source_meta, model, f"A-CTR {start}",
                                     reset_batchnorm=False)
            # Only the ad days the previous A-CTR has not learned from: re-reading the whole
            # window every day would be one more epoch over it a day, and overfits the ids.
            seen = dt.date.fromisoformat(source_meta["window"][1])
            train_days = [d for d in days if d > seen]
        else:
            start = f"re-derived from CPM {cpm_folder}"
            reason = (f"CPM {cpm_name} landed after CPM {previous_meta.get('cpm')} that the "
                      f"previous A-CTR ({previous}) descends from" if previous
                      else "no earlier A-CTR checkpoint")
            transfer = self.transfer(cpm, cpm_meta, model, f"A-CTR {start}",
                                     reset_batchnorm=self.config.reset_batchnorm,
                                     reset_batchnorm_affine=self.config.reset_batchnorm_affine)
            shift_output_prior(model, cpm_meta["ctr"], self.ctr("ad", days), self.log)
            train_days = days
        self.log(f"A-CTR starts {start} ({reason})")
        entry.update(start=start, start_reason=reason, transfer=transfer,
                     trained_days=[d.isoformat() for d in train_days])
        if train_days:
            self.log(f"A-CTR fine-tune on {len(train_days)} ad days "
                     f"({self.rows('ad', train_days):,} rows)")
            entry["train"] = self.train(model, self.dataset("ad", train_days, cfg, shuffle=True),
                                        cfg, self.rows("ad", train_days), "actr")
        else:
            self.log("A-CTR: no ad day it has not learned from yet; kept as it is")
            entry["train"] = {"rows_read": 0, "steps": 0}
        recalibrate_batchnorm(model, self.dataset("ad", days, cfg, shuffle=True), log=self.log)
        meta = {"id": f"{self.date.isoformat()}-{uuid.uuid4().hex[:12]}",
                "date": self.date.isoformat(), "cpm": cpm_name, "cpm_path": cpm_folder,
                "start": start, "start_reason": reason, "transfer": transfer,
                "window": [days[0].isoformat(), days[-1].isoformat()],
                "rows": self.rows("ad", days), "tpm_snapshots": snapshot_names(cpm_meta),
                "numeric_stats": cpm_meta["numeric_stats"], "domains": cpm_meta["domains"],
                "train": entry["train"], "ctr": self.ctr("ad", days), "model": _structure(cfg),
                "spec_fingerprint": self.spec.fingerprint,
                "feature_fingerprints": feature_fingerprints(self.spec), "vocabs": vocabs}
        return model, meta

    # -- export ---------------------------------------------------------------------------
    def export(self, entry: dict) -> None:
        """Stages the SavedModel, gates it against the serving version, publishes or rejects;
        a checkpoint an interrupted run already published (or rejected) is not exported again."""
        base, meta = self.export_base, self.actr_meta
        done = _exported(base, meta["id"])
        if done:
            path, marker = done
            published = os.path.dirname(path) == base
            self.log(f"{path} was already exported from checkpoint {self.actr_folder} by an "
                     f"interrupted run of this day; not exporting again")
            entry["reused"] = path
            self.report["gate"] = entry["gate"] = marker["gate"]
            self.report["export" if published else "rejected"] = path
            self.report["published"] = published
            return
        files = partition_files(self.work, "ad", [self.date])
        held_out = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        with merged_tpm(self.actr_model):  # serving does one lookup per entity, no attention
            staging = stage_saved_model(self.actr_model, self.spec, base, held_out, log=self.log)
        serving = versions(base)
        gate = run_gate(self.actr_model, self.spec, staging,
                        os.path.join(base, str(serving[-1])) if serving else None, held_out,
                        self.report["steps"]["actr"]["metrics"]["actr"], self.config.gate,
                        self.log)
        self.report["gate"] = entry["gate"] = gate
        write_json(os.path.join(staging, "assets.extra", EXPORT_MARKER),
                   {"date": self.date.isoformat(), "checkpoint": self.actr_folder,
                    "checkpoint_id": meta["id"], "gate": gate})
        if gate["passed"]:
            self.report["export"] = publish(staging, base, self.config.gate.keep_versions, self.log)
        else:
            self.report["rejected"] = reject(staging, base, gate["reasons"], self.log)
        self.report["published"] = gate["passed"]


def snapshot_names(meta: dict) -> list[str]:
    """The TPM snapshots (oldest first) a CPM or A-CTR checkpoint was trained with."""
    return list(meta.get("tpm_snapshots") or [meta["tpm_snapshot"]])


def _exported(base: str, checkpoint_id: str) -> tuple[str, dict] | None:
    """(path, marker) of the published or rejected export of a checkpoint, if there is one."""
    candidates = [os.path.join(base, str(v)) for v in versions(base)]
    candidates += [os.path.join(base, REJECTED, n) for n in _listdir(os.path.join(base, REJECTED))]
    for path in candidates:
        marker = os.path.join(path, "assets.extra", EXPORT_MARKER)
        if os.path.exists(marker):
            body = read_json(marker)
            if body.get("checkpoint_id") == checkpoint_id:
                return path, body
    return None


def _structure(config: ModelConfig) -> dict:
    """The model structure a checkpoint was built with (JSON), so it can be rebuilt."""
    body = {k: getattr(config, k) for k in MODEL_KEYS}
    body["hidden"] = list(config.hidden)
    body["adasparse"] = dataclasses.asdict(config.adasparse)
    return body


def _with_structure(config: ModelConfig, body: dict) -> ModelConfig:
    body = {**body, "hidden": tuple(body["hidden"]),
            "adasparse": AdaSparseConfig(**body["adasparse"])}
    return dataclasses.replace(config, **body)


def _listdir(folder: str) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
