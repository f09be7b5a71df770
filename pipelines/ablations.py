"""The E-CDCTR ablations `compare` runs on ad traffic: which part of the tri-level transfer
buys what. Each ablation is a way to train the ad model from the same days:

- `ad_only`: the ad model alone, from scratch, on the ad window.
- `joint`: one model on the natural CPM window and the ad window mixed.
- `finetune`: a CPM without TPM embeddings, fine-tuned on ad data as is (BatchNorm
  statistics and output bias carried over): plain transfer learning.
- `ecdctr`: the method: TPM embeddings → CPM with them → A-CTR from the CPM by name, BatchNorm
  statistics reset and re-estimated on ad data, output prior moved to the ad CTR.
- `ecdctr-no_bn_reinit`: the method without the BatchNorm reset (statistics carried over).
- `ecdctr-no_tpm`: the method without the TPM embeddings.
- `ecdctr-no_cpm`: the TPM embeddings but no CPM: the A-CTR trains from scratch on ad data.
- `ecdctr-daily`: the method, but the A-CTR fine-tuned day by day over the ad window (each
  day's model starts from the previous day's), as the daily job does; with `ecdctr` it is
  the forgetting check.
Every run also reports its metrics on the users seen mostly in natural traffic (natural rows
>= 10x ad rows in the windows), where forgetting natural knowledge would show.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from ecdctr.config import RunConfig
from ecdctr.data import make_dataset, partition_files
from ecdctr.models import (
    CtrModel,
    ModelConfig,
    build_model,
    embedding_table,
    shift_output_prior,
    transfer_weights,
)
from ecdctr.spec import Spec
from ecdctr.training import fit, recalibrate_batchnorm
from ecdctr.vocab import build_vocabularies, domain_sizes, merge_counts, numeric_stats, traffic
from pipelines.build import built_partitions

ABLATIONS = ("ad_only", "joint", "finetune", "ecdctr", "ecdctr-no_bn_reinit", "ecdctr-no_tpm",
             "ecdctr-no_cpm", "ecdctr-daily")
NATURAL_HEAVY = 10  # a user is natural-heavy with at least this many natural rows per ad row
Log = Callable[[str], None]


class Ablations:
    """Trains the ablations of one date; TPM and CPM models are trained once per seed and
    shared by the ablations that use them."""

    def __init__(self, config: RunConfig, spec: Spec, date: dt.date, log: Log = print):
        self.config, self.spec, self.date, self.log = config, spec, date, log
        w = config.windows
        self.tpm_days = self._days("natural", w.tpm_days)
        self.natural_days = self._days("natural", w.cpm_days)
        self.ad_days = self._days("ad", w.actr_days)
        if not (self.tpm_days and self.natural_days and self.ad_days):
            raise ValueError(f"the ablations need natural and ad days before {date}: found "
                             f"{len(self.natural_days)} natural and {len(self.ad_days)} ad days")
        parts = [("natural", d) for d in self.natural_days] + [("ad", d) for d in self.ad_days]
        self.vocabs = build_vocabularies(spec, config.work, parts)
        self.domains = list(domain_sizes(config.work, parts))
        self.stats = numeric_stats(spec, config.work, [("natural", d) for d in self.natural_days])
        self.natural_ctr = self._ctr("natural", self.natural_days)
        self.ad_ctr = self._ctr("ad", self.ad_days)
        self.natural_heavy_users = self._natural_heavy_users()
        self._cache: dict[tuple, object] = {}

    def _days(self, source: str, days: int) -> list[dt.date]:
        first = self.date - dt.timedelta(days=days)
        return [d for d in built_partitions(self.config.work, source) if first <= d < self.date]

    def _ctr(self, source: str, days: list[dt.date]) -> float:
        return traffic(self.config.work, [(source, d) for d in days])[1]

    def _natural_heavy_users(self) -> set[str]:
        group = self.spec.group_by
        natural = merge_counts(self.config.work, group, [("natural", d) for d in self.natural_days])
        ad = merge_counts(self.config.work, group, [("ad", d) for d in self.ad_days])
        return {u for u, n in natural.items() if n >= NATURAL_HEAVY * ad.get(u, 0)}

    def _dataset(self, parts: list[tuple[str, dt.date]], mc: ModelConfig) -> tf.data.Dataset:
        files = [f for source, d in parts for f in partition_files(self.config.work, source, [d])]
        return make_dataset(self.spec, files, mc.batch_size, shuffle=True, seed=mc.seed)

    def _train(self, model: CtrModel, parts: list[tuple[str, dt.date]], mc: ModelConfig,
               name: str) -> dict:
        return fit(model, self._dataset(parts, mc), mc.epochs, mc.batch_size, name, self.log,
                   rows=traffic(self.config.work, parts)[0])

    def _model(self, mc: ModelConfig, parts: list[tuple[str, dt.date]], tables: dict | None,
               ctr: float, name: str) -> CtrModel:
        example = next(iter(self._dataset(parts, mc)))[0]
        return build_model(self.spec.features, self.vocabs, self.stats, mc, example, tables, ctr,
                           self.domains, name=name)

    def _seeded(self, mc: ModelConfig, seed: int) -> ModelConfig:
        return dataclasses.replace(mc, seed=self.config.seed + seed)

    def tpm_tables(self, seed: int) -> dict:
        """The TPM trained on the long natural window: its entity embedding tables."""
        key = ("tpm", seed)
        if key not in self._cache:
            mc = self._seeded(self.config.tpm, seed)
            parts = [("natural", d) for d in self.tpm_days]
            vocabs = build_vocabularies(self.spec, self.config.work, parts)
            example = next(iter(self._dataset(parts, mc)))[0]
            tpm = build_model(self.spec.tpm_features, vocabs, self.stats, mc, example,
                              initial_ctr=self._ctr("natural", self.tpm_days), name="tpm")
            self._train(tpm, parts, mc, f"tpm seed {seed}")
            self._cache[key] = {f.name: embedding_table(tpm, f.name)
                                for f in self.spec.entities.values()}
        return self._cache[key]

    def cpm(self, seed: int, with_tpm: bool) -> CtrModel:
        """The CPM on the short natural window (with or without the TPM embeddings)."""
        key = ("cpm", seed, with_tpm)
        if key not in self._cache:
            mc = self._seeded(self.config.cpm, seed)
            parts = [("natural", d) for d in self.natural_days]
            tables = self.tpm_tables(seed) if with_tpm else None
            model = self._model(mc, parts, tables, self.natural_ctr, "cpm")
            self._train(model, parts, mc, f"cpm{'' if with_tpm else ' (no TPM)'} seed {seed}")
            recalibrate_batchnorm(model, self._dataset(parts, mc), log=lambda _: None)
            self._cache[key] = model
        return self._cache[key]

    def train(self, name: str, seed: int) -> tuple[CtrModel, dict]:
        """The ad model of one ablation; returns it with its (last) training summary."""
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; known: {list(ABLATIONS)}")
        mc = self._seeded(self.config.actr, seed)
        ad = [("ad", d) for d in self.ad_days]
        if name == "ad_only":
            model = self._model(mc, ad, None, self.ad_ctr, "actr")
            return model, self._finish(model, ad, mc, name, seed)
        if name == "joint":
            mixed = [("natural", d) for d in self.natural_days] + ad
            mc = self._seeded(self.config.cpm, seed)
            model = self._model(mc, mixed, None, self._mixed_ctr(), "actr")
            return model, self._finish(model, mixed, mc, name, seed)
        if name == "ecdctr-no_cpm":
            model = self._model(mc, ad, self.tpm_tables(seed), self.ad_ctr, "actr")
            return model, self._finish(model, ad, mc, name, seed)
        with_tpm = name not in ("finetune", "ecdctr-no_tpm")
        plain = name == "finetune"
        reset = name not in ("finetune", "ecdctr-no_bn_reinit")
        cpm = self.cpm(seed, with_tpm)
        model = self._model(mc, ad, self.tpm_tables(seed) if with_tpm else None, self.ad_ctr,
                            "actr")
        transfer_weights(cpm, model, reset_batchnorm=reset, log=lambda _: None)
        if not plain:
            shift_output_prior(model, self.natural_ctr, self.ad_ctr, log=lambda _: None)
        if name != "ecdctr-daily":
            return model, self._finish(model, ad, mc, name, seed, recalibrate=reset)
        train: dict = {}
        for day in self.ad_days:  # yesterday's model is today's start
            train = self._train(model, [("ad", day)], mc, f"{name} {day} seed {seed}")
        if reset:
            recalibrate_batchnorm(model, self._dataset(ad, mc), log=lambda _: None)
        return model, train

    def _finish(self, model: CtrModel, parts: list[tuple[str, dt.date]], mc: ModelConfig,
                name: str, seed: int, recalibrate: bool = True) -> dict:
        train = self._train(model, parts, mc, f"{name} seed {seed}")
        if recalibrate:
            recalibrate_batchnorm(model, self._dataset(parts, mc), log=lambda _: None)
        return train

    def _mixed_ctr(self) -> float:
        parts = [("natural", d) for d in self.natural_days] + [("ad", d) for d in self.ad_days]
        return traffic(self.config.work, parts)[1]


def focus_rows(groups: np.ndarray, users: set[str]) -> np.ndarray:
    """Boolean mask of the rows whose group (user) is in `users`."""
    return np.array([(g.decode() if isinstance(g, bytes) else str(g)) in users for g in groups],
                    dtype=bool)
