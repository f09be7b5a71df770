"""AdaSparse (CIKM 2022): an MLP tower whose neurons a light pruner per layer prunes per domain.

As published (equation 3), the pruner of layer l reads [e_d ; h^l] and scales h^l, the input of
W^l, so layer 0's pruner prunes the embedding layer's output (placement "input", the default);
placement "output" instead scales each layer's output h^{l+1} (this project's earlier form).
Option pruner_input "domain" makes every pruner read e^d alone, so the factors are per domain.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ecdctr.models.sparsity import controlled_shift, sparsity_regularizer
from ecdctr.models.tower import Tower

FORMS = ("binarization", "scaling", "fusion")
PLACEMENTS = ("input", "output")
PRUNER_INPUTS = ("layer", "domain")
EXPORT_FORMS = ("tables", "compacted")
FALLBACK_RAMP_STEPS = 1000  # the ramp of a tower trained without plan_schedule (ramp_steps 0)


@dataclass(frozen=True)
class AdaSparseConfig:
    """Pruner form and schedules (defaults from the paper).

    form: binarization pi = 1[sigmoid(alpha v) > epsilon] (the paper's sign(sigmoid(alpha v) -
    epsilon) as a {0, 1} step), scaling pi = beta sigmoid(v), fusion
    pi = beta sigmoid(alpha v) 1[beta sigmoid(alpha v) > epsilon].
    placement: "input" (as published) scales each layer's input, so the first pruner prunes the
    tower input (the embeddings); "output" scales each layer's output instead.
    pruner_input: "layer" (as published) feeds pruner l [e_d ; h_l]; "domain" feeds it e_d
    alone, so a row's factors depend on its domain-aware features only (cheaper to train, and
    the export computes all pruners in one small matmul on e_d).
    alpha and the regularizer weight lambda_hat rise linearly over the ramp, alpha from
    alpha_start to alpha_end, lambda_hat from lambda_start to lambda_end; both then stay. The
    ramp: ramp_steps training steps when > 0; with 0 (the default) ramp_epochs of the first
    fit's epoch (its steps known from its training rows and batch size, AdaSparseMlp.plan_schedule),
    so it ends within the fits early stopping makes. Steps are counted over the model's whole
    training (warm starts and daily updates included), not per fit.
    r_min, r_max: the band of per-layer sparsity the regularizer leaves alone.
    export_form (serving only, with pruner_input "domain" and tabulated factors): "tables"
    gathers each row's factors; "compacted" serves each domain's MLP with its pruned neurons
    removed on requests of one domain (adasparse_compact; BENCHMARKS.md section 9 says when
    it pays).
    control_rate: the sparsity controller. Each training step, for each layer whose zero share
    r is outside [r_min, r_max], the threshold its pruner's logits must clear moves by
    control_rate (r_bar - r) / alpha (r_bar: the band's centre), so a layer pruning too little
    prunes more and one pruning too much less; the regularizer and the task still decide which
    neurons. 0 turns it off (the paper's regularizer alone).
    """

    form: str = "fusion"
    placement: str = "input"
    pruner_input: str = "layer"
    beta: float = 2.0
    epsilon: float = 0.25
    alpha_start: float = 0.1
    alpha_end: float = 5.0
    ramp_steps: int = 0
    ramp_epochs: float = 0.5
    r_min: float = 0.15
    r_max: float = 0.25
    lambda_start: float = 0.01
    lambda_end: float = 1.0
    export_form: str = "tables"
    control_rate: float = 0.5

    def __post_init__(self) -> None:
        checks = (
            ("form", self.form in FORMS, f"one of {list(FORMS)}"),
            ("placement", self.placement in PLACEMENTS, f"one of {list(PLACEMENTS)}"),
            ("pruner_input", self.pruner_input in PRUNER_INPUTS, f"one of {list(PRUNER_INPUTS)}"),
            ("beta", self.beta > 0, "> 0"),
            ("epsilon", 0 < self.epsilon < min(1.0, self.beta), "in (0, min(1, beta))"),
            ("alpha_start", self.alpha_start > 0, "> 0"),
            ("alpha_end", self.alpha_end >= self.alpha_start, ">= alpha_start"),
            ("ramp_steps", isinstance(self.ramp_steps, int) and self.ramp_steps >= 0,
             "an integer >= 0 (0: ramp_epochs of the first fit's epoch)"),
            ("ramp_epochs", self.ramp_epochs > 0, "> 0"),
            ("r_min", 0 <= self.r_min <= 1, "in [0, 1]"),
            ("r_max", self.r_min <= self.r_max <= 1, "in [r_min, 1]"),
            ("lambda_start", self.lambda_start >= 0, ">= 0"),
            ("lambda_end", self.lambda_end >= self.lambda_start, ">= lambda_start"),
            ("export_form", self.export_form in EXPORT_FORMS, f"one of {list(EXPORT_FORMS)}"),
            ("control_rate", self.control_rate >= 0, ">= 0 (0: no sparsity controller)"),
        )
        for field, ok, requirement in checks:
            if not ok:
                raise ValueError(f"AdaSparseConfig.{field} must be {requirement}, "
                                 f"got {getattr(self, field)!r}")


class DomainPruner(keras.layers.Layer):
    """One dense layer on [domain_embedding ; layer_input] (config.pruner_input "domain":
    domain_embedding alone) -> `units` factors (logits v), one per entry of what it scales (the
    layer input under placement "input", the layer output under "output").

    call returns (factors pi [B, N], zero share r): the forward values are the hard ones of the
    config's form. Straight-through estimates keep gradients flowing to the pruner:
    binarization's gradient is that of sigmoid(alpha v); fusion's is that of beta sigmoid(alpha v)
    as if the indicator were 1, so pruned neurons still learn and can come back. The zero share
    is the exact share of zero factors forward, with the gradient of the mean of the soft zero
    indicator sigmoid(t - alpha v), where t is the logit threshold (pi = 0 iff alpha v <= t).
    Under scaling no factor is exactly zero, so r = 0 (a constant).
    """

    def __init__(self, units: int, config: AdaSparseConfig = AdaSparseConfig(), **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.config = config
        self.dense = keras.layers.Dense(units, name="dense")

    def logits(self, domain_embedding: tf.Tensor, layer_input: tf.Tensor) -> tf.Tensor:
        """The pruner's logits v [B, N]."""
        if self.config.pruner_input == "domain":
            return self.dense(domain_embedding)
        return self.dense(tf.concat([domain_embedding, layer_input], axis=-1))

    def call(self, domain_embedding: tf.Tensor, layer_input: tf.Tensor, alpha: tf.Tensor,
             shift: tf.Tensor | float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
        """(factors, zero share) of logits v - shift (shift: the sparsity controller's)."""
        return self.factors(self.logits(domain_embedding, layer_input) - shift, alpha)

    def factors(self, logits: tf.Tensor, alpha: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(pi, zero share) from logits v at temperature alpha (see the class docstring)."""
        c = self.config
        if c.form == "scaling":
            return c.beta * tf.sigmoid(logits), tf.zeros([], logits.dtype)
        soft = tf.sigmoid(alpha * logits)
        if c.form == "binarization":
            surrogate = soft
            hard = tf.cast(soft > c.epsilon, logits.dtype)
            threshold = c.epsilon
        else:
            surrogate = c.beta * soft
            hard = surrogate * tf.cast(surrogate > c.epsilon, logits.dtype)
            threshold = c.epsilon / c.beta
        # hard + (s - s) is exactly hard forward (binary factors stay exactly 0/1); gradient ds.
        factors = hard + (surrogate - tf.stop_gradient(surrogate))
        soft_zero = tf.sigmoid(math.log(threshold / (1 - threshold)) - alpha * logits)
        return factors, _straight_through(tf.reduce_mean(tf.cast(hard == 0, logits.dtype)),
                                          tf.reduce_mean(soft_zero))

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units,
                "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config: dict) -> DomainPruner:
        return cls(**{**config, "config": AdaSparseConfig(**config["config"])})


def _straight_through(hard: tf.Tensor, soft: tf.Tensor) -> tf.Tensor:
    """hard's value with soft's gradient."""
    return hard + (soft - tf.stop_gradient(soft))


def _sparse_input_dense(x: tf.Tensor, dense: keras.layers.Dense) -> tf.Tensor:
    """dense(x) through tf.sparse: only x's nonzero entries (kept, active neurons) are multiplied."""
    return sparse_input_affine(x, dense.kernel, dense.bias)


def sparse_input_affine(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """x kernel + bias through tf.sparse: only x's nonzero entries are multiplied."""
    index = tf.where(tf.not_equal(x, 0))
    rows = tf.SparseTensor(index, tf.gather_nd(x, index), tf.shape(x, out_type=tf.int64))
    return tf.nn.bias_add(tf.sparse.sparse_dense_matmul(rows, kernel), bias)


class AdaSparseMlp(Tower):
    """The Mlp tower (dense_<l>, bn_<l> match it by name) with a DomainPruner pruner_<l> per
    layer. domain_embedding is required; domain_index is unused.

    placement "input" (the default, as published): pi_l = pruner_l([e_d ; x_l]) has x_l's width,
    x_l' = x_l * pi_l, x_{l+1} = dropout(relu(bn(dense_l(x_l')))); x_0 is the tower input (the
    embeddings), so pruner_0's width is the tower input's width, known when the tower is built
    (the pruners are created in build). The last layer's output is not pruned.
    placement "output": h = relu(bn(dense_l(x_l))), pi_l = pruner_l([e_d ; x_l]) has N_l
    factors, x_{l+1} = dropout(h * pi_l).
    config.pruner_input "domain": pi_l = pruner_l(e_d) under either placement, so the factors
    are a function of the row's domain-aware features alone.

    The schedule lives in non-trainable variables saved with the model and copied by name
    when a model warm-starts from another (so a daily update continues it): alpha, the step
    counter pruning_step, the ramp's length ramp_length (0 until plan_schedule sets it from
    the first fit's epoch) and the controller's per-layer logit shifts pruner_shift (pruner l's
    factors read v - shift_l; exports fold it into the pruner's bias). Each
    training-mode call (one per training step) advances the counter and sets alpha (and the
    regularizer weight lambda_hat) from it: after k steps alpha = alpha_start + (alpha_end -
    alpha_start) min(k / ramp, 1), ramp = config.ramp_steps if > 0, else ramp_length (else
    FALLBACK_RAMP_STEPS), so alpha depends on the steps trained so far, never on how long one
    fit is; then each layer's shift moves as config.control_rate says. Inference calls read
    alpha and change nothing.

    In training mode the sparsity regularizer (see sparsity_regularizer) is added with add_loss
    (except under scaling, where r_l = 0 is a constant without gradient); every call reports
    each layer's zero share r_l (the share of zero factors of pruner_l) as the metric
    sparsity_<l>.

    sparse_inference (a Python attribute, read when the call is traced): at inference, a layer
    whose input carries the pruned zeros multiplies only the nonzero entries of that input via
    tf.sparse: every layer under placement "input" (layer 0 included), the layers after the
    first under "output". The result equals the dense path up to float summation order (so a
    pruner logit within rounding of the threshold may flip its factor); which path is faster
    depends on sparsity: measure.
    """

    has_sparse_path = True

    def __init__(self, hidden: Sequence[int], config: AdaSparseConfig = AdaSparseConfig(),
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden = tuple(int(u) for u in hidden)
        self.config = config
        self.dropout_rate = dropout
        self.sparse_inference = False
        self.dense = [keras.layers.Dense(u, name=f"dense_{i}") for i, u in enumerate(self.hidden)]
        self.norms = [keras.layers.BatchNormalization(name=f"bn_{i}") for i in range(len(self.hidden))]
        self.pruners: list[DomainPruner] = []  # made in build: pruner_0 may need the input width
        self.dropout = keras.layers.Dropout(dropout) if dropout else None
        # Created here, not with add_metric inside call: their variables then exist before any
        # tracing, so an untrained model saves too; fit reports them, TensorBoard logs them.
        self.sparsity_metrics = [keras.metrics.Mean(name=f"sparsity_{i}")
                                 for i in range(len(self.hidden))]

    def build(self, input_shape: tf.TensorShape) -> None:
        width = tf.TensorShape(input_shape)[-1]
        if self.config.placement == "input" and width is None:
            raise ValueError("AdaSparseMlp with placement 'input' prunes the tower input: its "
                             f"last dimension must be known when built, got shape {input_shape}")
        widths = self.hidden if self.config.placement == "output" else (int(width), *self.hidden[:-1])
        self.pruners = [DomainPruner(u, self.config, name=f"pruner_{i}")
                        for i, u in enumerate(widths)]
        schedule = {"trainable": False, "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA}
        self.alpha = self.add_weight(
            name="alpha", shape=(), dtype=tf.float32,
            initializer=keras.initializers.Constant(self.config.alpha_start), **schedule)
        self.step = self.add_weight(name="pruning_step", shape=(), dtype=tf.int64,
                                    initializer="zeros", **schedule)
        self.ramp_length = self.add_weight(name="ramp_length", shape=(), dtype=tf.float32,
                                           initializer="zeros", **schedule)
        self.pruner_shift = self.add_weight(name="pruner_shift", shape=(len(self.hidden),),
                                            dtype=tf.float32, initializer="zeros", **schedule)
        super().build(input_shape)

    @property
    def ramp_steps(self) -> int:
        """Training steps alpha and lambda_hat take to reach their end values: the config's
        ramp_steps when > 0, else the planned ramp_length (0: not planned yet)."""
        if self.config.ramp_steps:
            return self.config.ramp_steps
        return int(self.ramp_length.numpy()) if self.built else 0

    def plan_schedule(self, steps_per_epoch: int) -> None:
        """Sets the ramp to config.ramp_epochs of an epoch of steps_per_epoch steps, unless the
        config fixes ramp_steps or a ramp is already planned (by an earlier fit, or copied
        from the model this one warm-starts from). Call it before the tower's first fit."""
        if self.built and not self.config.ramp_steps and float(self.ramp_length) == 0:
            self.ramp_length.assign(max(1.0, round(self.config.ramp_epochs * steps_per_epoch)))

    def call(self, x: tf.Tensor, domain_embedding: tf.Tensor | None = None,
             domain_index: tf.Tensor | None = None, training: bool | None = None) -> tf.Tensor:
        if domain_embedding is None:
            raise ValueError("AdaSparseMlp prunes per domain: pass domain_embedding [B, E]")
        if training:
            alpha, lambda_hat = self._advance_schedule()
        else:
            alpha, lambda_hat = tf.convert_to_tensor(self.alpha), None
        sparse = bool(self.sparse_inference and not training and all(d.built for d in self.dense))
        y, _, zero_shares = self._forward(x, domain_embedding, alpha, training, sparse)
        if training:  # never in serving: a metric would be state written by every request
            for i, share in enumerate(zero_shares):
                self.sparsity_metrics[i].update_state(tf.stop_gradient(share))
        if training and self.config.form != "scaling":
            self.add_loss(sparsity_regularizer(zero_shares, lambda_hat, self.config.r_min,
                                               self.config.r_max))
            if self.config.control_rate:
                c = self.config
                controlled_shift(self.pruner_shift, zero_shares, alpha, c.r_min, c.r_max,
                                 c.control_rate)
        return y

    def masks(self, x: tf.Tensor, domain_embedding: tf.Tensor) -> list[tf.Tensor]:
        """Per layer l, 1 where pruner_l's factor is nonzero (kept) and 0 where it is zero
        (pruned), at the saved (inference) alpha: [B, width of layer l's input] under placement
        "input" (layer 0: the tower input), [B, N_l] under "output". Pass the rows of one domain
        for that domain's masks."""
        if not self.built:
            self(x, domain_embedding=domain_embedding, training=False)
        _, factors, _ = self._forward(x, domain_embedding, tf.convert_to_tensor(self.alpha),
                                      training=False, sparse=False)
        return [tf.cast(f != 0, tf.float32) for f in factors]

    def sparsity(self, x: tf.Tensor, domain_embedding: tf.Tensor) -> list[float]:
        """Per layer, the share of pruned factors r_l over these rows at the inference alpha."""
        return [1.0 - float(tf.reduce_mean(m)) for m in self.masks(x, domain_embedding)]

    def _advance_schedule(self) -> tuple[tf.Tensor, tf.Tensor]:
        self.step.assign_add(1)
        c = self.config
        ramp = (tf.constant(float(c.ramp_steps)) if c.ramp_steps else
                tf.where(self.ramp_length > 0, self.ramp_length, float(FALLBACK_RAMP_STEPS)))
        progress = tf.minimum(tf.cast(self.step, tf.float32) / ramp, 1.0)
        alpha = c.alpha_start + (c.alpha_end - c.alpha_start) * progress
        self.alpha.assign(alpha)
        return alpha, c.lambda_start + (c.lambda_end - c.lambda_start) * progress

    def _forward(self, x: tf.Tensor, domain_embedding: tf.Tensor, alpha: tf.Tensor,
                 training: bool | None, sparse: bool
                 ) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor]]:
        factors, zero_shares = [], []
        prune_input = self.config.placement == "input"
        for i, (dense, norm, pruner) in enumerate(zip(self.dense, self.norms, self.pruners,
                                                      strict=True)):
            if prune_input:
                pi, share = pruner(domain_embedding, x, alpha, self.pruner_shift[i])
                x = x * pi
                z = _sparse_input_dense(x, dense) if sparse else dense(x)
                x = tf.nn.relu(norm(z, training=training))
            else:  # dense before pruner, as this form always ran: a seed gives the same weights
                z = _sparse_input_dense(x, dense) if sparse and i > 0 else dense(x)
                h = tf.nn.relu(norm(z, training=training))
                pi, share = pruner(domain_embedding, x, alpha, self.pruner_shift[i])
                x = h * pi
            if self.dropout is not None:
                x = self.dropout(x, training=training)
            factors.append(pi)
            zero_shares.append(share)
        return x, factors, zero_shares

    def for_serving(self, domain_columns: Sequence[int] = (),
                    domain_tables: Sequence[np.ndarray] | None = None) -> Tower:
        """This tower's inference computation with its constants folded (AdaSparseServingMlp),
        the form exports serve; the tower itself is left as it is. domain_columns: the
        columns of the tower input that hold domain_embedding, if it carries it (as
        CtrModel's does); pruner_0 then reads the tower input alone. domain_tables: the
        embedding tables whose rows domain_embedding concatenates
        (FeatureEncoder.domain_tables); with pruner_input "domain" the factors are then
        tabulated per combination of their rows (see AdaSparseServingMlp) and, with
        export_form "compacted", each domain's MLP is served compacted
        (adasparse_compact.compacted: its pruned neurons removed, its factors folded in)."""
        if not self.built:
            raise ValueError("for_serving needs a built AdaSparseMlp: call it on a batch first")
        from ecdctr.models.adasparse_serving import serving_tower  # that module imports this one
        return serving_tower(self, domain_columns, domain_tables)

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden": list(self.hidden),
                "config": dataclasses.asdict(self.config), "dropout": self.dropout_rate}

    @classmethod
    def from_config(cls, config: dict) -> AdaSparseMlp:
        return cls(**{**config, "config": AdaSparseConfig(**config["config"])})
