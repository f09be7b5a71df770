"""The CTR model builder shared by TPM, CPM and A-CTR, and weight transfer between them.

CPM and A-CTR are the same class with the same variable names, so A-CTR starts from CPM
by name; embedding rows are matched by vocabulary token, so vocabularies may differ.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from ecdctr.layers.aggregator import MergedTpmLookup, TpmAggregator
from ecdctr.layers.core import FeatureEncoder, known_from_rows
from ecdctr.models.adasparse import AdaSparseConfig, AdaSparseMlp
from ecdctr.models.apg import ApgMlp
from ecdctr.models.mlp import Mlp
from ecdctr.models.star import StarMlp
from ecdctr.models.tower import Tower
from ecdctr.seeding import set_random_seed
from ecdctr.spec.feature_spec import Feature

logger = logging.getLogger(__name__)

BACKBONES = ("dnn", "dcnv2")
MULTI_DOMAIN = ("none", "adasparse", "star", "apg")
CROSS_STRUCTURES = ("parallel", "stacked")
NO_DOMAIN = "<no-domain>"  # domain list placeholder when no domains are known
# Keys of CtrModel.preprocess's output; a feature name never starts with "." (ecdctr.spec.feature_spec).
IDS, TPM_ROWS, DOMAIN_INDEX = ".ids", ".tpm_rows", ".domain_index"
TpmSnapshot = Mapping[str, tuple[Sequence[str], np.ndarray]]  # entity feature -> (ids, vectors)
TpmSnapshots = TpmSnapshot | Sequence[TpmSnapshot]


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one model: structure and training."""

    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    learning_rate: float = 0.001
    batch_size: int = 1024
    max_epochs: int = 5  # a fit stops earlier when the validation AUC stops improving
    patience: int = 1  # epochs without a better validation AUC before the fit stops
    validation_share: float = 0.1  # share of requests (by id hash) held out of the newest days
    validation_min_clicks: int = 200  # the held-out share grows back day by day to this many clicks
    seed: int = 0
    backbone: str = "dnn"  # dnn | dcnv2 (TFRS Cross layers with the MLP)
    cross_layers: int = 2
    cross_structure: str = "parallel"  # parallel: [cross ; mlp] -> logit; stacked: cross -> mlp
    multi_domain: str = "none"  # none | adasparse | star | apg
    adasparse: AdaSparseConfig = AdaSparseConfig()
    apg_rank: int = 16
    apg_over_parameterize: bool = False  # U = U_l U_r, V = V_l V_r in training, merged at export
    tpm_known_flag: bool = False  # a 0/1 input per TPM entity: has the id a snapshot vector?

    def __post_init__(self) -> None:
        for name, value, allowed in (("backbone", self.backbone, BACKBONES),
                                     ("multi_domain", self.multi_domain, MULTI_DOMAIN),
                                     ("cross_structure", self.cross_structure, CROSS_STRUCTURES)):
            if value not in allowed:
                raise ValueError(f"model {name} {value!r} is not one of {list(allowed)}")


def _tower(config: ModelConfig, num_domains: int) -> Tower:
    """The tower the config asks for (models.tower.Tower: plain MLP, AdaSparse, STAR or APG)."""
    if config.multi_domain == "adasparse":
        return AdaSparseMlp(config.hidden, config.adasparse, config.dropout, name="mlp")
    if config.multi_domain == "star":
        return StarMlp(config.hidden, num_domains, config.dropout, name="mlp")
    if config.multi_domain == "apg":
        return ApgMlp(config.hidden, rank=config.apg_rank, dropout=config.dropout,
                      over_parameterize=config.apg_over_parameterize, name="mlp")
    return Mlp(config.hidden, config.dropout, name="mlp")


class CtrModel(keras.Model):
    """Embeddings (+ frozen TPM embeddings) -> [cross layers] + MLP tower -> click probability
    [B, 1]. Domains are the combinations of the spec's domain-aware features: their
    embeddings and their index in `domains` feed the multi-domain tower."""

    def __init__(self, features: Sequence[Feature], vocabs: Mapping[str, Sequence[str]],
                 numeric_stats: Mapping[str, tuple[float, float]], config: ModelConfig,
                 tpm_tables: TpmSnapshots | None = None,
                 initial_ctr: float | None = None, domains: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.domain_features = [f.name for f in features if f.domain]
        if config.multi_domain != "none" and not self.domain_features:
            raise ValueError(f"multi_domain {config.multi_domain!r} needs features with "
                             f"`domain: true` in the spec")
        self.domains = list(domains) or [NO_DOMAIN]
        self.encoder = FeatureEncoder(features, vocabs, numeric_stats, name="features")
        self.domain_lookup = keras.layers.StringLookup(vocabulary=self.domains, num_oov_indices=1,
                                                       name="domain_lookup")
        snapshots = [tpm_tables] if isinstance(tpm_tables, Mapping) else list(tpm_tables or [])
        self.tpm = TpmAggregator(snapshots, name="tpm") if snapshots else None
        self.cross = [tfrs.layers.dcn.Cross(name=f"cross_{i}") for i in range(config.cross_layers)
                      ] if config.backbone == "dcnv2" else []
        self.mlp: Tower = _tower(config, len(self.domains) + 1)
        # Starting the output at the data's CTR saves the first steps from learning a constant.
        bias = 0.0 if initial_ctr is None else float(np.log(initial_ctr / (1.0 - initial_ctr)))
        self.logit = keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(bias),
                                        name="logit")

    def get_config(self) -> dict:
        # Served through SavedModel signatures, never rebuilt from config.
        return {"name": self.name}

    def domain_index(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Index of each row's domain in `domains` (+1; 0 is a domain not seen in training)."""
        key = tf.strings.join([inputs[n] for n in self.domain_features], separator="|")
        return tf.cast(self.domain_lookup(key), tf.int32)

    def preprocess(self, inputs: Mapping[str, tf.Tensor], with_index: bool | None = None
                   ) -> dict[str, dict[str, tf.Tensor] | tf.Tensor]:
        """The per-row work on raw features that reads no trained weight: string lookups,
        hashing, bucketing, normalisation, TPM id lookups and (with_index; default: for STAR,
        whose routing needs it) the domain index. call() takes raw features or this output and
        gives the same predictions for both: training maps it over batches in the input
        pipeline (make_dataset's preprocess) so the step starts from ids, while the exported
        signatures run it inside the model on raw values."""
        if with_index is None:
            with_index = self.config.multi_domain == "star"
        out: dict = {IDS: self.encoder.preprocess(inputs)}
        if self.tpm is not None:
            out[TPM_ROWS] = self.tpm.rows(inputs)
        if self.domain_features and with_index:
            out[DOMAIN_INDEX] = self.domain_index(inputs)
        return out

    def tower_inputs(self, inputs: Mapping[str, tf.Tensor], with_index: bool = True
                     ) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor, tf.Tensor]:
        """(tower input, domain embedding, domain index, cross output) of a batch of raw or
        preprocessed features; without with_index the domain index is left zero (only STAR's
        routing needs it per step), unless the tower reads a domain key instead (the serving
        form of AdaSparse with tabulated factors: FeatureEncoder.domain_key)."""
        ids = inputs if is_preprocessed(inputs) else self.preprocess(inputs, with_index)
        x, domain_embedding = self.encoder.encode_preprocessed(ids[IDS])
        if self.tpm is not None:
            x = tf.concat([x, self.tpm.from_rows(ids[TPM_ROWS])], axis=-1)
            if self.config.tpm_known_flag:  # unseen ids get exact zeros: say so explicitly
                x = tf.concat([x, known_from_rows(ids[TPM_ROWS], self.tpm.feature_names)], axis=-1)
        if self.domain_features and with_index:
            if DOMAIN_INDEX not in ids:
                raise ValueError("these preprocessed features have no domain index: "
                                 "preprocess them with with_index=True")
            domain_index = ids[DOMAIN_INDEX]
        elif self.mlp.reads_domain_key:  # a tower with per-domain tables
            domain_index = self.encoder.domain_key(ids[IDS])
        else:
            domain_index = tf.zeros([tf.shape(x)[0]], tf.int32)
        crossed = x
        for layer in self.cross:
            crossed = layer(x, crossed)
        tower_input = crossed if self.cross and self.config.cross_structure == "stacked" else x
        return tower_input, domain_embedding, domain_index, crossed

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        tower_input, domain_embedding, domain_index, crossed = self.tower_inputs(
            inputs, with_index=self.config.multi_domain == "star")
        h = self.mlp(tower_input, domain_embedding=domain_embedding, domain_index=domain_index,
                     training=training)
        if self.cross and self.config.cross_structure == "parallel":
            h = tf.concat([crossed, h], axis=-1)
        logit = self.logit(h)
        extra = self.mlp.extra_logit(tower_input, domain_embedding, domain_index, training=training)
        if extra is not None:
            logit += extra
        return tf.sigmoid(logit)

    def plan_schedules(self, steps_per_epoch: int) -> None:
        """Tells schedules inside the tower (AdaSparse's ramp) how many steps an epoch of the
        coming fit has (Tower.plan_schedule); training.loop.fit calls it."""
        self.mlp.plan_schedule(max(int(steps_per_epoch), 1))


def is_preprocessed(inputs: Mapping[str, object]) -> bool:
    """True for the output of CtrModel.preprocess, False for raw features by name."""
    return IDS in inputs


def build_model(features: Sequence[Feature], vocabs: Mapping[str, Sequence[str]],
                numeric_stats: Mapping[str, tuple[float, float]], config: ModelConfig,
                example_batch: Mapping[str, tf.Tensor],
                tpm_tables: TpmSnapshots | None = None,
                initial_ctr: float | None = None, domains: Sequence[str] = (),
                name: str = "ctr") -> CtrModel:
    """Builds and compiles a CtrModel; one call on example_batch creates its variables.
    tpm_tables: one TPM snapshot ({entity feature: (ids, vectors)}) or the last K, oldest
    first; they reach the model through an attention aggregator learned with it.
    initial_ctr (clipped to [1e-4, 1 - 1e-4]) sets the output bias so training starts calibrated."""
    set_random_seed(config.seed)
    if initial_ctr is not None:
        initial_ctr = min(max(initial_ctr, 1e-4), 1 - 1e-4)
    model = CtrModel(features, vocabs, numeric_stats, config, tpm_tables, initial_ctr, domains,
                     name=name)
    model(dict(example_batch), training=False)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(name="auc")])
    return model


@contextlib.contextmanager
def serving_form(model: CtrModel) -> Iterator[CtrModel]:
    """Within the block the model is in the form serving runs: its TPM table merged
    (merged_tpm_table) and its tower in its serving form (tower_for_serving); the training form
    is put back after."""
    with merged_tpm_table(model), tower_for_serving(model):
        yield model


@contextlib.contextmanager
def merged_tpm_table(model: CtrModel) -> Iterator[CtrModel]:
    """Within the block the model's TPM aggregator is frozen into its merged table (one lookup
    per entity, no attention); the aggregator is put back after."""
    with _layers_put_back(model):
        if isinstance(model.tpm, TpmAggregator):
            model.tpm = MergedTpmLookup(model.tpm.merged_tables(), name="tpm")
        yield model


@contextlib.contextmanager
def tower_for_serving(model: CtrModel) -> Iterator[CtrModel]:
    """Within the block the model's tower is in its serving form (Tower.for_serving: a plain
    or AdaSparse tower folded for inference, an over-parameterised APG tower multiplied out);
    the training tower is put back after."""
    stacked = model.cross and model.config.cross_structure == "stacked"
    with _layers_put_back(model):  # the tower input holds the domain embedding, unless crossed
        model.mlp = model.mlp.for_serving(() if stacked else model.encoder.domain_columns(),
                                          model.encoder.domain_tables())
        yield model


@contextlib.contextmanager
def _layers_put_back(model: CtrModel) -> Iterator[None]:
    """After the block (also when it fails, e.g. a serving form could not be made), the
    model's TPM layer and tower are the ones it had before, in their order among its layers."""
    aggregator, tower = model.tpm, model.mlp
    tracked = list(model._self_tracked_trackables)  # noqa: SLF001  (see finally)
    try:
        yield
    finally:
        model.tpm, model.mlp = aggregator, tower
        # Keras appends a re-assigned layer to the model's tracked layers: put them back in
        # their order, so model.weights (get_weights/set_weights) keeps its order
        model._self_tracked_trackables[:] = tracked  # noqa: SLF001


def variable_key(model: keras.Model, variable: tf.Variable) -> str:
    """A variable's name without the model's own name, so models of one class match."""
    name = variable.name.split(":")[0]
    prefix = model.name + "/"
    return name[len(prefix):] if name.startswith(prefix) else name


def embedding_table(model: CtrModel, feature: str) -> tuple[list[str], np.ndarray]:
    """(tokens, rows) of a vocabulary feature's embedding, OOV row excluded."""
    vectors = model.encoder.embeddings[feature].embeddings.numpy()
    return list(model.encoder.vocabs[feature]), vectors[1:]


def transfer_weights(source: CtrModel, target: CtrModel, reset_batchnorm: bool = True,
                     *, reset_batchnorm_affine: bool = False,
                     fresh_features: Sequence[str] = ()) -> dict[str, list[str]]:
    """Copies source weights into target by name. Vocabulary embeddings are matched by token
    (tokens new to target keep their fresh rows); TPM tables (the frozen snapshot data of the
    target's `tpm` layer) are not copied: the target has its own snapshots. BatchNorm moving
    statistics are reset when reset_batchnorm, its gamma/beta (scale/offset, and STAR's
    per-domain ones) when reset_batchnorm_affine. The embeddings of `fresh_features` (e.g.
    features whose spec changed) keep their fresh values. Returns which variables were copied,
    remapped, reset and left fresh; `shape_changed` lists the fresh ones whose shape differs in
    source (e.g. the first MLP kernel after the feature set changed)."""
    report: dict[str, list[str]] = {"copied": [], "remapped": [], "reset": [], "fresh": [],
                                    "shape_changed": []}
    affine = ("gamma", "beta", "domain_gamma", "domain_beta")  # normalization scale/offset
    source_vars = {variable_key(source, v): v for v in source.variables}
    vocab_vars = {variable_key(target, target.encoder.embeddings[name].embeddings): name
                  for name in target.encoder.vocabs}
    keep_fresh = {variable_key(target, target.encoder.embeddings[name].embeddings)
                  for name in fresh_features if name in target.encoder.embeddings}
    target_keys = [variable_key(target, v) for v in target.variables]
    tpm_layer = getattr(target, "tpm", None)  # its frozen snapshot data is the target's own
    frozen_tpm = {id(v) for v in tpm_layer.non_trainable_variables} if tpm_layer else set()
    normalized = {k.rsplit("/", 1)[0] for k in target_keys
                  if k.rsplit("/", 1)[-1] in ("moving_mean", "moving_variance")}
    for var, key in zip(target.variables, target_keys, strict=True):
        if "tpm_table_" in key or id(var) in frozen_tpm:
            continue
        layer, leaf = key.rsplit("/", 1) if "/" in key else ("", key)
        if reset_batchnorm and ("moving_mean" in key or "moving_variance" in key):
            var.assign(tf.zeros_like(var) if "moving_mean" in key else tf.ones_like(var))
            report["reset"].append(key)
            continue
        if reset_batchnorm_affine and layer in normalized and leaf in affine:
            var.assign(tf.ones_like(var) if "gamma" in leaf else tf.zeros_like(var))
            report["reset"].append(key)
            continue
        src = source_vars.get(key)
        if src is None or key in keep_fresh:
            report["fresh"].append(key)
        elif key in vocab_vars and vocab_vars[key] in source.encoder.vocabs:
            name = vocab_vars[key]
            _remap_rows(source.encoder.vocabs[name], src.numpy(), target.encoder.vocabs[name], var)
            report["remapped"].append(key)
        elif src.shape == var.shape:
            var.assign(src)
            report["copied"].append(key)
        else:
            report["fresh"].append(key)
            report["shape_changed"].append(key)
    logger.info(f"transfer {source.name} -> {target.name}: {len(report['copied'])} copied, "
                f"{len(report['remapped'])} embeddings remapped by token, {len(report['reset'])} "
                f"BatchNorm {'statistics and scale/offset' if reset_batchnorm_affine else 'statistics'} "
                f"reset, {len(report['fresh'])} fresh"
                + (f" ({', '.join(report['fresh'])})" if report["fresh"] else "")
                + (f"; shape changed, so started fresh: {', '.join(report['shape_changed'])}"
                   if report["shape_changed"] else ""))
    return report


def _remap_rows(source_tokens: Sequence[str], source_rows: np.ndarray,
                target_tokens: Sequence[str], target_var: tf.Variable) -> None:
    rows = target_var.numpy()
    index = {t: i + 1 for i, t in enumerate(source_tokens)}  # row 0 is OOV
    rows[0] = source_rows[0]
    for j, token in enumerate(target_tokens, start=1):
        i = index.get(token)
        if i is not None:
            rows[j] = source_rows[i]
    target_var.assign(rows)


def shift_output_prior(model: CtrModel, source_ctr: float, target_ctr: float) -> float:
    """Moves the output bias by logit(target_ctr) - logit(source_ctr): a model transferred to
    traffic with another base CTR (natural -> ad) starts calibrated to it. Returns the shift."""
    def logit(p: float) -> float:
        p = min(max(p, 1e-4), 1 - 1e-4)
        return float(np.log(p / (1 - p)))

    shift = logit(target_ctr) - logit(source_ctr)
    model.logit.bias.assign_add([shift])
    logger.info(f"output bias shifted by {shift:+.3f} (base CTR {source_ctr:.4f} -> {target_ctr:.4f})")
    return shift
