"""The training steps of E-CDCTR, written once: train a TPM, train a CPM (or any CTR model from
scratch), derive the A-CTR from a CPM, update an A-CTR on new days, evaluate.

`daily`, `compare` and every ablation call these; an ablation is a set of their options. A
step takes what it needs explicitly (spec, work folder, the days it reads, model config,
parent checkpoint, TPM snapshots) and knows nothing of the schedule. Every fit follows one
recipe (`fit_on`): a share of the requests of the newest days, sized by the clicks it holds, is
held out; training stops when its AUC stops improving, and the best epoch's weights are kept. A step returns
a `Trained` (model, vocabularies, self-describing meta); saving it is the caller's choice.

With a `distribution` (ecdctr.training.distribute) the fit itself runs under its strategy on a replica
of the model built in the strategy's scope (its weights copied in before, out after); every
other part of a step runs on the plain model, so what a step returns never depends on the
cluster and loads in one process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.config import TransferConfig, Windows
from ecdctr.data.built_days import names_data_loss, sound_days
from ecdctr.data.datasets import HeldOut, example_batch, make_dataset
from ecdctr.data.datasets import partition_files as partition_files  # callers' steps.partition_files
from ecdctr.data.vocab import Partition, build_vocabularies, domain_sizes, numeric_stats, traffic
from ecdctr.evaluation import metrics
from ecdctr.evaluation.evaluator import Evaluator
from ecdctr.io.layout import built_partitions
from ecdctr.models import sparsity
from ecdctr.models.ctr_model import (
    CtrModel,
    ModelConfig,
    build_model,
    embedding_table,
    shift_output_prior,
    transfer_weights,
)
from ecdctr.spec.feature_spec import Spec
from ecdctr.training.checkpoint import Checkpoint, Snapshot
from ecdctr.training.distribute import Distribution, copy_weights, sharded_variables
from ecdctr.training.loop import fit, recalibrate_batchnorm, scored_batches
from pipelines.held_out import (
    Evaluation,
    Validation,
    choose_validation,
    files_of,
    split,
)
from pipelines.snapshots import readable_snapshots
from pipelines.update_check import validated_update

logger = logging.getLogger(__name__)


@dataclass
class Trained:
    """A model a step trained, with what its checkpoint needs (see ecdctr.training.checkpoint)."""

    model: CtrModel
    spec: Spec
    vocabs: dict[str, list[str]]
    meta: dict
    snapshots: list[Snapshot] = dataclasses.field(default_factory=list)


def built_days(work: str, source: str, first: dt.date, end: dt.date) -> list[dt.date]:
    """The built days of source in [first, end), less damaged ones (named in a warning)."""
    return sound_days(work, source, [d for d in built_partitions(work, source) if first <= d < end])


def window_days(work: str, source: str, date: dt.date, days: int) -> list[dt.date]:
    """The built days of source in the `days` days before date."""
    return built_days(work, source, date - dt.timedelta(days=days), date)


def shared_parts(work: str, date: dt.date, windows: Windows) -> list[Partition]:
    """Where CPM and A-CTR vocabularies and domains come from: the natural CPM window and
    the ad A-CTR window before date."""
    return ([("natural", d) for d in window_days(work, "natural", date, windows.cpm_days)]
            + [("ad", d) for d in window_days(work, "ad", date, windows.actr_days)])


def dataset(spec: Spec, work: str, parts: Sequence[Partition], config: ModelConfig,
            shuffle: bool, model: CtrModel | None = None, held_out: HeldOut | None = None,
            rows: int | None = None) -> tf.data.Dataset:
    """Batches of the given partitions (shuffled with the config's seed when asked); held_out:
    one side of a request-id split (rows: that side's count). With a model: its preprocess runs
    in the input pipeline (the batches are its inputs, not raw features) and the dataset knows
    its number of batches (the build's row counts, or rows)."""
    if model is not None and rows is None:
        rows = traffic(work, parts)[0]
    return make_dataset(spec, files_of(work, parts), config.batch_size, shuffle=shuffle,
                        seed=config.seed, preprocess=model.preprocess if model is not None else None,
                        rows=rows if model is not None else None, held_out=held_out)


def _reestimate_batchnorm(model: CtrModel, spec: Spec, work: str, parts: Sequence[Partition],
                          config: ModelConfig, validation: Validation | None,
                          evaluation: Evaluation | None = None) -> None:
    """BatchNorm statistics re-estimated on the rows a fit learns from (never its validation
    or evaluation rows)."""
    recalibrate_batchnorm(model, dataset(spec, work, parts, config, shuffle=True,
                                         held_out=split(spec, work, False, validation,
                                                        evaluation)))


def validation_of(spec: Spec, work: str, parts: Sequence[Partition], config: ModelConfig
                  ) -> Validation | None:
    """choose_validation with the config's share and click minimum."""
    return choose_validation(spec, work, parts, config.validation_share,
                             config.validation_min_clicks)


@names_data_loss
def fit_on(model: CtrModel, spec: Spec, work: str, parts: Sequence[Partition],
           config: ModelConfig, name: str, board: str | None = None,
           epochs: int | None = None, distribution: Distribution | None = None,
           build: Callable[[], CtrModel] | None = None, validation: Validation | None = None,
           callbacks: Sequence[keras.callbacks.Callback] = (),
           evaluation: Evaluation | None = None) -> dict:
    """The training recipe every step uses: holds out config.validation_share of the requests
    of the window's newest days, as many days back as it takes to hold
    config.validation_min_clicks clicks (`validation`, when the caller chose it already;
    validation_of), trains on every other row for up to config.max_epochs epochs of
    config.batch_size rows, stops after config.patience epochs without a better validation AUC
    and keeps the best epoch. `epochs` (an incremental update) trains exactly that many epochs
    on all of parts, without validation. With a distribution, `build` makes another model like
    `model` (the replica trained under the strategy). callbacks: more Keras callbacks.
    evaluation: rows of parts left out of training and validation alike (daily's evaluation
    share of D)."""
    if not parts:
        raise ValueError(f"{name}: no days to train on")
    if epochs is None:
        validation = validation or validation_of(spec, work, parts, config)
        epochs = config.max_epochs
    else:
        validation = None
    evaluation = evaluation if evaluation is not None and evaluation.day in parts else None
    rows = (traffic(work, parts)[0] - (validation.rows_in(spec, work, parts) if validation else 0)
            - (evaluation.rows if evaluation else 0))
    logger.info(f"[{name}] training on {len(parts)} partitions ({rows:,} rows"
                + (f"; {evaluation.share:.0%} of {evaluation.day[1]}'s requests left out to judge it"
                   if evaluation else "") + "), "
        + (f"validating on {_described(validation, config)}, up to {epochs} epochs"
           if validation else f"{epochs} epoch(s), no validation"))
    training = split(spec, work, False, validation, evaluation)
    if distribution is None:
        summary = fit(model, dataset(spec, work, parts, config, shuffle=True, model=model,
                                     held_out=training, rows=rows), epochs,
                      config.batch_size, name, board, rows,
                      validation=dataset(spec, work, validation.days, config, shuffle=False,
                                         model=model, held_out=split(spec, work, True, validation),
                                         rows=validation.rows)
                      if validation else None, patience=config.patience, callbacks=callbacks)
    else:
        if build is None:
            raise ValueError(f"{name}: a distributed fit needs `build`, the model's builder")
        summary = _fit_distributed(model, build, spec, work, parts, validation, training, config,
                                   name, board, epochs, rows, distribution)
    dates = sorted({d for _, d in parts})
    summary.update(train_days=[dates[0].isoformat(), dates[-1].isoformat()],
                   validation_days=sorted({d.isoformat() for _, d in validation.days})
                   if validation else [])
    if validation:
        summary.update(validation_share=validation.share, validation_rows=validation.rows,
                       validation_clicks=validation.clicks)
    if evaluation:
        summary.update(evaluation_share=evaluation.share, evaluation_rows=evaluation.rows)
    return summary


def _described(validation: Validation, config: ModelConfig) -> str:
    """What a fit validates on, for its log line."""
    short = validation.clicks < config.validation_min_clicks
    return (f"{validation.share:.0%} of the requests of {len(validation.days)} newest "
            f"partition(s) ({validation.rows:,} rows, {validation.clicks:,} clicks"
            + (f"; fewer than validation_min_clicks {config.validation_min_clicks}, all the "
               "window holds" if short else "") + ")")


def _fit_distributed(model: CtrModel, build: Callable[[], CtrModel], spec: Spec, work: str,
                     parts: Sequence[Partition], validation: Validation | None,
                     training: HeldOut | None, config: ModelConfig, name: str,
                     board: str | None, epochs: int, rows: int, distribution: Distribution
                     ) -> dict:
    """fit_on's fit under a strategy: a replica of model built in its scope starts from the
    model's weights, reads its share of the rows on each worker (the global batch is the
    config's batch_size unless distribute.batch_size says per_replica), backs up every epoch,
    and its trained weights go back into model (every worker copies them: reading
    synchronised variables takes all of them)."""
    with distribution.scope():
        replica = build()
    copy_weights(model, replica)
    sharded = sharded_variables(replica)
    if sharded:
        logger.info(f"[{name}] {len(sharded)} variable(s) partitioned over the parameter servers: "
            + ", ".join(f"{n} in {k} shards" for n, k in sharded.items()))
    def source(files: list[str], shuffle: bool, held_out: HeldOut | None
               ) -> Callable[..., tf.data.Dataset]:
        def make(batch: int, parts: int, indices: tuple[int, ...]) -> tf.data.Dataset:
            return make_dataset(spec, files, batch, shuffle=shuffle, seed=config.seed,
                                shard=(parts, indices), held_out=held_out)
        return make

    train_input, steps = distribution.input(source(files_of(work, parts), True, training),
                                            config.batch_size, rows)
    valid_input, valid_steps = (distribution.input(
        source(files_of(work, validation.days), False, split(spec, work, True, validation)),
        config.batch_size, validation.rows) if validation else (None, None))
    global_batch = distribution.global_batch(config.batch_size)
    logger.info(f"[{name}] distributed: {distribution.describe()}, global batch {global_batch}, "
                f"{steps} steps an epoch")
    summary = fit(replica, train_input, epochs, global_batch, name, board, rows,
                  validation=valid_input, patience=config.patience,
                  backup_dir=distribution.backup_dir(name), steps_per_epoch=steps,
                  validation_steps=valid_steps)
    copy_weights(replica, model)
    summary.update(strategy=distribution.config.strategy, replicas=distribution.replicas,
                   global_batch=global_batch,
                   **({"sharded_variables": sharded} if sharded else {}))
    return summary


def _meta(kind: str, parts: Sequence[Partition], work: str, train: dict, stats: dict,
          domains: list[str], features: str = "all", **more: object) -> dict:
    dates = sorted({d for _, d in parts})
    rows, ctr = traffic(work, parts)
    learned = train.get("train_days", [None, None])[1]
    return {"kind": kind, "features": features, "window": [dates[0].isoformat(),
                                                          dates[-1].isoformat()],
            "learned_through": learned,
            "sources": sorted({s for s, _ in parts}), "rows": rows, "ctr": ctr, "train": train,
            "numeric_stats": {k: list(v) for k, v in stats.items()}, "domains": domains, **more}


def train_tpm(spec: Spec, work: str, days: Sequence[dt.date], config: ModelConfig,
              parent: Checkpoint | Trained | None = None, board: str | None = None,
              fresh_features: Sequence[str] = (),
              distribution: Distribution | None = None) -> Trained:
    """The tiny pre-training model on natural days (the spec's `tpm: true` features); with a
    parent (the previous snapshot's TPM), it warm-starts from it so that successive
    snapshots share one embedding space."""
    parts = [("natural", d) for d in days]
    vocabs = build_vocabularies(spec, work, parts)
    stats = numeric_stats(spec, work, parts)
    rows, ctr = traffic(work, parts)
    logger.info(f"TPM on {len(days)} natural days ({rows:,} rows), features "
                f"{[f.name for f in spec.tpm_features]}"
        + (f", warm start from {getattr(parent, 'folder', 'the previous TPM')}" if parent else ""))
    make = functools.partial(build_model, spec.tpm_features, vocabs, stats, config,
                             example_batch(spec), initial_ctr=ctr, name="tpm")
    model = make()
    if parent is not None:
        transfer_weights(parent.model, model, reset_batchnorm=False,
                         fresh_features=fresh_features)
    train = fit_on(model, spec, work, parts, config, "tpm", board,
                   distribution=distribution, build=make)
    return Trained(model, spec, vocabs, _meta("tpm", parts, work, train, stats, [], "tpm",
                                              parent=getattr(parent, "folder", None)))


def tpm_tables(trained: Trained, standardize: bool = False
               ) -> dict[str, tuple[list[str], np.ndarray]]:
    """The TPM's exported embeddings: {entity feature: (ids, vectors)} (OOV row left out);
    standardize: each dimension moved to zero mean and unit variance over the ids."""
    tables = {}
    for feature in trained.spec.entities.values():
        keys, rows = embedding_table(trained.model, feature.name)
        if standardize and len(keys) > 1:
            rows = (rows - rows.mean(axis=0)) / np.maximum(rows.std(axis=0), 1e-6)
        tables[feature.name] = (keys, rows.astype(np.float32))
    return tables


def train_ctr(spec: Spec, work: str, parts: Sequence[Partition], config: ModelConfig,
              kind: str = "ctr", snapshots: Sequence[Snapshot] = (),
              vocab_parts: Sequence[Partition] | None = None,
              stats_parts: Sequence[Partition] | None = None,
              parent: Checkpoint | None = None, fresh_features: Sequence[str] = (),
              board: str | None = None, name: str | None = None,
              label: str | None = None, distribution: Distribution | None = None,
              callbacks: Sequence[keras.callbacks.Callback] = ()) -> Trained:
    """A CTR model (the CPM, or any compare variant) trained on parts, reading the given TPM
    snapshots (none: no TPM embeddings). Vocabularies and domains come from vocab_parts
    (default parts), numeric statistics from stats_parts (default parts). With a parent
    checkpoint it warm-starts from it (weights by name, embedding rows by token, BatchNorm
    kept; fresh_features start fresh). BatchNorm statistics are re-estimated after the fit.
    name: the Keras model's (default kind); label: what progress lines say (default name);
    callbacks: more Keras callbacks for the fit."""
    vocab_parts = list(vocab_parts or parts)
    vocabs = build_vocabularies(spec, work, vocab_parts)
    domains = list(domain_sizes(work, vocab_parts))
    stats = numeric_stats(spec, work, list(stats_parts or parts))
    name = name or kind
    make = functools.partial(build_model, spec.features, vocabs, stats, config,
                             example_batch(spec), [s.tables for s in snapshots] or None,
                             traffic(work, parts)[1], domains, name=name)
    model = make()
    transfer = None
    if parent is not None:
        transfer = transfer_weights(parent.model, model, reset_batchnorm=False,
                                    fresh_features=fresh_features)
    validation = validation_of(spec, work, parts, config)
    train = fit_on(model, spec, work, parts, config, label or name, board,
                   distribution=distribution, build=make, validation=validation,
                   callbacks=callbacks)
    _reestimate_batchnorm(model, spec, work, parts, config, validation)
    meta = _meta(kind, parts, work, train, stats, domains,
                 parent=parent.folder if parent else None,
                 transfer=_counts(transfer) if transfer else None)
    return Trained(model, spec, vocabs, meta, list(snapshots))


def _actr_from(parent: Checkpoint | Trained, spec: Spec, work: str, config: ModelConfig,
               vocab_parts: Sequence[Partition], initial_ctr: float
               ) -> tuple[CtrModel, dict[str, list[str]], dict, list[Snapshot],
                          Callable[[], CtrModel]]:
    """An A-CTR with a parent's numeric stats, domains and TPM snapshots and vocabularies of
    vocab_parts: (model, vocabularies, stats, snapshots, its builder); its weights are the
    caller's. A numeric column the parent has no statistics for (a feature added to the spec
    since the parent trained) takes them from vocab_parts until a CPM with it lands."""
    vocabs = build_vocabularies(spec, work, vocab_parts)
    stats = {k: tuple(v) for k, v in parent.meta["numeric_stats"].items()}
    if any(f.kind == "numeric" and f.column not in stats for f in spec.features):
        own = numeric_stats(spec, work, vocab_parts)
        stats.update({k: v for k, v in own.items() if k not in stats})
    snapshots = readable_snapshots(parent.snapshots, spec)
    make = functools.partial(build_model, spec.features, vocabs, stats, config,
                             example_batch(spec), [s.tables for s in snapshots] or None,
                             initial_ctr, parent.meta["domains"], name="actr")
    return make(), vocabs, stats, snapshots, make


def derive_actr(cpm: Checkpoint | Trained, spec: Spec, work: str, ad_days: Sequence[dt.date],
                config: ModelConfig, options: TransferConfig,
                vocab_parts: Sequence[Partition] | None = None,
                fresh_features: Sequence[str] = (), board: str | None = None,
                distribution: Distribution | None = None,
                evaluation: Evaluation | None = None,
                callbacks: Sequence[keras.callbacks.Callback] = ()) -> Trained:
    """The A-CTR from a CPM (E-CDCTR): the same structure and TPM snapshots, weights by name
    (embedding rows by token), BatchNorm reset as options say, the output prior moved to the
    ad CTR, then fine-tuned on the ad days. Reset BatchNorm statistics are re-estimated on the
    ad training rows before the fit (so held-out rows are scored with ad statistics, not
    with zeros and ones) and again after it. evaluation: rows of ad_days it never learns from,
    not even their CTR (fit_on). callbacks: more Keras callbacks for the fit."""
    parts = [("ad", d) for d in ad_days]
    ad_ctr = _ctr_without(work, parts, evaluation)
    model, vocabs, stats, snapshots, make = _actr_from(cpm, spec, work, config,
                                                       vocab_parts or parts, ad_ctr)
    transfer = transfer_weights(cpm.model, model, reset_batchnorm=options.reset_batchnorm,
                                reset_batchnorm_affine=options.reset_batchnorm_affine,
                                fresh_features=fresh_features)
    shift = (shift_output_prior(model, cpm.meta["ctr"], ad_ctr)
             if options.shift_output_prior else 0.0)
    validation = validation_of(spec, work, parts, config)
    if options.reset_batchnorm:  # statistics of ad data from the start: validation reads them
        _reestimate_batchnorm(model, spec, work, parts, config, validation, evaluation)
    train = fit_on(model, spec, work, parts, config, "actr", board,
                   distribution=distribution, build=make, validation=validation,
                   evaluation=evaluation, callbacks=callbacks)
    if options.reset_batchnorm:  # and again for the fine-tuned weights
        _reestimate_batchnorm(model, spec, work, parts, config, validation, evaluation)
    meta = _meta("actr", parts, work, train, stats, list(cpm.meta["domains"]),
                 parent=getattr(cpm, "folder", None), transfer=_counts(transfer),
                 prior_shift=shift, options=dataclasses.asdict(options))
    return Trained(model, spec, vocabs, meta, snapshots)


def update_actr(previous: Checkpoint | Trained, spec: Spec, work: str, new_days: Sequence[dt.date],
                config: ModelConfig, vocab_parts: Sequence[Partition] | None = None,
                fresh_features: Sequence[str] = (), board: str | None = None,
                distribution: Distribution | None = None, evaluation: Evaluation | None = None,
                validate: bool = False, earlier: Sequence[dt.date] = ()) -> Trained:
    """The A-CTR of a new day from the previous one: weights by name (BatchNorm kept), then
    trained on the ad days the previous one has not learned from (less the evaluation rows
    when given) for the epoch count its lineage chose on validation; validate: by evidence
    instead, kept only if not worse than where it started (update_check.validated_update;
    `earlier`: older ad days its validation may grow into)."""
    parts = [("ad", d) for d in new_days]
    model, vocabs, _, snapshots, make = _actr_from(previous, spec, work, config,
                                                   vocab_parts or parts, previous.meta["ctr"])
    transfer = transfer_weights(previous.model, model, reset_batchnorm=False,
                                fresh_features=fresh_features)
    epochs = int(previous.meta["train"].get("chosen_epoch") or 1)
    train = validated_update(model, spec, work, [("ad", d) for d in earlier] + parts, config,
                             lambda v: fit_on(model, spec, work, parts, config, "actr", board,
                                              distribution=distribution, build=make,
                                              validation=v, evaluation=evaluation),
                             "actr") if validate and parts else None
    if train is None and parts:
        train = fit_on(model, spec, work, parts, config, "actr", board, epochs=epochs,
                       distribution=distribution, build=make, evaluation=evaluation)
    if train is None or train.get("update_check", {}).get("kept") == "previous":
        logger.info("A-CTR: nothing new learned (no new ad day, or the update kept out); kept as it was")
        train = {**(train or {"rows_read": 0, "steps": 0, "epochs_run": 0}), "chosen_epoch": epochs,
                 "train_days": [previous.meta["learned_through"]] * 2}
        parts = []
    meta = {**previous.meta, "train": train, "parent": getattr(previous, "folder", None),
            "transfer": _counts(transfer), "learned_through": train["train_days"][1],
            "rows": previous.meta["rows"] + (_rows_without(work, parts, evaluation) if parts else 0),
            "window": [previous.meta["window"][0], train["train_days"][1]]}
    meta.pop("metrics", None)
    return Trained(model, spec, vocabs, meta, snapshots)


def _rows_without(work: str, parts: Sequence[Partition], evaluation: Evaluation | None) -> int:
    """The rows of parts less the evaluation rows among them."""
    left_out = evaluation.rows if evaluation is not None and evaluation.day in parts else 0
    return traffic(work, parts)[0] - left_out


def _ctr_without(work: str, parts: Sequence[Partition], evaluation: Evaluation | None) -> float:
    """The CTR of parts less the evaluation rows among them."""
    rows, ctr = traffic(work, parts)
    if evaluation is None or evaluation.day not in parts or rows <= evaluation.rows:
        return ctr
    return (ctr * rows - evaluation.clicks) / (rows - evaluation.rows)


@names_data_loss
def evaluate(model: CtrModel, spec: Spec, work: str, parts: Sequence[Partition],
             batch_size: int = 4096, held_out: HeldOut | None = None) -> dict:
    """LogLoss, AUC, GAUC, CTR, mean prediction and calibration of the model on the given
    partitions (held_out: only one side of a request-id split of them, e.g. daily's evaluation
    share: split(spec, work, True, evaluation)), overall and per domain, streamed batch by
    batch (memory does not grow with the rows; ecdctr.evaluation.evaluator). An AdaSparse
    model's result also holds its achieved sparsity per layer, overall and per domain-size
    bin of these rows (sparsity.measure; bins as compare's, by the partitions' rows)."""
    rows = functools.partial(make_dataset, spec, files_of(work, parts), batch_size,
                             held_out=held_out)
    result = score(model, spec, rows(), Evaluator(per_domain=True))
    if model.config.multi_domain == "adasparse":
        bins = metrics.size_bins(domain_sizes(work, parts), sparsity.SIZE_BINS)
        result["sparsity"] = sparsity.measure(model, rows(), bins)
    return result


def score(model: CtrModel, spec: Spec, dataset: tf.data.Dataset, evaluator: Evaluator,
          also: Callable[[dict[str, np.ndarray]], None] | None = None) -> dict:
    """The evaluator's result over the model's scored batches of dataset (`also` sees every
    batch too); the one evaluation loop of daily and compare."""
    with evaluator:
        for batch in scored_batches(model, spec, dataset):
            evaluator.add(**batch)
            if also is not None:
                also(batch)
        return evaluator.result()


def _counts(report: dict) -> dict:
    return {"variables": {k: len(v) for k, v in report.items()}, "fresh": report["fresh"],
            "shape_changed": report["shape_changed"]}
