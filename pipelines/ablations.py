"""The E-CDCTR ablations `compare` runs on ad traffic: which part of the tri-level transfer
buys what. Each ablation is a way to train the ad model from the same days:

- `ad_only`: the ad model alone, from scratch, on the ad window.
- `joint`: one model on the natural CPM window and the ad window mixed.
- `finetune`: a CPM without TPM embeddings, fine-tuned on ad data as is (BatchNorm
  statistics and output bias carried over): plain transfer learning.
- `ecdctr`: the method with the run config's `transfer:` options, exactly as the daily job
  derives it: TPM embeddings → CPM with them → A-CTR from the CPM by name, BatchNorm
  statistics reset and re-estimated on ad data, output prior moved to the ad CTR.
- `ecdctr-no_bn_reinit`: the method without the BatchNorm reset (statistics carried over).
- `ecdctr-no_tpm`: the method without the TPM embeddings.
- `ecdctr-auto`: the method as the daily job derives it with the config's `auto` settings
  (`transfer.tpm: auto`, `model.multi_domain: auto`): one A-CTR per arm, the one kept that
  validates better by a clear margin (pipelines/auto.py); the evidence is in its run's
  `choice`. Its arms are the same fits as `ecdctr` and `ecdctr-no_tpm` of the same seed.
- `ecdctr-no_cpm`: the TPM embeddings but no CPM: the A-CTR trains from scratch on ad data.
- `ecdctr-daily`: the method as the daily job runs it from one CPM: the CPM (and TPM) of the
  ad window's first day, the A-CTR derived from it on the first days, then updated day by day
  over the rest of the window (each day's model starts from the previous day's); with a long
  `actr_days` it is the forgetting check.
- `ecdctr-no_tpm-daily`: `ecdctr-daily` without the TPM embeddings: with `ecdctr-daily`, what
  the historical embeddings do against forgetting under daily updates.
Every run also reports its metrics on two focus groups (FOCUS_GROUPS): the users seen mostly in
natural traffic, where forgetting natural knowledge would show, and the returning users whose
activity is old, whom only long-term (TPM) knowledge describes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator

import numpy as np

from ecdctr.config import RunConfig
from ecdctr.data.vocab import merge_counts
from ecdctr.models.ctr_model import CtrModel, ModelConfig
from ecdctr.spec.feature_spec import Spec
from ecdctr.training.checkpoint import Snapshot
from pipelines import auto, steps, tpm_notes
from pipelines.snapshots import tpm_window

ABLATIONS = ("ad_only", "joint", "finetune", "ecdctr", "ecdctr-no_bn_reinit", "ecdctr-no_tpm",
             "ecdctr-auto", "ecdctr-no_cpm", "ecdctr-daily", "ecdctr-no_tpm-daily")
NATURAL_HEAVY = 10  # a user is natural-heavy with at least this many natural rows per ad row
TPM_PERIOD = {"daily": 1, "weekly": 7, "monthly": 30, "once": 0}  # days between snapshots
RETURNING_GAP = 14  # a returning user was active before, but not in the last this many days
FOCUS_GROUPS = {
    "natural_users": f"users seen mostly in natural traffic (natural rows >= {NATURAL_HEAVY}x ad "
                     f"rows in the windows)",
    "returning_users": f"users whose activity is old: rows (natural or ad) in the long TPM "
                       f"window, none in the last {RETURNING_GAP} days before the evaluation",
}
# The loggers of the steps an ablation trains through: while it trains, only the fits' progress
# lines ("[name] ...") get through; the rest (windows, transfers) would repeat for every seed.
QUIETED_LOGGERS = ("pipelines.steps", "ecdctr.models.ctr_model")


class FitProgressOnly(logging.Filter):
    """Lets through the per-epoch progress of a fit, whose lines start with its name in [ ]."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage().startswith("[")


class Ablations:
    """Trains the ablations of one date through the daily job's steps (pipelines/steps.py);
    TPM and CPM models are trained once per seed and shared by the ablations that use them.
    Windows, vocabularies, snapshots and transfer options are chosen as the daily job chooses
    them on a fresh work folder, so `ecdctr` is the model the daily job would derive on date."""

    def __init__(self, config: RunConfig, spec: Spec, date: dt.date):
        self.config, self.spec, self.date = config, spec, date
        w, work = config.windows, config.work
        self.natural_days = steps.window_days(work, "natural", date, w.cpm_days)
        self.ad_days = steps.window_days(work, "ad", date, w.actr_days)
        if not (self.natural_days and self.ad_days):
            raise ValueError(f"the ablations need natural and ad days before {date}: found "
                             f"{len(self.natural_days)} natural and {len(self.ad_days)} ad days")
        self.shared = steps.shared_parts(work, date, w)
        self.natural = [("natural", d) for d in self.natural_days]
        self.ad = [("ad", d) for d in self.ad_days]
        self.focus_groups = {"natural_users": self._natural_heavy_users(),
                             "returning_users": self._returning_users()}
        self._cache: dict[tuple, object] = {}
        self.quiet = True  # False: every line of the steps, not only the fits' progress

    def _natural_heavy_users(self) -> set[str]:
        group, work = self.spec.group_by, self.config.work
        natural = merge_counts(work, group, self.natural)
        ad = merge_counts(work, group, self.ad)
        return {u for u, n in natural.items() if n >= NATURAL_HEAVY * ad.get(u, 0)}

    def _returning_users(self) -> set[str]:
        w, work, group = self.config.windows, self.config.work, self.spec.group_by
        first = self.date - dt.timedelta(days=w.tpm_days + w.cpm_days)
        recent = self.date - dt.timedelta(days=RETURNING_GAP)
        parts = [(s, d) for s in ("natural", "ad") for d in steps.built_days(work, s, first,
                                                                              self.date)]
        old = merge_counts(work, group, [p for p in parts if p[1] < recent])
        new = merge_counts(work, group, [p for p in parts if p[1] >= recent])
        return set(old) - set(new)

    def _seeded(self, mc: ModelConfig, seed: int) -> ModelConfig:
        return dataclasses.replace(mc, seed=self.config.seed + seed)

    def snapshots(self, seed: int, date: dt.date) -> list[Snapshot]:
        """The TPM snapshots (oldest first) a CPM trained on `date` reads, as the daily job's
        TPM schedule would have left them: up to transfer.tpm_snapshots TPMs trained on
        `date`, `date` - one TPM period (30 days for monthly), ..., each on its own window
        (historical or not), each
        warm-started from the one before when transfer.tpm_warm_start. A TPM whose window
        holds no built day is left out (none at all: no TPM embeddings)."""
        key = ("tpm", seed, date)
        if key not in self._cache:
            t, work = self.config.transfer, self.config.work
            snapshots: list[Snapshot] = []
            previous = None
            period = TPM_PERIOD[self.config.schedule.tpm]
            for k in reversed(range(t.tpm_snapshots if period else min(t.tpm_snapshots, 1))):
                tpm_date = date - dt.timedelta(days=k * period)
                days = steps.built_days(work, "natural", *tpm_window(
                    tpm_date, self.config.windows, t.tpm_historical))
                if not days:
                    continue
                with self._fit_progress_only():
                    trained = steps.train_tpm(self.spec, work, days,
                                              self._seeded(self.config.tpm, seed),
                                              parent=previous if t.tpm_warm_start else None)
                previous = trained
                snapshots.append(Snapshot(f"tpm-{tpm_date}",
                                          steps.tpm_tables(trained, t.tpm_standardize)))
            if not snapshots and t.tpm_snapshots > 0:
                tpm_notes.without_tpm(
                    f"CPM of {date} (seed {seed}) of the E-CDCTR ablations",
                    "the TPM's windows hold no built natural day"
                    + (" (transfer.tpm_historical: they end where the CPM window begins, so "
                       "windows that cover the whole history leave them none)"
                       if t.tpm_historical else ""))
            self._cache[key] = snapshots
        return self._cache[key]

    def cpm(self, seed: int, with_tpm: bool, date: dt.date | None = None,
            multi_domain: str | None = None) -> steps.Trained:
        """The CPM trained on `date` (default: the evaluation day) on the short natural window
        before it, with or without the TPM embeddings (multi_domain: another tower module
        than the config's)."""
        date = date or self.date
        config = self.config.cpm if multi_domain is None else dataclasses.replace(
            self.config.cpm, multi_domain=multi_domain)
        key = ("cpm", seed, with_tpm, date, config.multi_domain)
        if key not in self._cache:
            natural = [("natural", d) for d in steps.window_days(
                self.config.work, "natural", date, self.config.windows.cpm_days)]
            snapshots = self.snapshots(seed, date) if with_tpm else ()
            with self._fit_progress_only():
                self._cache[key] = steps.train_ctr(
                    self.spec, self.config.work, natural, self._seeded(config, seed),
                    kind="cpm", snapshots=snapshots, vocab_parts=self.shared, stats_parts=natural)
        return self._cache[key]

    @contextlib.contextmanager
    def _fit_progress_only(self) -> Iterator[None]:
        """While training: the steps' loggers let through only the fits' progress (quiet)."""
        loggers = [logging.getLogger(name) for name in QUIETED_LOGGERS] if self.quiet else []
        only = FitProgressOnly()
        for quieted in loggers:
            quieted.addFilter(only)
        try:
            yield
        finally:
            for quieted in loggers:
                quieted.removeFilter(only)

    def train(self, name: str, seed: int) -> tuple[CtrModel, dict]:
        """The ad model of one ablation; returns it with its (last) training summary."""
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; known: {list(ABLATIONS)}")
        with self._fit_progress_only():
            return self._train(name, seed)

    def _train(self, name: str, seed: int) -> tuple[CtrModel, dict]:
        mc = self._seeded(self.config.actr, seed)
        work = self.config.work
        if name in ("ad_only", "ecdctr-no_cpm"):
            trained = steps.train_ctr(self.spec, work, self.ad, mc, kind="actr",
                                      snapshots=(self.snapshots(seed, self.date)
                                                 if name != "ad_only" else ()),
                                      vocab_parts=self.shared, stats_parts=self.natural)
            return trained.model, trained.meta["train"]
        if name == "joint":
            trained = steps.train_ctr(self.spec, work, self.natural + self.ad,
                                      self._seeded(self.config.cpm, seed), kind="actr",
                                      vocab_parts=self.shared, stats_parts=self.natural)
            return trained.model, trained.meta["train"]
        transfer = self.config.transfer
        if name == "finetune":  # plain transfer: statistics and output bias carried over
            transfer = dataclasses.replace(transfer, reset_batchnorm=False,
                                           reset_batchnorm_affine=False, shift_output_prior=False)
        elif name == "ecdctr-no_bn_reinit":
            transfer = dataclasses.replace(transfer, reset_batchnorm=False,
                                           reset_batchnorm_affine=False)
        if name == "ecdctr-auto":
            return self._auto(seed)
        with_tpm = name not in ("finetune", "ecdctr-no_tpm", "ecdctr-no_tpm-daily")
        if name in ("ecdctr", "ecdctr-no_tpm"):  # the arms ecdctr-auto chooses between
            trained = self._derived(seed, auto.Arm(with_tpm, self.config.actr.multi_domain))
            return trained.model, trained.meta["train"]
        if not name.endswith("-daily"):
            cpm = self.cpm(seed, with_tpm)
            trained = steps.derive_actr(cpm, self.spec, work, self.ad_days, mc, transfer,
                                        vocab_parts=self.shared)
            return trained.model, trained.meta["train"]
        # as the daily job runs with one CPM: the CPM of the ad window's first day, the A-CTR
        # derived from it on the first days, then updated one new day at a time
        cpm = self.cpm(seed, with_tpm, self.ad_days[0])
        first = 2  # the derivation's days: its validation share, then one update a day
        trained = steps.derive_actr(cpm, self.spec, work, self.ad_days[:first], mc, transfer,
                                    vocab_parts=self.shared)
        for day in self.ad_days[first:]:
            learned = dt.date.fromisoformat(trained.meta["learned_through"])
            new = [d for d in self.ad_days if learned < d <= day]
            trained = steps.update_actr(trained, self.spec, work, new, mc,
                                        vocab_parts=self.shared)
        return trained.model, trained.meta["train"]


    def _derived(self, seed: int, arm: auto.Arm) -> steps.Trained:
        """The A-CTR of one arm derived as the daily job derives it (cached per seed)."""
        key = ("actr", seed, arm)
        if key not in self._cache:
            mc = arm.model(self._seeded(self.config.actr, seed))
            cpm = self.cpm(seed, arm.tpm, multi_domain=arm.multi_domain)
            self._cache[key] = steps.derive_actr(cpm, self.spec, self.config.work, self.ad_days,
                                                 mc, arm.transfer(self.config.transfer),
                                                 vocab_parts=self.shared)
        return self._cache[key]

    def _auto(self, seed: int) -> tuple[CtrModel, dict]:
        """ecdctr-auto: every arm of the config's auto settings derived, the one kept that
        validates better by a clear margin (auto.choose, as daily chooses); the evidence
        goes into the returned training summary as `choice`."""
        if not self.config.auto:
            raise ValueError("ecdctr-auto needs a setting set to auto in the run config. Fix: "
                             "`transfer: {tpm: auto}` and/or `model: {multi_domain: auto}`.")
        arms = auto.arms(self.config)
        derived = {arm.name: self._derived(seed, arm) for arm in arms}
        mc = self._seeded(self.config.actr, seed)
        validation = steps.validation_of(self.spec, self.config.work, self.ad, mc)
        evidence = auto.choose({n: t.model for n, t in derived.items()}, self.spec,
                               self.config.work, validation, self.config.auto)
        chosen = derived[evidence["chosen"]]
        return chosen.model, {**chosen.meta["train"], "choice": evidence}


def focus_rows(groups: np.ndarray, users: set[str]) -> np.ndarray:
    """Boolean mask of the rows whose group (user) is in `users`."""
    return np.array([(g.decode() if isinstance(g, bytes) else str(g)) in users for g in groups],
                    dtype=bool)
