"""How sure a figure is: DeLong variances of AUC (alone and of a paired difference), the
user-level variance of GAUC, Poisson intervals of a click count and the calibration ratio's
interval. Pure numpy; the evaluator and the gate feed it counts, never rows."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
EXACT_POISSON = 200  # counts up to this get the exact Poisson interval
LOGIT_BINS = 1024  # paired AUC: scores binned on a logit grid of this many cells ...
LOGIT_RANGE = 16.0  # ... over [-16, 16] (cells 0.03 wide; probabilities beyond fall in the ends)


def delong_variance(clicks: np.ndarray, non_clicks: np.ndarray, u2: np.ndarray,
                    click_squares: np.ndarray, non_click_squares: np.ndarray) -> np.ndarray:
    """DeLong's variance of each group's AUC from its sorted-pass sums: u2 = sum over clicks of
    z = 2 x (non-clicks scored lower) + (non-clicks tied); click_squares = sum over clicks of
    z^2; non_click_squares = sum over non-clicks of (2 x (clicks scored lower) + clicks
    tied)^2. NaN with fewer than 2 of either class (the variance is not defined)."""
    m = np.asarray(clicks, np.float64)
    n = np.asarray(non_clicks, np.float64)
    u2 = np.asarray(u2, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u2 / (2.0 * m * n)
        # placements: V10 = z / 2n of a click; V01 = 1 - z' / 2m of a non-click
        v10_squares = np.asarray(click_squares, np.float64) / (4.0 * n * n)
        v01_squares = -n + u2 / m + np.asarray(non_click_squares, np.float64) / (4.0 * m * m)
        s10 = (v10_squares - m * auc * auc) / (m - 1.0)
        s01 = (v01_squares - n * auc * auc) / (n - 1.0)
        variance = np.maximum(s10, 0.0) / m + np.maximum(s01, 0.0) / n
    return np.where((m >= 2) & (n >= 2), variance, np.nan)


def interval(value: float, variance: float, low: float = 0.0, high: float = 1.0
             ) -> list[float] | None:
    """The 95% normal interval of a figure, clipped to [low, high]; None when the variance is
    not defined (too few clicks or non-clicks, or fewer than two users)."""
    if not (math.isfinite(value) and math.isfinite(variance)):
        return None
    half = Z95 * math.sqrt(max(variance, 0.0))
    return [max(low, value - half), min(high, value + half)]


def gauc_variance(aucs: np.ndarray, weights: np.ndarray) -> float:
    """Variance of the weighted mean of per-user AUCs with users as the sampled units (the
    linearised, sandwich variance of a ratio estimator, which a user-level bootstrap
    approximates): n/(n-1) x sum w_u^2 (A_u - GAUC)^2 / W^2. It holds both the noise of each
    user's AUC and the spread between users. NaN with fewer than two users."""
    a = np.asarray(aucs, np.float64)
    w = np.asarray(weights, np.float64)
    if len(a) < 2:
        return float("nan")
    total = float(w.sum())
    mean = float(np.sum(w * a) / total)
    return float(len(a) / (len(a) - 1) * np.sum((w * (a - mean)) ** 2) / total ** 2)


def poisson_interval(count: int) -> tuple[float, float]:
    """95% interval of a Poisson mean given one observed count: the exact (Garwood) interval
    up to EXACT_POISSON counts, by bisection on the Poisson distribution; Byar's
    approximation above (within 0.1% of it there)."""
    if count <= 0:
        return 0.0, -math.log(0.025)
    c = float(count)
    if count > EXACT_POISSON:
        low = c * (1 - 1 / (9 * c) - Z95 / (3 * math.sqrt(c))) ** 3
        c1 = c + 1
        return low, c1 * (1 - 1 / (9 * c1) + Z95 / (3 * math.sqrt(c1))) ** 3
    # low: P(X >= count | low) = 2.5%; high: P(X <= count | high) = 2.5%
    low = _bisect(lambda mu: 1 - _poisson_cdf(count - 1, mu) - 0.025, 0.0, c)
    high = _bisect(lambda mu: 0.025 - _poisson_cdf(count, mu), c, 3 * c + 10)
    return low, high


def _poisson_cdf(count: int, mu: float) -> float:
    term = total = math.exp(-mu)
    for k in range(1, count + 1):
        term *= mu / k
        total += term
    return total


def _bisect(rising: Callable[[float], float], low: float, high: float) -> float:
    """The root of an increasing function between low and high."""
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if rising(middle) < 0 else (low, middle)
    return (low + high) / 2


def calibration_interval(predicted: float, clicks: int) -> list[float | None]:
    """95% interval of predicted over expected clicks, from the Poisson interval of the clicks
    observed: [predicted / high, predicted / low]; the upper end is None when no click was
    seen (any under-prediction fits zero clicks)."""
    low, high = poisson_interval(clicks)
    return [predicted / high, predicted / low if low > 0 else None]


class PairedAuc:
    """The difference of two models' AUCs on the same rows and DeLong's variance of it, which
    counts how the two models' errors go together (the unpaired variance, the sum of both,
    overstates the noise of a difference several fold when the models are alike). Each class
    keeps a fixed LOGIT_BINS x LOGIT_BINS histogram of the two models' binned scores, so memory
    does not grow with the rows; the placements are taken from the binned scores (scores
    within 0.03 logit count as tied), so the variance is an estimate of that resolution, while
    the AUCs themselves come exact from the evaluator's sorted counts."""

    def __init__(self) -> None:
        self.histograms = np.zeros((2, LOGIT_BINS * LOGIT_BINS), np.int64)  # 16 MB

    def add(self, labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> None:
        """Adds rows: 0/1 labels and the two models' click probabilities."""
        cells = _logit_bin(first) * LOGIT_BINS + _logit_bin(second)
        y = np.asarray(labels).ravel().astype(bool)
        for label in (0, 1):
            self.histograms[label] += np.bincount(cells[y == bool(label)],
                                                  minlength=LOGIT_BINS * LOGIT_BINS)

    def result(self) -> dict:
        """{"clicks", "non_clicks", "auc_difference", "difference_variance"} of the binned
        scores: first's AUC minus second's, and DeLong's variance of that difference (NaN
        with fewer than 2 of either class)."""
        negatives, positives = (h.reshape(LOGIT_BINS, LOGIT_BINS) for h in self.histograms)
        m, n = int(positives.sum()), int(negatives.sum())
        out = {"clicks": m, "non_clicks": n, "auc_difference": float("nan"),
               "difference_variance": float("nan")}
        if m < 2 or n < 2:
            return out
        v10, v01, aucs = [], [], []
        for axis in (1, 0):  # first model: sum over the second's bins, and back
            pos, neg = positives.sum(axis=axis), negatives.sum(axis=axis)
            below_neg = np.cumsum(neg) - neg  # non-clicks in lower bins
            above_pos = pos.sum() - np.cumsum(pos)  # clicks in higher bins
            v10.append((below_neg + 0.5 * neg) / n)  # a click's placement by its bin
            v01.append((above_pos + 0.5 * pos) / m)  # a non-click's placement by its bin
            aucs.append(float(np.sum(pos * v10[-1]) / m))
        s10 = _covariance(positives, v10[0] - aucs[0], v10[1] - aucs[1], m)
        s01 = _covariance(negatives, v01[0] - aucs[0], v01[1] - aucs[1], n)
        contrast = np.array([1.0, -1.0])
        out["auc_difference"] = aucs[0] - aucs[1]
        out["difference_variance"] = float(contrast @ (s10 / m + s01 / n) @ contrast)
        return out


def _covariance(counts: np.ndarray, first: np.ndarray, second: np.ndarray, size: int
                ) -> np.ndarray:
    """2x2 sample covariance of two placement vectors over rows counted in a 2-D histogram."""
    aa = float(counts.sum(axis=1) @ (first * first))
    bb = float(counts.sum(axis=0) @ (second * second))
    ab = float(first @ counts @ second)
    return np.array([[aa, ab], [ab, bb]]) / (size - 1)


def _logit_bin(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64).ravel(), 1e-12, 1 - 1e-12)
    logit = np.log(p) - np.log1p(-p)
    cell = np.floor((logit + LOGIT_RANGE) / (2 * LOGIT_RANGE) * LOGIT_BINS)
    return np.clip(np.nan_to_num(cell, nan=0.0), 0, LOGIT_BINS - 1).astype(np.int64)
