"""The daily job: build missing days, train TPM/CPM when due, fine-tune A-CTR, evaluate, export.

Day D is the evaluation day: every model trains on days before D and A-CTR is scored on
the ad traffic of D, which it never saw. The run config's `schedule` says how often TPM and
CPM retrain: a step is due when its output for D's period (D's month for a monthly TPM, the
week holding D for a weekly CPM, ...) is missing. A new CPM warm-starts from the previous CPM
(weights by name, embedding rows by token, BatchNorm kept; features whose spec fingerprint
changed start fresh) and reads the chosen TPM snapshots (`transfer:`). The A-CTR of D is
updated from the A-CTR of the day before on the ad days it has not learned from, or is
re-derived from the newest CPM as the `transfer:` options say when there is none or a newer
CPM landed since. The steps themselves live in pipelines/steps.py, shared with `compare`.
Each step's outcome goes to the day's report, rewritten as steps run.

Resumable: outputs are written to `<name>.tmp` folders (exports to a staging folder) and
renamed into place when whole; a killed run leaves only such leftovers, which the next run
deletes under the work lock. A rerun reuses D's A-CTR checkpoint, and every export carries the
id of the checkpoint it came from (assets.extra/actr.json), so a day is never published twice.

Distributed (the config's `distribute:`, ecdctr/training/distribute.py): every task of the cluster
runs this same job. The chief alone takes the work lock, builds, saves checkpoints, evaluates,
exports, gates, publishes, prunes and writes the report; the other workers wait for its build,
train every fit with it, and wait for each model it saves before reading it. With
parameter_server the chief coordinates and the `worker` and `ps` tasks only serve it.

Layout: <work>/tpm/<YYYY-MM or period start>/ (the TPM's model folder plus its exported
<entity>.npy/.keys.json and manifest.json), <work>/models/cpm/<period start>/ and
<work>/models/actr/<D>/: self-describing model folders (ecdctr/training/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import tensorflow as tf

from ecdctr.config import RunConfig
from ecdctr.data.datasets import partition_files
from ecdctr.data.drift import read_drift
from ecdctr.data.vocab import Partition
from ecdctr.io import lock as file_lock
from ecdctr.io import storage
from ecdctr.io.jsonio import json_safe, read_json, write_json
from ecdctr.models.ctr_model import merged_tpm
from ecdctr.serving.export import (
    EXPORT_MARKER,
    REJECTED,
    TIMING_ROWS,
    held,
    publish,
    reject,
    remove_version,
    stage_saved_model,
    unfinished_versions,
    versions,
)
from ecdctr.serving.gate import run_gate
from ecdctr.spec.feature_spec import Spec, feature_diff, feature_fingerprints, load_spec
from ecdctr.training.checkpoint import (
    META,
    Checkpoint,
    Snapshot,
    is_current,
    load_checkpoint,
    load_snapshot,
    save_checkpoint,
    save_snapshot,
    structure,
)
from ecdctr.training.distribute import Distribution, create, serve
from pipelines import steps
from pipelines.build import build, built_partitions

Log = Callable[[str], None]
CPM_KEEP = 4  # newest CPM checkpoints kept
ACTR_KEEP = 7  # newest A-CTR checkpoints kept
_NAME = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")  # snapshot / checkpoint folder names


def report_path(config: RunConfig, date: dt.date) -> str:
    """Where the report of day `date` lives."""
    return storage.join(config.work, "reports", f"{date.isoformat()}.json")


class DailyError(RuntimeError):
    """The daily job cannot run for this date; the message says what is missing."""


def work_lock(path: str) -> contextlib.AbstractContextManager[None]:
    """Refuses a second daily run of the same work folder while one runs (ecdctr.io.lock on
    the config's `lock`, <work>/.daily.lock for a local work folder)."""
    return file_lock.exclusive(path, "another daily run")


def run_daily(config: RunConfig, date: dt.date, log: Log = print, force: bool = False) -> dict:
    """Runs every step due for `date` and writes <work>/reports/<date>.json. A day whose
    report says ok is not run again unless `force`; a day whose run was killed resumes."""
    distribution = create(config.distribute, config.work, log)  # first: before any TF op
    if distribution is not None and not distribution.runs_pipeline:
        serve(distribution, log)  # a parameter_server worker or ps task: until it is stopped
        return {"date": date.isoformat(), "status": "served", "task": str(distribution.task),
                "outcome": "worker"}
    path = report_path(config, date)
    if not force and storage.exists(path) and read_json(path).get("status") == "ok":
        log(f"{date} is done (report {path} says ok); nothing to do. Use --force to run it again.")
        return {**read_json(path), "outcome": "done"}
    spec = load_spec(config.spec)
    report: dict = {"date": date.isoformat(), "config": config.path, "status": "running",
                    "spec_fingerprint": spec.fingerprint, "steps": {}}
    if distribution is not None and not distribution.is_chief:
        report["task"] = str(distribution.task)
        with tracked(report, lambda: log(f"{distribution.task}: {report['status']}")):
            _DailyJob(config, spec, date, report, log, force, distribution).run()
        report["outcome"] = "worker"  # the chief's report and exit code say how the day went
        return report

    def written() -> None:
        report["outcome"] = outcome(report)
        write_json(path, report)
        log(f"report written to {path}")

    with work_lock(config.lock or storage.join(config.work, ".daily.lock")):
        try:
            with tracked(report, written):
                _DailyJob(config, spec, date, report, log, force, distribution).run()
        finally:
            if report["outcome"] in ALERT_ON:
                send_alert(config, report, path, log)
    return report


# What a day's run came to, and the exit code `ecdctr daily` gives it (README "Exit codes").
OUTCOMES = {"published": 0, "failed": 1, "rejected": 3, "done": 4, "degraded": 5, "worker": 0}
ALERT_ON = ("failed", "rejected", "degraded")
ALERT_SECONDS = 120


def outcome(report: dict) -> str:
    """published (a new version is served), degraded (published, but the TPM or CPM step
    failed and the A-CTR used earlier outputs), rejected (the gate kept the candidate out),
    failed (a step failed: see the report) or done (nothing was left to do)."""
    if report.get("status") == "failed":
        return "failed"
    if report.get("status") == "ok":
        if not report.get("published"):
            return "rejected"
        return "degraded" if report.get("degraded") else "published"
    return report.get("outcome", "failed")


def send_alert(config: RunConfig, report: dict, path: str, log: Log) -> None:
    """Runs the config's `alert` command (a shell command line) for a failed or rejected day:
    the report on its standard input and ECDCTR_DATE, ECDCTR_OUTCOME, ECDCTR_REPORT (the
    report's path), ECDCTR_ERROR in its environment. Its own failure is logged, never raised:
    the day's outcome stands."""
    if not config.alert:
        return
    env = {**os.environ, "ECDCTR_DATE": report["date"], "ECDCTR_OUTCOME": report["outcome"],
           "ECDCTR_REPORT": path, "ECDCTR_ERROR": _first_error(report)}
    try:
        done = subprocess.run(["/bin/sh", "-c", config.alert], input=json.dumps(json_safe(report)),
                              text=True, env=env, capture_output=True, timeout=ALERT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as e:
        log(f"error: the alert command failed to run ({e})")
        return
    if done.returncode != 0:
        log(f"error: the alert command exited {done.returncode}: {done.stderr.strip()[-500:]}")
    else:
        log(f"alert sent ({report['outcome']}) by: {config.alert}")


def _first_error(report: dict) -> str:
    for name, step in report.get("steps", {}).items():
        if step.get("status") == "failed":
            return f"{name}: {step.get('error', '')}"[:1000]
    return (report.get("error", "")[:1000] or "; ".join(report.get("degraded", []))[:1000]
            or "; ".join(report.get("gate", {}).get("reasons", [])))


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


class _DailyJob:
    def __init__(self, config: RunConfig, spec: Spec, date: dt.date, report: dict, log: Log,
                 force: bool = False, distribution: Distribution | None = None):
        self.config, self.spec, self.date, self.report, self.log = config, spec, date, report, log
        self.work, self.force = config.work, force
        # a fit's backups go to <backup>/<D>/<step>, so no other day's can be restored into it
        self.distribution = distribution.for_run(date.isoformat()) if distribution else None
        self.chief = distribution is None or distribution.is_chief
        self.started = time.time()
        self.cpm_root = storage.join(self.work, "models", "cpm")
        self.actr_root = storage.join(self.work, "models", "actr")
        self.tpm_root = storage.join(self.work, "tpm")
        self.export_base = storage.join(config.export, "actr")
        self.actr_model = None
        self.legacy: set[tuple[str, str]] = set()  # model folders of an older format, logged once
        self.actr_meta: dict = {}
        self.actr_folder = ""

    def run(self) -> None:
        if self.chief:
            self.remove_leftovers()
        with self.step("build") as s:
            if not self.chief:
                self.wait_for_build(s)
            else:
                w = self.config.windows
                first_tpm = steps.tpm_window(self.date, w, self.config.transfer.tpm_historical)[0]
                start = min(first_tpm,
                            self.date - dt.timedelta(days=max(w.cpm_days, w.actr_days)))
                built = build(self.spec, self.config.logs, self.work, start=start, end=self.date,
                              beam_args=self.config.beam_args, skip_built=True, log=self.log,
                              lock=self.build_lock())
                s["partitions_built"] = len(built)
                unreadable = [f for stats in built for f in stats.get("unreadable_files", [])]
                if unreadable:  # built without them; each is named in the log and the stats
                    s["unreadable_files"] = unreadable
                drifted = {f"{r['source']} {r['date']}": w for r in built if (w := read_drift(
                    self.work, r["source"], dt.date.fromisoformat(r["date"])))}
                if drifted:
                    s["drift"] = drifted
        # A failed TPM or CPM degrades the day instead of failing it (one process only; a
        # cluster fails together): the A-CTR fine-tunes from the newest CPM there is.
        with self.degradable("tpm") as s:
            self.tpm(s)
        with self.degradable("cpm") as s:
            self.cpm(s)
        with self.step("actr") as s:
            self.actr(s)
        if self.chief:  # the others trained with it; the chief alone exports
            with self.step("export") as s:
                self.export(s)
            if self.distribution is not None:  # each fit deleted its own backup when it ended
                storage.rmtree(self.distribution.backup)
        else:  # a worker that leaves first looks like a crash to the cluster's health checks
            self.wait(f"finish {self.date}", self.chief_done)

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

    @contextlib.contextmanager
    def degradable(self, name: str) -> Iterator[dict]:
        """A step whose failure is logged and recorded in report["degraded"] rather than
        raised, so the day goes on with the outputs of earlier days."""
        try:
            with self.step(name) as entry:
                yield entry
        except Exception as e:  # noqa: BLE001  (recorded in the report, the day goes on)
            if self.distribution is not None:
                raise
            reason = f"{name} failed ({type(e).__name__}: {e}); the A-CTR uses the newest earlier output"
            self.report.setdefault("degraded", []).append(reason)
            self.log(f"error: {reason}")
            self.save_report()

    def save_report(self) -> None:
        """The report so far (status "running"): shows how far a killed run got (the chief's)."""
        if self.chief:
            write_json(report_path(self.config, self.date), self.report)

    # -- a worker that is not the chief ---------------------------------------------------
    def wait(self, what: str, ready: Callable[[], bool]) -> None:
        """Polls until ready() (a non-chief worker waiting for the chief), at most
        distribute.wait_seconds; a chief's report that says failed ends the wait."""
        limit = self.config.distribute.wait_seconds
        started = time.perf_counter()
        self.log(f"{self.distribution.task}: waiting for the chief to {what}")
        while not ready():
            path = report_path(self.config, self.date)
            if storage.exists(path) and storage.mtime(path) >= self.started:
                status = read_json(path).get("status")
                if status == "failed":
                    raise DailyError(f"the chief's run of {self.date} failed ({path}) while "
                                     f"this worker waited for it to {what}")
            if time.perf_counter() - started > limit:
                raise DailyError(f"{self.distribution.task} waited {limit}s for the chief to "
                                 f"{what}. Fix: check the chief's log (task chief, or worker 0 "
                                 f"without one); raise distribute.wait_seconds if it is slow.")
            time.sleep(1.0)

    def chief_done(self) -> bool:
        """True when the chief's report of D, written since this run began, says ok."""
        path = report_path(self.config, self.date)
        return (storage.exists(path) and storage.mtime(path) >= self.started
                and read_json(path).get("status") == "ok")

    def wait_for_build(self, entry: dict) -> None:
        """A worker's build step: the chief's report of D says its build is done."""
        path = report_path(self.config, self.date)

        def built() -> bool:
            try:
                return read_json(path)["steps"]["build"]["status"] == "ok"
            except (OSError, ValueError, KeyError, TypeError):
                return False

        self.wait(f"build the days before {self.date} ({path} says build ok)", built)
        entry.update(status="skipped", reason="the chief builds")

    def saved_by_chief(self, folder: str) -> None:
        """A non-chief worker reads the chief's copy of a model it trained with it."""
        if not self.chief:
            self.wait(f"save {folder}", lambda: storage.exists(storage.join(folder, META)))

    def remove_leftovers(self) -> None:
        """Deletes what killed runs left: unfinished `.tmp` folders, the Beam build's staging
        (when no build runs), export staging folders and report temp files of dead processes.
        Runs under the work lock, so no other daily run is writing them."""
        for root in (self.tpm_root, self.cpm_root, self.actr_root):
            for name in storage.listdir(root):
                if name.endswith(".tmp"):
                    self.log(f"removing leftovers of an interrupted run: {storage.join(root, name)}")
                    storage.rmtree(storage.join(root, name))
                for leftover in storage.listdir(storage.join(root, name)):  # a killed metrics update
                    if leftover.startswith(f"{META}.tmp-"):
                        storage.remove(storage.join(root, name, leftover))
        # (a Beam build deletes its own unfinished staging under <work>/.staging when it
        # starts, under the build lock: see pipelines/build.py)
        for path in unfinished_versions(self.export_base):
            self.log(f"removing a version whose publish was interrupted: {path}")
            remove_version(path)
        if self.distribution is not None:  # backups of other days' fits cannot be resumed
            backups = storage.dirname(self.distribution.backup)
            for name in storage.listdir(backups):
                if name != self.date.isoformat():
                    self.log(f"removing the backup of an interrupted run of {name}: "
                             f"{storage.join(backups, name)}")
                    storage.rmtree(storage.join(backups, name))
        for folder, prefix in ((self.export_base, ".staging-"),
                               (storage.join(self.work, "reports"), "")):
            for name in storage.listdir(folder):
                if name.startswith(prefix) and re.search(r"[.-]tmp-\d+$|^\.staging-.*-\d+$", name):
                    pid = int(name.rsplit("-", 1)[1])
                    if pid != os.getpid() and not _alive(pid):
                        path = storage.join(folder, name)
                        self.log(f"removing leftovers of an interrupted run: {path}")
                        storage.rmtree(path)

    def build_lock(self) -> str | None:
        """The build's lock file: <work>/.build.lock for a local work folder (the one a
        standalone `ecdctr build` takes too), else beside the config's `lock`."""
        return self.config.lock + ".build" if storage.is_remote(self.work) else None

    # -- data -----------------------------------------------------------------------------
    def window(self, source: str, days: int) -> list[dt.date]:
        """Built days of source in [date - days, date)."""
        return steps.window_days(self.work, source, self.date, days)

    def shared_partitions(self) -> list[Partition]:
        return steps.shared_parts(self.work, self.date, self.config.windows)

    def board(self, name: str) -> str:
        return storage.join(self.work, "tensorboard", name, self.date.isoformat())

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
                existing = storage.join(root, usable[-1][0])
                entry.update(status="skipped", reason=f"{existing} exists (schedule once)")
                return None
            return self.date.isoformat()
        if any(name == key for name, _ in self.complete(root, marker)):
            entry.update(status="skipped",
                         reason=f"{storage.join(root, key)} exists ({frequency} period {key})")
            return None
        return key

    def complete(self, root: str, marker: str) -> list[tuple[str, dict]]:
        """(name, meta) of the whole outputs under root, oldest first (by the last day they
        were trained on, then name)."""
        found = [(name, read_json(storage.join(root, name, marker))) for name in storage.listdir(root)
                 if _NAME.match(name) and storage.exists(storage.join(root, name, marker))]
        for name, meta in found:
            if not is_current(meta) and (root, name) not in self.legacy:
                self.legacy.add((root, name))
                self.log(f"{storage.join(root, name)} was written by an older ecdctr and cannot "
                         f"be rebuilt: ignored (retrained when due; delete it to free the disk)")
        found = [(name, meta) for name, meta in found if is_current(meta)]
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
            folder = storage.join(root, name)
            if storage.renames_atomically(folder):
                trash = folder + ".tmp"
                storage.rmtree(trash)
                storage.rename(folder, trash)
                storage.rmtree(trash)
            else:  # without its meta.json first, nothing reads it as whole while it goes
                storage.remove(storage.join(folder, META))
                storage.rmtree(folder)
            self.log(f"removed old {storage.join(root, name)}")

    def fresh_features(self, source_meta: dict, what: str) -> tuple[list[str], dict]:
        """Features new or changed since a checkpoint was trained (they start fresh in a warm
        start; unchanged ones are restored, removed ones dropped), and the whole diff."""
        diff = feature_diff(source_meta.get("feature_fingerprints", {}),
                            feature_fingerprints(self.spec))
        self.log(f"{what}: features new {diff['new']}, changed {diff['changed']}, removed "
                 f"{diff['removed']} (new and changed start fresh), restored {diff['restored']}")
        return diff["new"] + diff["changed"], diff

    # -- TPM ------------------------------------------------------------------------------
    def tpm(self, entry: dict) -> None:
        key = self.due("tpm", self.tpm_root, META, entry)
        if key is None:
            return
        t = self.config.transfer
        if t.tpm_snapshots == 0:
            entry.update(status="skipped", reason="transfer.tpm_snapshots is 0: no TPM")
            return
        first, end = steps.tpm_window(self.date, self.config.windows, t.tpm_historical)
        days = steps.built_days(self.work, "natural", first, end)
        if not days:
            entry.update(status="skipped", reason=f"no built natural day in the TPM window "
                         f"{first}..{end - dt.timedelta(days=1)}")
            self.log(f"TPM skipped: {entry['reason']} (a CPM then reads no new snapshot)")
            return
        # the parent: the newest snapshot trained on days before this one's window only
        earlier = [n for n, m in self.usable(self.tpm_root, META)
                   if n != key and m["window"][1] < days[0].isoformat()]
        parent, fresh = None, []
        if t.tpm_warm_start and earlier:
            parent = load_checkpoint(storage.join(self.tpm_root, earlier[-1]), self.config.tpm)
            fresh, _ = self.fresh_features(parent.meta, f"TPM warm start from {parent.folder}")
        trained = steps.train_tpm(self.spec, self.work, days, self.config.tpm, self.log, parent,
                                  self.board("tpm"), fresh_features=fresh,
                                  distribution=self.distribution)
        folder = storage.join(self.tpm_root, key)
        if not self.chief:
            return self.saved_by_chief(folder)
        save_snapshot(folder, trained.model, self.spec, trained.vocabs, trained.meta,
                      steps.tpm_tables(trained, t.tpm_standardize))
        entry.update(snapshot=folder, train=trained.meta["train"], warm_start=trained.meta["parent"])
        self.log(f"TPM snapshot {folder} of {trained.meta['window'][0]}..{trained.meta['window'][1]}")
        cpms = self.complete(self.cpm_root, META)
        used = {s["name"] for s in cpms[-1][1]["tpm_snapshots"]} if cpms else set()
        self.prune(self.tpm_root, META, max(t.tpm_snapshots, 1), {key} | used)

    def snapshots_for(self, cpm_first: dt.date) -> list[Snapshot]:
        """The TPM snapshots (oldest first) a CPM whose window starts at cpm_first reads."""
        t = self.config.transfer
        names = steps.choose_snapshots(self.usable(self.tpm_root, META), cpm_first,
                                       t.tpm_snapshots, t.tpm_historical)
        return steps.readable_snapshots([load_snapshot(storage.join(self.tpm_root, n))
                                         for n in names], self.spec, self.log)

    # -- CPM ------------------------------------------------------------------------------
    def cpm(self, entry: dict) -> None:
        key = self.due("cpm", self.cpm_root, META, entry)
        if key is None:
            return
        folder = storage.join(self.cpm_root, key)
        days = self.window("natural", self.config.windows.cpm_days)
        if not days:
            raise DailyError(f"no built natural days before {self.date} in the CPM window. Fix: "
                             f"put logs under {self.config.logs}/natural/date=YYYY-MM-DD/.")
        snapshots = self.snapshots_for(days[0])
        self.log(f"CPM on {len(days)} natural days with TPM snapshots "
                 f"{[s.name for s in snapshots] or 'none'}")
        previous = [name for name, _ in self.usable(self.cpm_root, META) if name != key]
        parent, fresh = None, []
        if previous:
            parent = load_checkpoint(storage.join(self.cpm_root, previous[-1]), self.config.cpm)
            fresh, diff = self.fresh_features(parent.meta, f"CPM warm start from {parent.folder}")
            entry["warm_start"] = {"from": parent.folder, **diff}
        else:
            entry["warm_start"] = None
            self.log("CPM starts fresh: no earlier CPM checkpoint")
        natural = [("natural", d) for d in days]
        trained = steps.train_ctr(self.spec, self.work, natural, self.config.cpm, self.log,
                                  kind="cpm", snapshots=snapshots,
                                  vocab_parts=self.shared_partitions(), stats_parts=natural,
                                  parent=parent, fresh_features=fresh, board=self.board("cpm"),
                                  distribution=self.distribution)
        if not self.chief:
            return self.saved_by_chief(folder)
        if entry["warm_start"]:
            entry["warm_start"].update(trained.meta["transfer"])
        entry["train"] = trained.meta["train"]
        save_checkpoint(folder, trained.model, self.spec, trained.vocabs,
                        {**trained.meta, "period": key, "schedule": self.config.schedule.cpm,
                         "id": f"{key}-{uuid.uuid4().hex[:12]}"},
                        trained.snapshots)
        entry["checkpoint"] = folder
        self.prune(self.cpm_root, META, CPM_KEEP, {key})

    # -- A-CTR ----------------------------------------------------------------------------
    def actr(self, entry: dict) -> None:
        cfg = self.config.actr
        days = self.window("ad", self.config.windows.actr_days)
        if self.date not in built_partitions(self.work, "ad"):
            raise DailyError(f"ad traffic of {self.date} (the evaluation day) is not built. Fix: "
                             f"put its logs under {self.config.logs}/ad/date={self.date}/.")
        if not days:
            raise DailyError(f"no built ad days before {self.date} in the A-CTR window. Fix: put "
                             f"logs under {self.config.logs}/ad/date=YYYY-MM-DD/.")
        cpms = self.usable(self.cpm_root, META)
        if not cpms:
            raise DailyError(f"no CPM checkpoint trained before {self.date} in {self.cpm_root}. "
                             f"Fix: let the cpm step run first.")
        cpm_name = cpms[-1][0]
        cpm = load_checkpoint(storage.join(self.cpm_root, cpm_name), self.config.cpm)
        self.log(f"loaded CPM {cpm.folder}")
        folder = storage.join(self.actr_root, self.date.isoformat())
        entry["checkpoint"] = folder
        if not self.chief:  # trains with the chief; the chief saves, evaluates and exports
            if not self.resumable(folder, cpm.meta.get("id")):
                self.fine_tune(entry, cpm, days)
            return
        if self.resumable(folder, cpm.meta.get("id")):
            actr = load_checkpoint(folder, cfg)
            model, meta = actr.model, actr.meta
            entry.update(start=meta["start"], start_reason=meta["start_reason"], resumed=True,
                         train=meta["train"], transfer=meta["transfer"])
            self.log(f"A-CTR checkpoint {folder} of this day exists (an earlier run of the day "
                     f"trained it {meta['start']}): evaluating and exporting it as it is")
        else:
            trained = self.fine_tune(entry, cpm, days)
            model, meta = trained.model, trained.meta
            save_checkpoint(folder, model, self.spec, trained.vocabs, meta, trained.snapshots)
            self.prune(self.actr_root, META, ACTR_KEEP, {self.date.isoformat()})
        entry["metrics"] = {}
        for name, m, spec in (("actr", model, self.spec), ("cpm", cpm.model, cpm.spec)):
            r = entry["metrics"][name] = steps.evaluate(m, spec, self.work, [("ad", self.date)])
            self.log(f"{name} on ad {self.date} ({r['rows']:,} rows): logloss {r['logloss']:.4f} "
                     f"AUC {r['auc']:.4f} GAUC {r['gauc']:.4f} over {r['gauc_groups']} users "
                     f"(CTR {r['ctr']:.4f}, mean prediction {r['mean_prediction']:.4f})")
        saved = read_json(storage.join(folder, META))
        saved["metrics"] = {f"{name} on ad {self.date}": r for name, r in entry["metrics"].items()}
        write_json(storage.join(folder, META), saved)
        self.report["metrics"] = entry["metrics"]["actr"]
        self.actr_model, self.actr_meta, self.actr_folder = model, meta, folder

    def resumable(self, folder: str, cpm_id: str | None) -> bool:
        """True when an earlier (killed) run of this day saved the A-CTR checkpoint that this
        run would train: same CPM, spec and structure; --force trains it again."""
        if self.force or not storage.exists(storage.join(folder, META)):
            return False
        meta = read_json(storage.join(folder, META))
        same = (meta.get("cpm_id") == cpm_id and meta.get("spec_fingerprint") == self.spec.fingerprint
                and meta.get("model") == structure(self.config.actr))
        if not same:
            self.log(f"A-CTR checkpoint {folder} was trained with another CPM, spec or model "
                     f"structure: training it again")
        return same

    def fine_tune(self, entry: dict, cpm: Checkpoint, days: list[dt.date]) -> steps.Trained:
        """A-CTR of D: updated from the previous day's A-CTR on the ad days it has not learned
        from when it descends from the same CPM, else re-derived from the CPM."""
        cfg = self.config.actr
        cpm_name = storage.basename(cpm.folder)
        earlier = [(n, m) for n, m in self.complete(self.actr_root, META)
                   if n < self.date.isoformat()]
        previous, previous_meta = earlier[-1] if earlier else (None, {})
        shared = self.shared_partitions()
        if previous and previous_meta.get("cpm_id") == cpm.meta.get("id"):
            source_folder = storage.join(self.actr_root, previous)
            yesterday = (self.date - dt.timedelta(days=1)).isoformat()
            start = (f"from yesterday's A-CTR {source_folder}" if previous == yesterday
                     else f"from the A-CTR of {previous} {source_folder} (the newest earlier one)")
            reason = f"it descends from the newest CPM {cpm_name}"
            source = load_checkpoint(source_folder, cfg)
            fresh, diff = self.fresh_features(source.meta, f"A-CTR {start}")
            # Only the ad days the previous A-CTR has not learned from: re-reading the whole
            # window every day would be one more epoch over it a day, and overfits the ids.
            seen = dt.date.fromisoformat(source.meta["learned_through"])
            train_days = [d for d in days if d > seen]
            self.log(f"A-CTR starts {start} ({reason})")
            trained = steps.update_actr(source, self.spec, self.work, train_days, cfg, self.log,
                                        vocab_parts=shared, fresh_features=fresh,
                                        board=self.board("actr"),
                                        distribution=self.distribution)
        else:
            start = f"re-derived from CPM {cpm.folder}"
            reason = (f"CPM {cpm_name} landed after CPM {previous_meta.get('cpm')} that the "
                      f"previous A-CTR ({previous}) descends from" if previous
                      else "no earlier A-CTR checkpoint")
            fresh, diff = self.fresh_features(cpm.meta, f"A-CTR {start}")
            self.log(f"A-CTR starts {start} ({reason})")
            trained = steps.derive_actr(cpm, self.spec, self.work, days, cfg,
                                        self.config.transfer, self.log, vocab_parts=shared,
                                        fresh_features=fresh, board=self.board("actr"),
                                        distribution=self.distribution)
            train_days = days
        transfer = {**diff, **trained.meta["transfer"]}
        entry.update(start=start, start_reason=reason, transfer=transfer,
                     trained_days=[d.isoformat() for d in train_days
                                   if d.isoformat() <= trained.meta["learned_through"]],
                     train=trained.meta["train"])
        trained.meta.update(id=f"{self.date.isoformat()}-{uuid.uuid4().hex[:12]}",
                            date=self.date.isoformat(), cpm=cpm_name, cpm_id=cpm.meta.get("id"),
                            cpm_path=cpm.folder,
                            start=start, start_reason=reason, transfer=transfer)
        return trained

    # -- export ---------------------------------------------------------------------------
    def export(self, entry: dict) -> None:
        """Stages the SavedModel, gates it against the serving version, publishes or rejects;
        a checkpoint an interrupted run already published (or rejected) is not exported again."""
        base, meta = self.export_base, self.actr_meta
        done = _exported(base, meta["id"])
        if done:
            path, marker = done
            published = storage.dirname(path) == base
            self.log(f"{path} was already exported from checkpoint {self.actr_folder} by an "
                     f"interrupted run of this day; not exporting again")
            entry["reused"] = path
            self.report["gate"] = entry["gate"] = marker["gate"]
            self.report["export" if published else "rejected"] = path
            self.report["published"] = published
            return
        held_out = partition_files(self.work, "ad", [self.date])
        timing = [r.numpy() for r in
                  tf.data.TFRecordDataset(held_out, compression_type="GZIP").take(TIMING_ROWS)]
        with merged_tpm(self.actr_model):  # serving does one lookup per entity, no attention
            staging = stage_saved_model(self.actr_model, self.spec, base, timing, log=self.log)
        serving = versions(base)
        gate = run_gate(self.actr_model, self.spec, staging,
                        storage.join(base, str(serving[-1])) if serving else None, held_out,
                        self.report["steps"]["actr"]["metrics"]["actr"], self.config.gate,
                        self.log)
        for reason in self.operational_reasons():
            gate["passed"] = False
            gate["reasons"].append(reason)
            self.log(f"not publishing: {reason}")
        self.report["gate"] = entry["gate"] = gate
        write_json(storage.join(staging, "assets.extra", EXPORT_MARKER),
                   {"date": self.date.isoformat(), "checkpoint": self.actr_folder,
                    "checkpoint_id": meta["id"], "gate": gate})
        if gate["passed"]:
            self.report["export"] = publish(staging, base, self.config.gate.keep_versions, self.log)
        else:
            self.report["rejected"] = reject(staging, base, gate["reasons"], self.log)
        self.report["published"] = gate["passed"]


    def operational_reasons(self) -> list[str]:
        """Reasons beyond the model gate not to publish today's candidate: data drift on the ad
        days the A-CTR learned in this run, and a rollback an operator put in force."""
        reasons = []
        learned = self.report["steps"]["actr"].get("trained_days", [])
        drifted = {d: w for d in learned if (w := read_drift(self.work, "ad", dt.date.fromisoformat(d)))}
        if sum(len(w) for w in drifted.values()) > self.config.gate.max_drift:
            reasons.append(
                f"the A-CTR learned from days with data drift ({drifted}); gate.max_drift is "
                f"{self.config.gate.max_drift}. Fix: check those days' logs; rebuild them once "
                f"fixed, or raise gate.max_drift if the change is real")
        hold = held(self.export_base)
        if hold:  # an operator rolled back: nothing new is served until they release it
            reasons.append(
                f"a rollback to version {hold['to']} (served as version {hold['version']}) is in "
                f"force since {hold['at']}. Fix: once the cause is fixed, `ecdctr rollback "
                f"--export={self.config.export} --release`, and the next run publishes again")
        return reasons


def _exported(base: str, checkpoint_id: str) -> tuple[str, dict] | None:
    """(path, marker) of the published or rejected export of a checkpoint, if there is one."""
    candidates = [storage.join(base, str(v)) for v in versions(base)]
    candidates += [storage.join(base, REJECTED, n) for n in storage.listdir(storage.join(base, REJECTED))]
    for path in candidates:
        marker = storage.join(path, "assets.extra", EXPORT_MARKER)
        if storage.exists(marker):
            body = read_json(marker)
            if body.get("checkpoint_id") == checkpoint_id:
                return path, body
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
