"""Training and batch prediction loops with visible progress."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.spec.feature_spec import Spec

logger = logging.getLogger(__name__)

# Train steps per call of the compiled train function when the input's size is known: the
# per-call overhead of Keras' fit loop (callbacks, function call, logs) is paid once for
# this many steps (benchmarks/BENCHMARKS.md, section 3).
STEPS_PER_EXECUTION = 8


class ProgressLog(keras.callbacks.Callback):
    """Logs loss and throughput every few seconds and at each epoch's end (batches=False: at
    each epoch's end only; parameter_server runs no batch-level callbacks)."""

    def __init__(self, name: str, batch_size: int, every_seconds: float = 10.0,
                 batches: bool = True):
        super().__init__()
        self.name, self.batch_size, self.every = name, batch_size, every_seconds
        self.batches = batches
        self.steps = 0
        self.epoch_start = 0  # steps done before this epoch
        self.started = self.last = 0.0
        self.first_epoch: int | None = None  # > 0 when a fit resumed from its backup

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = self.last = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_start = self.steps
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch:
                logger.info(f"[{self.name}] resumed from its backup: {epoch} epoch(s) were done, "
                            f"training from epoch {epoch + 1}")

    def _implements_train_batch_hooks(self) -> bool:
        return self.batches

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps = self.epoch_start + batch + 1  # batch: the last step of the execution
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.steps * self.batch_size / (now - self.started)
            logger.info(f"[{self.name}] step {self.steps}: loss {_number((logs or {}).get('loss')):.4f}, "
                        f"{rate:,.0f} examples/s")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if not self.batches:
            self.steps += int(self.params.get("steps") or 0)
        logger.info(f"[{self.name}] epoch {epoch + 1} done after {self.steps} steps: "
                    f"loss {_number(logs.get('loss')):.4f}, auc {_number(logs.get('auc')):.4f}")


def _number(value: object) -> float:
    """A logged metric as a float (a parameter-server step's result is fetched first)."""
    if value is None:
        return float("nan")
    fetch = getattr(value, "fetch", None)
    return float(fetch() if callable(fetch) else value)


class BestEpoch(keras.callbacks.Callback):
    """Early stopping on the validation AUC: stops after `patience` epochs without a better
    one and, at the end, puts back the weights of the best epoch (BatchNorm statistics and
    AdaSparse's schedule included; the frozen TPM tables never change, so they are skipped)."""

    def __init__(self, patience: int, name: str):
        super().__init__()
        self.patience, self.name = patience, name
        self.best_auc, self.best_epoch, self.history = -np.inf, 0, []
        self.last_epoch = 0
        self._best: list[np.ndarray] | None = None

    def _variables(self) -> list[tf.Variable]:
        return [v for v in self.model.variables
                if not any(t in v.name for t in ("tpm_snap", "tpm_present", "tpm_table"))]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        auc = float((logs or {}).get("val_auc", np.nan))
        self.history.append(round(auc, 5))
        self.last_epoch = epoch + 1
        if auc > self.best_auc:
            self.best_auc, self.best_epoch = auc, epoch + 1
            self._best = [v.numpy() for v in self._variables()]
        elif epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True
        logger.info(f"[{self.name}] epoch {epoch + 1}: validation AUC {auc:.4f} "
                    f"(best {self.best_auc:.4f} at epoch {self.best_epoch})")

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._best is not None and self.best_epoch != self.last_epoch:
            for variable, value in zip(self._variables(), self._best, strict=True):
                variable.assign(value)
            logger.info(f"[{self.name}] restored the weights of epoch {self.best_epoch} "
                        f"(validation AUC {self.best_auc:.4f})")


def fit(model: keras.Model, dataset: tf.data.Dataset, epochs: int, batch_size: int, name: str,
        tensorboard_dir: str | None = None, rows: int | None = None,
        validation: tf.data.Dataset | None = None, patience: int = 1,
        backup_dir: str | None = None, steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        steps_per_execution: int = STEPS_PER_EXECUTION,
        callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Trains up to `epochs` passes; returns loss, steps, seconds, examples/s and the epochs
    run. With `validation`, stops once the validation AUC has not improved for `patience`
    epochs and restores the best epoch's weights (reported as chosen_epoch, with the AUC of
    every epoch); without it, runs all `epochs`. `rows` (the dataset's size, when known) is
    reported as rows_read. With tensorboard_dir, the loss and the metrics (AdaSparse's
    per-layer sparsity among them) go to TensorBoard every 50 steps. A model with
    plan_schedules (CtrModel) is told the steps of an epoch (steps_per_epoch, else rows /
    batch_size) before the fit, so AdaSparse's ramp is measured in epochs.
    Distributed fits (ecdctr.training.distribute): `dataset` and `validation` are per-worker inputs,
    batch_size the global batch; with backup_dir the training state is backed up there after
    every epoch (keras BackupAndRestore: a rerun resumes from the last whole epoch, the
    folder is deleted when the fit ends); steps_per_epoch and validation_steps bound the
    repeated inputs of parameter_server. After a resume, early stopping knows the epochs run
    since (the backup holds the weights, not the earlier epochs' validation AUCs).
    When `dataset` (and `validation`) have a known number of batches (tf.data cardinality,
    e.g. make_dataset given `rows`), each call of the train function runs
    steps_per_execution steps; otherwise one. `callbacks` run after the fit's own."""
    coordinated = isinstance(model.distribute_strategy,
                             tf.distribute.experimental.ParameterServerStrategy)
    sized = not coordinated and all(_known_size(d) for d in (dataset, validation) if d is not None)
    set_steps_per_execution(model, steps_per_execution if sized else 1)
    progress = ProgressLog(name, batch_size, batches=not coordinated)
    best = BestEpoch(patience, name) if validation is not None else None
    hooks = _hooks(progress, best, backup_dir, tensorboard_dir, coordinated)
    plan = getattr(model, "plan_schedules", None)  # CtrModel: AdaSparse's ramp from the epoch
    epoch_steps = steps_per_epoch or (-(-rows // batch_size) if rows else None)
    if callable(plan) and epoch_steps:
        plan(epoch_steps)
    started = time.perf_counter()
    history = model.fit(dataset, epochs=epochs, verbose=0, callbacks=[*hooks, *callbacks],
                        validation_data=validation, steps_per_epoch=steps_per_epoch,
                        validation_steps=validation_steps)
    seconds = time.perf_counter() - started
    first = progress.first_epoch or 0
    epochs_run = first + len(history.history["loss"])
    chosen = best.best_epoch if best is not None else epochs_run
    summary = {
        "loss": float(history.history["loss"][chosen - 1 - first]),  # of the epoch kept
        "steps": progress.steps,
        "seconds": round(seconds, 2),
        "examples_per_second": round(progress.steps * batch_size / max(seconds, 1e-9)),
        "epochs_run": epochs_run,
        "chosen_epoch": chosen,
        **({"rows_read": rows * epochs_run} if rows is not None else {}),
    }
    if best is not None:
        summary.update(validation_auc=best.history, best_validation_auc=round(best.best_auc, 5))
    if first:
        summary["resumed_after_epoch"] = first
    return summary


def _hooks(progress: ProgressLog, best: BestEpoch | None, backup_dir: str | None,
           tensorboard_dir: str | None, coordinated: bool) -> list[keras.callbacks.Callback]:
    """fit's own callbacks, in their order: the backup first (the state is restored before the
    others begin), progress, early stopping, TensorBoard."""
    hooks: list[keras.callbacks.Callback] = [progress]
    if backup_dir:
        hooks.insert(0, keras.callbacks.BackupAndRestore(backup_dir))
    if best is not None:
        hooks.append(best)
    if tensorboard_dir:
        hooks.append(keras.callbacks.TensorBoard(tensorboard_dir,
                                                 update_freq="epoch" if coordinated else 50,
                                                 write_graph=False, profile_batch=0))
    return hooks


def _known_size(dataset: object) -> bool:
    """True for a tf.data.Dataset whose number of batches is known (and finite)."""
    return isinstance(dataset, tf.data.Dataset) and int(dataset.cardinality()) >= 0


def set_steps_per_execution(model: keras.Model, steps: int) -> None:
    """Sets a compiled model's train steps per function call; its train and test functions
    are rebuilt when that switches between one and several (they are traced differently)."""
    current = model.steps_per_execution
    if current is None or int(current.numpy()) != steps:
        if current is None or (int(current.numpy()) == 1) != (steps == 1):
            model.train_function = model.test_function = None
        model.steps_per_execution = steps


def scored_batches(model: keras.Model, spec: Spec, dataset: tf.data.Dataset
                   ) -> Iterator[dict[str, np.ndarray]]:
    """Labels, probabilities, group_by values and domain keys of each batch of a dataset of
    (features, labels); the domain key joins the domain-aware features' values with '|'.
    The model is traced once, for the dataset's batch shape [None, ...]: a last, shorter
    batch does not trace it again."""
    step = tf.function(lambda x: model(x, training=False),
                       input_signature=[dataset.element_spec[0]])
    domain_names = [f.name for f in spec.domain_features]
    empty = True
    for features, label in dataset:
        empty = False
        labels = label.numpy().ravel()
        if domain_names:
            key = tf.strings.join([features[n] for n in domain_names], separator="|")
            domains = key.numpy().astype(str)
        else:
            domains = np.full(len(labels), "all")
        yield {"labels": labels, "probs": step(features).numpy().ravel(),
               "groups": features[spec.group_by].numpy(), "domains": domains}
    if empty:
        raise ValueError("nothing to predict: the evaluation data is empty.")


def recalibrate_batchnorm(model: keras.Model, dataset: tf.data.Dataset, max_batches: int = 50) -> int:
    """Re-estimates BatchNorm moving statistics as the plain average over up to max_batches
    batches (forward passes only, no weight update). Needed after the statistics are reset
    for a new traffic distribution: a short fine-tune moves them too little. Returns batches."""
    norms = [layer for layer in _sublayers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return 0
    saved = [n.momentum for n in norms]
    schedule = [v for v in model.variables if v.name.split("/")[-1].split(":")[0]
                in ("pruning_step", "alpha")]  # forward passes in training mode advance them
    schedule_values = [v.numpy() for v in schedule]
    for n in norms:
        n.moving_mean.assign(tf.zeros_like(n.moving_mean))
        n.moving_variance.assign(tf.zeros_like(n.moving_variance))
    batches = 0
    try:
        for features, _ in dataset.take(max_batches):
            for n in norms:
                n.momentum = batches / (batches + 1.0)  # running mean over batches seen
            model(features, training=True)
            batches += 1
    finally:
        for n, m in zip(norms, saved, strict=True):
            n.momentum = m
        for v, value in zip(schedule, schedule_values, strict=True):
            v.assign(value)
    if batches == 0:
        for n in norms:
            n.moving_variance.assign(tf.ones_like(n.moving_variance))
    logger.info(f"[{model.name}] BatchNorm statistics re-estimated on {batches} batches")
    return batches


def _sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    return [m for m in layer._flatten_modules(include_self=False) if isinstance(m, keras.layers.Layer)]
