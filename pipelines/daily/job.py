"""The daily job of day D, top-down: build the days it reads, retrain the TPM and the CPM when
their period is due, derive or update the A-CTR of D (which learns through D, less the share of
D's requests it is judged on) and score it on that share, then (the chief) export it, gate it
against the serving version on the same share and publish or reject it. The training itself
lives in pipelines/steps.py, shared with `compare`; pipelines/daily/run.py runs the job."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid

from ecdctr.config import RunConfig
from ecdctr.data.datasets import HeldOut
from ecdctr.data.drift import read_drift
from ecdctr.data.vocab import Partition
from ecdctr.io import storage
from ecdctr.io.jsonio import DamagedFile, read_json, write_json
from ecdctr.io.layout import built_partitions
from ecdctr.models.ctr_model import CtrModel, ModelConfig
from ecdctr.models.sparsity import write_tensorboard
from ecdctr.spec.feature_spec import Spec, feature_diff, feature_fingerprints
from ecdctr.training.checkpoint import (
    META,
    Checkpoint,
    Snapshot,
    load_checkpoint,
    load_snapshot,
    save_checkpoint,
    save_snapshot,
    structure,
)
from ecdctr.training.distribute import Distribution
from pipelines import auto, steps, tpm_notes
from pipelines.build import build
from pipelines.daily import schedule
from pipelines.daily.cluster import ChiefProgress
from pipelines.daily.leftovers import remove_leftovers
from pipelines.daily.model_store import ACTR_KEEP, CPM_KEEP, ModelStore
from pipelines.daily.publish import Candidate, export_candidate
from pipelines.daily.report import (
    DailyError,
    StepRecorder,
    figures_line,
    report_path,
)
from pipelines.daily.watch import watch_served
from pipelines.held_out import Evaluation, evaluation_share, split, unjudgeable
from pipelines.snapshots import choose_snapshots, readable_snapshots, tpm_window

logger = logging.getLogger(__name__)


class DailyJob:
    """The steps of day D for one process. Every task of a cluster runs them: the chief alone
    builds, saves, evaluates, exports and writes the report; the other workers wait for its
    build, train every fit with it and wait for each model it saves before reading it."""

    def __init__(self, config: RunConfig, spec: Spec, date: dt.date, report: dict,
                 force: bool = False, distribution: Distribution | None = None):
        self.config, self.spec, self.date, self.report = config, spec, date, report
        self.work, self.force = config.work, force
        # a fit's backups go to <backup>/<D>/<step>, so no other day's can be restored into it
        self.distribution = distribution.for_run(date.isoformat()) if distribution else None
        self.chief = distribution is None or distribution.is_chief
        path = report_path(config, date)
        # a cluster fails together; a single process degrades (see StepRecorder.degradable)
        self.record = StepRecorder(report, path if self.chief else None,
                                   degrade=distribution is None)
        self.chief_progress = None if self.chief else ChiefProgress(
            path, str(distribution.task), date, config.distribute.wait_seconds, time.time())
        self.tpms = ModelStore(storage.join(self.work, "tpm"))
        self.cpms = ModelStore(storage.join(self.work, "models", "cpm"))
        self.actrs = ModelStore(storage.join(self.work, "models", "actr"))

    def run(self) -> None:
        """build → TPM → CPM → A-CTR → watch (the served version on D) → export (gate, then
        publish or reject)."""
        if self.chief:
            self.remove_leftovers()
        with self.record.step("build") as entry:
            self.build(entry)
        # A failed TPM or CPM degrades the day instead of failing it (one process only; a
        # cluster fails together): the A-CTR fine-tunes from the newest CPM there is.
        with self.record.degradable("tpm") as entry:
            self.tpm(entry)
        with self.record.degradable("cpm") as entry:
            self.cpm(entry)
        try:
            with self.record.step("actr") as entry:
                candidate = self.actr(entry)
        finally:  # the served version is watched whatever became of today's A-CTR
            if self.chief:
                with self.record.observing("watch") as entry:
                    watch_served(entry, self.report, self.config.export, self.work, self.spec,
                                 self.date)
        if self.chief_progress is not None:  # trained with the chief, which alone exports
            self.chief_progress.wait_for_finish()
            return
        with self.record.step("export") as entry:
            self.export(entry, candidate)
        if self.distribution is not None:  # each fit deleted its own backup when it ended
            storage.rmtree(self.distribution.backup)

    # -- build ----------------------------------------------------------------------------
    def build(self, entry: dict) -> None:
        """Builds the days the TPM, CPM and A-CTR windows read that are not built yet, and
        records unreadable input files and data drift; a worker waits for the chief's build."""
        if self.chief_progress is not None:
            self.chief_progress.wait_for_build()
            entry.update(status="skipped", reason="the chief builds")
            return
        w = self.config.windows
        first_tpm = tpm_window(self.date, w, self.config.transfer.tpm_historical)[0]
        start = min(first_tpm, self.date - dt.timedelta(days=max(w.cpm_days, w.actr_days)))
        built = build(self.spec, self.config.logs, self.work, start=start, end=self.date,
                      beam_args=self.config.beam_args, skip_built=True,
                      lock=self.build_lock())
        entry["partitions_built"] = len(built)
        unreadable = [f for stats in built for f in stats.get("unreadable_files", [])]
        if unreadable:  # built without them; each is named in the log and the stats
            entry["unreadable_files"] = unreadable
        drifted = {f"{r['source']} {r['date']}": w for r in built if (w := read_drift(
            self.work, r["source"], dt.date.fromisoformat(r["date"])))}
        if drifted:
            entry["drift"] = drifted

    # -- TPM ------------------------------------------------------------------------------
    def tpm(self, entry: dict) -> None:
        """A TPM snapshot of D's period when due: trained on the long natural window (warm
        from the newest earlier snapshot if transfer.tpm_warm_start), its tables exported."""
        key = self.due("tpm", self.tpms, entry)
        if key is None:
            return
        if key in self.tpms.damaged:  # its period's snapshot is made again
            entry["damaged"] = self.tpms.damaged[key]
        t = self.config.transfer
        if t.tpm_snapshots == 0:
            entry.update(status="skipped", reason="transfer.tpm_snapshots is 0: no TPM")
            return
        first, end = tpm_window(self.date, self.config.windows, t.tpm_historical)
        days = steps.built_days(self.work, "natural", first, end)
        if not days:
            entry.update(status="skipped", reason=f"no built natural day in the TPM window "
                         f"{first}..{end - dt.timedelta(days=1)}")
            logger.info(f"TPM skipped: {entry['reason']} (a CPM then reads no new snapshot)")
            return
        # the parent: the newest snapshot trained on days before this one's window only
        earlier = [(n, m) for n, m in self.tpms.usable(self.date)
                   if n != key and m["window"][1] < days[0].isoformat()]
        parent, fresh = None, []
        if t.tpm_warm_start and (newest := self.tpms.newest(earlier)):
            parent = load_checkpoint(self.tpms.path(newest[0]), self.config.tpm)
            fresh, _ = self.fresh_features(parent.meta, f"TPM warm start from {parent.folder}")
        trained = steps.train_tpm(self.spec, self.work, days, self.config.tpm, parent,
                                  self.board("tpm"), fresh_features=fresh,
                                  distribution=self.distribution)
        folder = self.tpms.path(key)
        if self.chief_progress is not None:
            return self.chief_progress.wait_for_save(folder)
        save_snapshot(folder, trained.model, self.spec, trained.vocabs, trained.meta,
                      steps.tpm_tables(trained, t.tpm_standardize))
        self.tpms.saved(key)
        entry.update(snapshot=folder, train=trained.meta["train"], warm_start=trained.meta["parent"])
        logger.info(f"TPM snapshot {folder} of {trained.meta['window'][0]}..{trained.meta['window'][1]}")
        cpms = self.cpms.complete()
        used = {s["name"] for s in cpms[-1][1]["tpm_snapshots"]} if cpms else set()
        self.tpms.prune(max(t.tpm_snapshots, 1), {key} | used)

    def snapshots_for(self, cpm_first: dt.date, entry: dict) -> list[Snapshot]:
        """The TPM snapshots (oldest first) a CPM whose window starts at cpm_first reads; when
        the run is configured for the TPM and there is none, a warning and entry["tpm"] say why."""
        t = self.config.transfer
        usable = self.tpms.usable(self.date)
        names = choose_snapshots(usable, cpm_first, t.tpm_snapshots, t.tpm_historical)
        loaded = []
        for name in names:
            try:
                loaded.append(load_snapshot(self.tpms.path(name)))
            except DamagedFile as e:  # left out; the TPM step retrains it when due
                self.tpms.mark_damaged(name, str(e))
        snapshots = readable_snapshots(loaded, self.spec)
        if self.tpms.damaged:
            entry["damaged_snapshots"] = dict(sorted(self.tpms.damaged.items()))
        if not snapshots and t.tpm_snapshots > 0:
            entry["tpm"] = tpm_notes.without_tpm("CPM", tpm_notes.no_snapshot_reason(
                usable, cpm_first, t.tpm_historical, len(names), self.tpms.damaged))
        return snapshots

    # -- CPM ------------------------------------------------------------------------------
    def cpm(self, entry: dict) -> None:
        """A CPM of D's period when due: trained on the short natural window with the chosen
        TPM snapshots, warm from the previous CPM (features whose fingerprint changed fresh)."""
        key = self.due("cpm", self.cpms, entry)
        if key is None:
            return
        folder = self.cpms.path(key)
        days = self.window("natural", self.config.windows.cpm_days)
        if not days:
            raise DailyError(f"no built natural days before {self.date} in the CPM window. Fix: "
                             f"put logs under {self.config.logs}/natural/date=YYYY-MM-DD/.")
        snapshots = self.snapshots_for(days[0], entry)
        logger.info(f"CPM on {len(days)} natural days with TPM snapshots "
                 f"{[s.name for s in snapshots] or 'none'}")
        previous = self.cpms.newest([(n, m) for n, m in self.cpms.usable(self.date) if n != key])
        parent, fresh = None, []
        if previous:
            parent = load_checkpoint(self.cpms.path(previous[0]), self.config.cpm)
            fresh, diff = self.fresh_features(parent.meta, f"CPM warm start from {parent.folder}")
            entry["warm_start"] = {"from": parent.folder, **diff}
        else:
            entry["warm_start"] = None
            logger.info("CPM starts fresh: no earlier CPM checkpoint")
        natural = [("natural", d) for d in days]
        trained = steps.train_ctr(self.spec, self.work, natural, self.config.cpm,
                                  kind="cpm", snapshots=snapshots,
                                  vocab_parts=self.shared_partitions(), stats_parts=natural,
                                  parent=parent, fresh_features=fresh, board=self.board("cpm"),
                                  distribution=self.distribution)
        if self.chief_progress is not None:
            return self.chief_progress.wait_for_save(folder)
        if entry["warm_start"]:
            entry["warm_start"].update(trained.meta["transfer"])
        entry["train"] = trained.meta["train"]
        meta = {**trained.meta, "period": key, "schedule": self.config.schedule.cpm,
                "id": f"{key}-{uuid.uuid4().hex[:12]}"}
        arms_root = storage.join(self.work, "models", "cpm_arms")
        if self.config.auto:  # the other arms first: the CPM is whole once it is saved
            meta["arms"] = entry["arms"] = auto.train_cpm_arms(
                self.config, self.spec, natural, snapshots, self.shared_partitions(), folder,
                storage.join(arms_root, key), meta, parent, self.board("cpm"), self.distribution)
        save_checkpoint(folder, trained.model, self.spec, trained.vocabs, meta, trained.snapshots)
        self.cpms.saved(key)
        entry["checkpoint"] = folder
        self.cpms.prune(CPM_KEEP, {key})
        auto.prune_cpm_arms(arms_root, {name for name, _ in self.cpms.complete()})

    # -- A-CTR ----------------------------------------------------------------------------
    def actr(self, entry: dict) -> Candidate | None:
        """The A-CTR of D (see fine_tune), saved and scored with its CPM on D's evaluation
        share (all of D with windows.actr_through_date false); an earlier run's checkpoint of
        the same day, lineage and evaluation share is reused. None on a worker."""
        days = self.actr_window()
        if self.date not in built_partitions(self.work, "ad"):
            raise DailyError(f"ad traffic of {self.date} (the evaluation day) is not built. Fix: "
                             f"put its logs under {self.config.logs}/ad/date={self.date}/.")
        if not days:
            raise DailyError(f"no built ad days before {self.date} in the A-CTR window. Fix: put "
                             f"logs under {self.config.logs}/ad/date=YYYY-MM-DD/.")
        evaluation = self.evaluation()
        if evaluation is not None:
            entry["evaluation"] = evaluation.describe()
        empty = unjudgeable(self.work, ("ad", self.date), evaluation)
        if empty:  # before any training: nothing could judge or gate it
            raise DailyError(empty)
        newest = self.cpms.newest(self.cpms.usable(self.date))
        if newest is None:
            damaged = f" (damaged: {self.cpms.damaged})" if self.cpms.damaged else ""
            raise DailyError(f"no CPM checkpoint trained before {self.date} in {self.cpms.root}"
                             f"{damaged}. Fix: let the cpm step run first.")
        cpm = load_checkpoint(self.cpms.path(newest[0]), self.config.cpm)
        logger.info(f"loaded CPM {cpm.folder}")
        self.note_missing_tpm(entry, cpm)
        folder = self.actrs.path(self.date.isoformat())
        entry["checkpoint"] = folder
        if self.chief_progress is not None:  # trains with the chief, which saves and evaluates
            if not self.resumable(folder, cpm.meta.get("id"), evaluation):
                self.fine_tune(entry, cpm, days, evaluation)
            return None
        if self.resumable(folder, cpm.meta.get("id"), evaluation):
            actr = load_checkpoint(folder, self.config.actr)
            model, meta = actr.model, actr.meta
            entry.update(start=meta["start"], start_reason=meta["start_reason"], resumed=True,
                         train=meta["train"], transfer=meta["transfer"])
            logger.info(f"A-CTR checkpoint {folder} of this day exists (an earlier run of the day "
                        f"trained it {meta['start']}): evaluating and exporting it as it is")
            if "arm" in meta:  # an auto arm: its evidence when this day chose it
                entry["arm"] = meta["arm"]["name"]
                if meta["start"].startswith("re-derived"):
                    self.report["choice"] = entry["choice"] = meta["choice"]
        else:
            trained = self.fine_tune(entry, cpm, days, evaluation)
            model, meta = trained.model, trained.meta
            save_checkpoint(folder, model, self.spec, trained.vocabs, meta, trained.snapshots)
            self.actrs.saved(self.date.isoformat())
            self.actrs.prune(ACTR_KEEP, {self.date.isoformat()})
        if meta.get("cpm_path", cpm.folder) != cpm.folder:  # an auto arm: scored beside its CPM
            cpm = load_checkpoint(meta["cpm_path"], self.config.cpm)
        rows = split(self.spec, self.work, True, evaluation)
        self.evaluate(entry, folder, model, cpm, rows)
        self.report["metrics"] = entry["metrics"]["actr"]
        return Candidate(model, folder, meta, entry["metrics"]["actr"],
                         entry.get("trained_days", []), rows)

    def evaluation(self) -> Evaluation | None:
        """The share of D's ad requests the A-CTR of D never learns from and is judged on;
        None when it does not learn from D (windows.actr_through_date false: judged on all)."""
        w = self.config.windows
        if not w.actr_through_date:
            return None
        evaluation = evaluation_share(self.spec, self.work, ("ad", self.date), w.evaluation_share)
        logger.info(f"A-CTR of {self.date} learns through {self.date} and is judged on "
                    f"{evaluation.share:.0%} of its ad requests ({evaluation.rows:,} rows, "
                    f"{evaluation.clicks:,} clicks) that it never trains on")
        return evaluation

    def evaluate(self, entry: dict, folder: str, actr: CtrModel, cpm: Checkpoint,
                 rows: HeldOut | None) -> None:
        """Scores the A-CTR and its CPM on D's ad traffic (rows: the evaluation share of it),
        into the step's entry and the A-CTR checkpoint's meta.json."""
        entry["metrics"] = {}
        what = "evaluation share of ad" if rows is not None else "ad"
        for name, m, spec in (("actr", actr, self.spec), ("cpm", cpm.model, cpm.spec)):
            r = entry["metrics"][name] = steps.evaluate(m, spec, self.work, [("ad", self.date)],
                                                        held_out=rows)
            logger.info(f"{name} on {what} {self.date} ({r['rows']:,} rows): {figures_line(r)}")
            if "sparsity" in r:  # AdaSparse: achieved sparsity per layer and domain-size bin
                write_tensorboard(self.board(name), int(m.mlp.step), r["sparsity"]["layers"],
                                  r["sparsity"]["bins"], prefix="sparsity_evaluated")
        saved = read_json(storage.join(folder, META))
        saved["metrics"] = {f"{name} on ad {self.date}": r for name, r in entry["metrics"].items()}
        write_json(storage.join(folder, META), saved)

    def resumable(self, folder: str, cpm_id: str | None, evaluation: Evaluation | None) -> bool:
        """True when an earlier (killed) run of this day saved the A-CTR checkpoint that this
        run would train: same CPM, spec, structure and evaluation share; --force trains it
        again."""
        name = storage.basename(folder)
        meta = None if self.force else self.actrs.meta(name)
        if meta is None or self.actrs.newest([(name, meta)]) is None:
            return False
        same = (meta.get("cpm_id") == cpm_id and meta.get("spec_fingerprint") == self.spec.fingerprint
                and meta.get("model") == structure(auto.arm_config(meta, self.config.actr))
                and meta.get("evaluation") == (evaluation.describe() if evaluation else None))
        if not same:
            logger.info(f"A-CTR checkpoint {folder} was trained with another CPM, spec, model "
                        f"structure or evaluation share: training it again")
        return same

    def fine_tune(self, entry: dict, cpm: Checkpoint, days: list[dt.date],
                  evaluation: Evaluation | None) -> steps.Trained:
        """A-CTR of D: updated from the previous day's A-CTR on the ad days it has not learned
        from when it descends from the same CPM, else re-derived from the CPM; never trained
        on the evaluation share of D."""
        cpm_name = storage.basename(cpm.folder)
        earlier = [(n, m) for n, m in self.actrs.complete() if n < self.date.isoformat()]
        previous, previous_meta = self.actrs.newest(earlier) or (None, {})
        cfg = auto.arm_config(previous_meta, self.config.actr)  # an update keeps its arm
        shared = self.actr_vocabulary(days)
        if previous and previous_meta.get("cpm_id") == cpm.meta.get("id"):
            trained, start, reason, diff, train_days = self.update_from(
                previous, previous_meta, cfg, cpm_name, days, shared, evaluation)
        else:
            start = f"re-derived from CPM {cpm.folder}"
            reason = (f"CPM {cpm_name} landed after CPM {previous_meta.get('cpm')} that the "
                      f"previous A-CTR ({previous}) descends from" if previous
                      else "no earlier A-CTR checkpoint")
            fresh, diff = self.fresh_features(cpm.meta, f"A-CTR {start}")
            logger.info(f"A-CTR starts {start} ({reason})")
            if len(cpm.meta.get("arms") or {}) > 1:  # auto: one A-CTR per arm, the better kept
                trained = auto.derive_chosen(cpm, self.config, self.spec, days, shared, fresh,
                                             self.board("actr"), self.distribution, evaluation)
                self.report["choice"] = entry["choice"] = trained.meta["choice"]
            else:
                trained = steps.derive_actr(cpm, self.spec, self.work, days, self.config.actr,
                                            self.config.transfer, vocab_parts=shared,
                                            fresh_features=fresh, board=self.board("actr"),
                                            distribution=self.distribution, evaluation=evaluation)
            train_days = days
        transfer = {**diff, **trained.meta["transfer"]}
        entry.update(start=start, start_reason=reason, transfer=transfer,
                     trained_days=[d.isoformat() for d in train_days
                                   if d.isoformat() <= trained.meta["learned_through"]],
                     train=trained.meta["train"])
        if "arm" in trained.meta:  # auto: the arm the weekly derivation chose, kept by updates
            entry["arm"] = trained.meta["arm"]["name"]
        trained.meta.update(id=f"{self.date.isoformat()}-{uuid.uuid4().hex[:12]}",
                            date=self.date.isoformat(), cpm=cpm_name, cpm_id=cpm.meta.get("id"),
                            cpm_path=trained.meta.get("arm", {}).get("folder", cpm.folder),
                            start=start, start_reason=reason,
                            transfer=transfer,
                            evaluation=evaluation.describe() if evaluation else None)
        return trained

    def update_from(self, previous: str, previous_meta: dict, cfg: ModelConfig, cpm_name: str,
                    days: list[dt.date], shared: list[Partition], evaluation: Evaluation | None
                    ) -> tuple[steps.Trained, str, str, dict, list[dt.date]]:
        """fine_tune's update: the A-CTR of `previous` (it descends from the newest CPM) trained
        on the ad days it has not learned from; returns what fine_tune records of it."""
        source_folder = self.actrs.path(previous)
        yesterday = (self.date - dt.timedelta(days=1)).isoformat()
        start = (f"from yesterday's A-CTR {source_folder}" if previous == yesterday
                 else f"from the A-CTR of {previous} {source_folder} (the newest earlier one)")
        reason = f"it descends from the newest CPM {cpm_name}" + (
            f"; it keeps the arm {previous_meta['arm']['name']} chosen when it was derived"
            if "arm" in previous_meta else "")
        source = load_checkpoint(source_folder, cfg)
        fresh, diff = self.fresh_features(source.meta, f"A-CTR {start}")
        # Only the ad days the previous A-CTR has not learned from: re-reading the whole
        # window every day would be one more epoch over it a day, and overfits the ids.
        seen = dt.date.fromisoformat(source.meta["learned_through"])
        train_days = [d for d in days if d > seen]
        logger.info(f"A-CTR starts {start} ({reason})")
        trained = steps.update_actr(source, self.spec, self.work, train_days, cfg,
                                    vocab_parts=shared, fresh_features=fresh,
                                    board=self.board("actr"),
                                    distribution=self.distribution, evaluation=evaluation,
                                    validate=self.config.transfer.validate_update,
                                    earlier=[d for d in days if d <= seen])
        return trained, start, reason, diff, train_days

    # -- export ---------------------------------------------------------------------------
    def export(self, entry: dict, candidate: Candidate) -> None:
        """Stages, gates and publishes or rejects today's A-CTR (pipelines/daily/publish.py)."""
        export_candidate(candidate, self.config, self.spec, self.date, self.report, entry)

    # -- helpers --------------------------------------------------------------------------
    def note_missing_tpm(self, entry: dict, cpm: Checkpoint) -> None:
        """A warning and entry["tpm"] when the run is configured for the TPM and the A-CTR's
        CPM (whose snapshots it reads) read none."""
        if self.config.transfer.tpm_snapshots > 0 and not cpm.meta.get("tpm_snapshots"):
            entry["tpm"] = tpm_notes.without_tpm("A-CTR", f"its CPM {cpm.folder} read none")

    def due(self, step: str, store: ModelStore, entry: dict) -> str | None:
        """The folder name step must write for D, or None when D's period already has its
        output (the entry then says skipped and why)."""
        place = schedule.due(self.config.schedule, step, self.date, store)
        entry.update(schedule=place.frequency, period=place.period)
        if place.folder is None:
            entry.update(status="skipped", reason=place.reason)
        return place.folder

    def fresh_features(self, source_meta: dict, what: str) -> tuple[list[str], dict]:
        """Features new or changed since a checkpoint was trained (they start fresh in a warm
        start; unchanged ones are restored, removed ones dropped), and the whole diff."""
        diff = feature_diff(source_meta.get("feature_fingerprints", {}),
                            feature_fingerprints(self.spec))
        logger.info(f"{what}: features new {diff['new']}, changed {diff['changed']}, removed "
                    f"{diff['removed']} (new and changed start fresh), restored {diff['restored']}")
        return diff["new"] + diff["changed"], diff

    def window(self, source: str, days: int) -> list[dt.date]:
        """Built days of source in [date - days, date)."""
        return steps.window_days(self.work, source, self.date, days)

    def shared_partitions(self) -> list[Partition]:
        """Where the CPM's and A-CTR's vocabularies and domains come from."""
        return steps.shared_parts(self.work, self.date, self.config.windows)

    def actr_window(self) -> list[dt.date]:
        """The built ad days the A-CTR of D reads: the actr_days through D, or before D with
        windows.actr_through_date false."""
        w = self.config.windows
        return self.window("ad", w.actr_days) if not w.actr_through_date else steps.window_days(
            self.work, "ad", self.date + dt.timedelta(days=1), w.actr_days)

    def actr_vocabulary(self, days: list[dt.date]) -> list[Partition]:
        """Where the A-CTR's vocabularies come from: the shared partitions and its own ad days
        (D too when it learns from D: the build counts ids per day, so an id seen only in the
        evaluation share gets a row no gradient reaches, as an unseen one would be OOV)."""
        shared = self.shared_partitions()
        return shared + [("ad", d) for d in days if ("ad", d) not in shared]

    def board(self, name: str) -> str:
        """The TensorBoard folder of step `name`'s fit of D."""
        return storage.join(self.work, "tensorboard", name, self.date.isoformat())

    def build_lock(self) -> str | None:
        """The build's lock file: <work>/.build.lock for a local work folder (the one a
        standalone `ecdctr build` takes too), else beside the config's `lock`."""
        return self.config.lock + ".build" if storage.is_remote(self.work) else None

    def remove_leftovers(self) -> None:
        """Deletes what killed runs left (pipelines/daily/leftovers.py)."""
        backups = storage.dirname(self.distribution.backup) if self.distribution else None
        remove_leftovers((self.tpms, self.cpms, self.actrs), storage.join(self.config.export, "actr"),
                         storage.join(self.work, "reports"), backups, self.date)
