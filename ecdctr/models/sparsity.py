"""AdaSparse's sparsity: the band regularizer, its controller, and the achieved sparsity per
layer, overall and per domain-size bin (for compare, the daily report and TensorBoard)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:  # ctr_model imports this module through adasparse
    from ecdctr.models.ctr_model import CtrModel

SIZE_BINS = 5  # equal-traffic domain-size bins the achieved sparsity is reported by (as compare)


def sparsity_regularizer(zero_shares: Sequence[tf.Tensor], lambda_hat: tf.Tensor | float,
                         r_min: float, r_max: float) -> tf.Tensor:
    """R = (1/L) sum_l lambda_l |r_l - r_bar|, r_bar = (r_min + r_max) / 2, with lambda_l = 0 for
    r_l in [r_min, r_max] and lambda_hat |r_l - r_bar| outside. lambda_l is a coefficient (no
    gradient), so outside the band dR/dr_l = lambda_l sign(r_l - r_bar) / L. lambda_hat: one
    value, or one per layer (the controller's)."""
    target = (r_min + r_max) / 2
    weights = tf.broadcast_to(tf.convert_to_tensor(lambda_hat, tf.float32), [len(zero_shares)])
    terms = []
    for i, share in enumerate(zero_shares):
        gap = tf.abs(share - target)
        outside = tf.logical_or(share < r_min, share > r_max)
        weight = tf.where(outside, weights[i] * tf.stop_gradient(gap), 0.0)
        terms.append(weight * gap)
    return tf.add_n(terms) / len(terms)


def controlled_shift(shift: tf.Variable, zero_shares: Sequence[tf.Tensor], alpha: tf.Tensor,
                     r_min: float, r_max: float, rate: float) -> None:
    """One step of the sparsity controller: shift [L] (the logit each layer's pruner
    subtracts, a variable saved with the model) grows by rate (r_bar - r_l) / alpha for each
    layer whose zero share r_l is outside [r_min, r_max] (r_bar: the band's centre), so the
    layer prunes more when below the band and less when above; inside the band it stays. The
    step is in logit units divided by alpha: the factors threshold alpha (v - shift)."""
    shares = tf.stop_gradient(tf.stack(zero_shares))
    outside = tf.logical_or(shares < r_min, shares > r_max)
    gap = tf.where(outside, (r_min + r_max) / 2 - shares, 0.0)
    shift.assign_add(rate * gap / alpha)


def measure(model: CtrModel, dataset: tf.data.Dataset, bins: Iterable[Sequence[str]],
            max_batches: int = 8) -> dict[str, list]:
    """The achieved sparsity of an AdaSparse CtrModel on up to max_batches batches of dataset
    ((features, labels), at the inference alpha): {"layers": per layer, "bins": per bin of
    domain names (None: no rows of the bin)}; rows of a domain the model does not know count
    as "<unseen>"."""
    tally = SparsityTally()
    names = np.array(["<unseen>", *model.domains])  # the model's own domain index
    for features, _ in dataset.take(max_batches):
        x, e_d, index, _ = model.tower_inputs(features)
        tally.add([m.numpy() for m in model.mlp.masks(x, e_d)], names[index.numpy()])
    return {"layers": tally.overall(), "bins": tally.by_bin(bins)}


class SparsityTally:
    """Counts pruned factors per layer and per domain over scored batches; reads them out
    overall and per domain-size bin. Feed it the tower's masks (AdaSparseMlp.masks) and each
    row's domain name."""

    def __init__(self) -> None:
        self.pruned: dict[str, np.ndarray] = {}  # per domain: pruned factors per layer
        self.factors: dict[str, np.ndarray] = {}  # per domain: factors per layer
        self.rows: dict[str, int] = {}

    def add(self, masks: Sequence[np.ndarray], domains: np.ndarray) -> None:
        """masks: per layer [B, N_l] (1 kept, 0 pruned); domains: [B] each row's domain."""
        for d in np.unique(domains):
            rows = domains == d
            pruned = np.array([float((1.0 - m[rows]).sum()) for m in masks])
            total = np.array([float(m[rows].size) for m in masks])
            key = str(d)
            self.pruned[key] = self.pruned.get(key, 0.0) + pruned
            self.factors[key] = self.factors.get(key, 0.0) + total
            self.rows[key] = self.rows.get(key, 0) + int(rows.sum())

    def overall(self) -> list[float]:
        """Per layer, the share of pruned factors over every row seen."""
        return self._share(self.pruned)

    def by_bin(self, bins: Iterable[Sequence[str]]) -> list[list[float] | None]:
        """Per bin (lists of domain names, e.g. metrics.size_bins), the share per layer of
        pruned factors over its rows; None for a bin none of whose domains was seen."""
        return [self._share({d: self.pruned[d] for d in b if d in self.pruned}) or None
                for b in bins]

    def _share(self, pruned: dict[str, np.ndarray]) -> list[float]:
        if not pruned:
            return []
        kept = sum(pruned.values())
        total = sum(self.factors[d] for d in pruned)
        return [round(float(p / t), 4) for p, t in zip(kept, total, strict=True)]


def write_tensorboard(folder: str, step: int, overall: Sequence[float],
                      by_bin: Sequence[Sequence[float] | None], prefix: str = "sparsity") -> None:
    """Writes the achieved sparsity as TensorBoard scalars at `step`: <prefix>/layer_<l> and
    <prefix>/bin_<b>/layer_<l> (bin 1: the largest domains)."""
    writer = tf.summary.create_file_writer(folder)
    with writer.as_default():
        for layer, share in enumerate(overall):
            tf.summary.scalar(f"{prefix}/layer_{layer}", share, step=step)
        for b, shares in enumerate(by_bin):
            for layer, share in enumerate(shares or ()):
                tf.summary.scalar(f"{prefix}/bin_{b + 1}/layer_{layer}", share, step=step)
    writer.close()
