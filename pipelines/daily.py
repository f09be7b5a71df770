"""The daily job: build missing days, train TPM/CPM when due, fine-tune A-CTR, evaluate, export.

Day D is the evaluation day: every model trains on days before D and A-CTR is scored on
the ad traffic of D, which it never saw. TPM runs when D's month has no snapshot, CPM when
D's week has no checkpoint, A-CTR every day. Each step's outcome goes to the day's report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from ecdctr import metrics
from ecdctr.config import RunConfig
from ecdctr.data import make_dataset, partition_files
from ecdctr.export import publish, reject, stage_saved_model, versions
from ecdctr.gate import run_gate
from ecdctr.jsonio import read_json, write_json
from ecdctr.models import (
    CtrModel,
    ModelConfig,
    build_model,
    embedding_table,
    shift_output_prior,
    transfer_weights,
)
from ecdctr.spec import Spec, load_spec
from ecdctr.training import fit, predict, recalibrate_batchnorm
from ecdctr.vocab import (
    build_vocabularies,
    domain_sizes,
    numeric_stats,
    read_stats,
    read_vocabularies,
    write_vocabularies,
)
from pipelines.build import build, built_partitions

Log = Callable[[str], None]
TPM_KEEP = 3  # newest TPM snapshots kept


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
    report says ok is not run again unless `force`."""
    path = report_path(config, date)
    if not force and os.path.exists(path) and read_json(path).get("status") == "ok":
        log(f"{date} is done (report {path} says ok); nothing to do. Use --force to run it again.")
        return read_json(path)
    spec = load_spec(config.spec)
    report: dict = {"date": date.isoformat(), "config": config.path,
                    "spec_fingerprint": spec.fingerprint, "steps": {}}
    started = time.perf_counter()
    with work_lock(config.work):
        try:
            _DailyJob(config, spec, date, report, log).run()
            report["status"] = "ok"
        except Exception as e:
            report["status"] = "failed"
            report["error"] = f"{type(e).__name__}: {e}"
            raise
        finally:
            report["seconds"] = round(time.perf_counter() - started, 1)
            write_json(path, report)
            log(f"report written to {path}")
    return report


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


class _DailyJob:
    def __init__(self, config: RunConfig, spec: Spec, date: dt.date, report: dict, log: Log):
        self.config, self.spec, self.date, self.report, self.log = config, spec, date, report, log
        self.work = config.work

    def run(self) -> None:
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

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict]:
        entry: dict = {"status": "running"}
        self.report["steps"][name] = entry
        self.log(f"== {name} ==")
        started = time.perf_counter()
        try:
            yield entry
            if entry["status"] == "running":
                entry["status"] = "ok"
        except Exception as e:
            entry["status"] = "failed"
            entry["error"] = f"{type(e).__name__}: {e}"
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - started, 1)
            self.log(f"== {name}: {entry['status']} in {entry['seconds']}s ==")

    # -- data -----------------------------------------------------------------------------
    def window(self, source: str, days: int) -> list[dt.date]:
        """Built days of source in [date - days, date)."""
        first = self.date - dt.timedelta(days=days)
        return [d for d in built_partitions(self.work, source) if first <= d < self.date]

    def rows(self, source: str, dates: list[dt.date]) -> int:
        return sum(read_stats(self.work, source, d)["rows_written"] for d in dates)

    def ctr(self, source: str, dates: list[dt.date]) -> float:
        stats = [read_stats(self.work, source, d) for d in dates]
        return sum(s["clicks"] for s in stats) / max(sum(s["rows_written"] for s in stats), 1)

    def dataset(self, source: str, dates: list[dt.date], model: ModelConfig,
                shuffle: bool) -> tf.data.Dataset:
        if not dates:
            raise DailyError(f"no built {source} days before {self.date} in the window. Fix: put "
                             f"logs under {self.config.logs}/{source}/date=YYYY-MM-DD/.")
        files = partition_files(self.work, source, dates)
        return make_dataset(self.spec, files, model.batch_size, shuffle=shuffle, seed=model.seed)

    def shared_partitions(self) -> list[tuple[str, dt.date]]:
        """Where CPM and A-CTR vocabularies and domains come from: the natural CPM window
        and the ad A-CTR window."""
        w = self.config.windows
        parts = [("natural", d) for d in self.window("natural", w.cpm_days)]
        return parts + [("ad", d) for d in self.window("ad", w.actr_days)]

    def train(self, model: CtrModel, ds: tf.data.Dataset, cfg: ModelConfig, rows: int,
              name: str) -> dict:
        model.set_total_steps(cfg.epochs * -(-rows // cfg.batch_size))
        return fit(model, ds, cfg.epochs, cfg.batch_size, name, self.log)

    # -- TPM ------------------------------------------------------------------------------
    def tpm(self, entry: dict) -> None:
        folder = os.path.join(self.work, "tpm", self.date.strftime("%Y-%m"))
        if os.path.exists(os.path.join(folder, "manifest.json")):
            entry.update(status="skipped", reason=f"snapshot {folder} exists")
            return
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
        snapshots = _tpm_snapshots(self.work)
        for old in snapshots[:-TPM_KEEP]:
            shutil.rmtree(os.path.join(self.work, "tpm", old))
            self.log(f"removed old TPM snapshot {old}")

    def tpm_tables(self, month: str) -> dict[str, tuple[list[str], np.ndarray]]:
        folder = os.path.join(self.work, "tpm", month)
        manifest = read_json(os.path.join(folder, "manifest.json"))
        tables = {}
        for entity, info in manifest["entities"].items():
            with open(os.path.join(folder, f"{entity}.keys.txt"), encoding="utf-8") as f:
                keys = f.read().splitlines()
            tables[info["feature"]] = (keys, np.load(os.path.join(folder, f"{entity}.npy")))
        return tables

    # -- CPM ------------------------------------------------------------------------------
    def cpm(self, entry: dict) -> None:
        week = (self.date - dt.timedelta(days=self.date.weekday())).isoformat()
        folder = os.path.join(self.work, "models", "cpm", week)
        if os.path.exists(os.path.join(folder, "meta.json")):
            entry.update(status="skipped", reason=f"checkpoint {folder} exists")
            return
        cfg = self.config.cpm
        days = self.window("natural", self.config.windows.cpm_days)
        snapshots = [m for m in _tpm_snapshots(self.work) if m <= self.date.strftime("%Y-%m")]
        if not snapshots:
            raise DailyError("no TPM snapshot to build CPM on. Fix: let the tpm step run first.")
        shared = self.shared_partitions()
        vocabs = build_vocabularies(self.spec, self.work, shared)
        domains = list(domain_sizes(self.work, shared))
        stats = numeric_stats(self.spec, self.work, [("natural", d) for d in days])
        ds = self.dataset("natural", days, cfg, shuffle=True)
        self.log(f"CPM on {len(days)} natural days ({self.rows('natural', days):,} rows) "
                 f"with TPM snapshot {snapshots[-1]}")
        model = build_model(self.spec.features, vocabs, stats, cfg, next(iter(ds))[0],
                            self.tpm_tables(snapshots[-1]), self.ctr("natural", days), domains,
                            name="cpm")
        entry["train"] = self.train(model, ds, cfg, self.rows("natural", days), "cpm")
        recalibrate_batchnorm(model, self.dataset("natural", days, cfg, shuffle=True), log=self.log)
        meta = {"week": week, "window": [days[0].isoformat(), days[-1].isoformat()],
                "rows": self.rows("natural", days), "tpm_snapshot": snapshots[-1],
                "numeric_stats": stats, "domains": domains, "train": entry["train"],
                "ctr": self.ctr("natural", days),
                "spec_fingerprint": self.spec.fingerprint}
        tmp = folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write_vocabularies(vocabs, os.path.join(tmp, "vocab"))
        model.save_weights(os.path.join(tmp, "weights", "ckpt"))
        write_json(os.path.join(tmp, "meta.json"), meta)
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
        entry["checkpoint"] = folder

    def load_cpm(self, example: dict) -> tuple[CtrModel, dict]:
        week = (self.date - dt.timedelta(days=self.date.weekday())).isoformat()
        root = os.path.join(self.work, "models", "cpm")
        weeks = sorted(w for w in os.listdir(root) if w <= week and not w.endswith(".tmp")
                       and os.path.exists(os.path.join(root, w, "meta.json")))
        if not weeks:
            raise DailyError(f"no CPM checkpoint in {root}. Fix: let the cpm step run first.")
        folder = os.path.join(root, weeks[-1])
        meta = read_json(os.path.join(folder, "meta.json"))
        stats = {k: tuple(v) for k, v in meta["numeric_stats"].items()}
        model = build_model(self.spec.features, read_vocabularies(os.path.join(folder, "vocab")),
                            stats, self.config.cpm, example, self.tpm_tables(meta["tpm_snapshot"]),
                            domains=meta["domains"], name="cpm")
        model.load_weights(os.path.join(folder, "weights", "ckpt")).expect_partial()
        self.log(f"loaded CPM {folder}")
        return model, meta

    # -- A-CTR ----------------------------------------------------------------------------
    def actr(self, entry: dict) -> None:
        cfg = self.config.actr
        days = self.window("ad", self.config.windows.actr_days)
        if self.date not in built_partitions(self.work, "ad"):
            raise DailyError(f"ad traffic of {self.date} (the evaluation day) is not built. Fix: "
                             f"put its logs under {self.config.logs}/ad/date={self.date}/.")
        train = self.dataset("ad", days, cfg, shuffle=True)
        example = next(iter(train))[0]
        cpm, meta = self.load_cpm(example)
        stats = {k: tuple(v) for k, v in meta["numeric_stats"].items()}
        model = build_model(self.spec.features,
                            build_vocabularies(self.spec, self.work, self.shared_partitions()),
                            stats, cfg, example, self.tpm_tables(meta["tpm_snapshot"]),
                            domains=meta["domains"], name="actr")
        entry["transfer"] = {k: len(v) for k, v in transfer_weights(
            cpm, model, reset_batchnorm=self.config.reset_batchnorm, log=self.log).items()}
        shift_output_prior(model, meta["ctr"], self.ctr("ad", days), self.log)
        self.log(f"A-CTR fine-tune on {len(days)} ad days ({self.rows('ad', days):,} rows)")
        entry["train"] = self.train(model, train, cfg, self.rows("ad", days), "actr")
        recalibrate_batchnorm(model, self.dataset("ad", days, cfg, shuffle=True), log=self.log)
        held_out = self.dataset("ad", [self.date], cfg, shuffle=False)
        entry["metrics"] = {}
        for name, m in (("actr", model), ("cpm", cpm)):
            scored = predict(m, self.spec, held_out)
            entry["metrics"][name] = metrics.summary(scored["labels"], scored["probs"],
                                                     scored["groups"])
            r = entry["metrics"][name]
            self.log(f"{name} on ad {self.date} ({r['rows']:,} rows): logloss {r['logloss']:.4f} "
                     f"AUC {r['auc']:.4f} GAUC {r['gauc']:.4f} over {r['gauc_groups']} users "
                     f"(CTR {r['ctr']:.4f}, mean prediction {r['mean_prediction']:.4f})")
        self.report["metrics"] = entry["metrics"]["actr"]
        self.export(model, entry)

    def export(self, model: CtrModel, entry: dict) -> None:
        """Stages the SavedModel, gates it against the serving version, publishes or rejects."""
        base = os.path.join(self.config.export, "actr")
        files = partition_files(self.work, "ad", [self.date])
        held_out = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        staging = stage_saved_model(model, self.spec, base, held_out, log=self.log)
        serving = versions(base)
        gate = run_gate(model, self.spec, staging,
                        os.path.join(base, str(serving[-1])) if serving else None, held_out,
                        entry["metrics"]["actr"], self.config.gate, self.log)
        self.report["gate"] = entry["gate"] = gate
        if gate["passed"]:
            self.report["export"] = publish(staging, base, self.config.gate.keep_versions, self.log)
        else:
            self.report["rejected"] = reject(staging, base, gate["reasons"], self.log)
        self.report["published"] = gate["passed"]


def _tpm_snapshots(work: str) -> list[str]:
    root = os.path.join(work, "tpm")
    if not os.path.isdir(root):
        return []
    return sorted(m for m in os.listdir(root)
                  if not m.endswith(".tmp") and os.path.exists(os.path.join(root, m, "manifest.json")))
