"""Offline CTR metrics: LogLoss, AUC and GAUC (impression-weighted mean of per-user AUC)."""

from __future__ import annotations

import numpy as np


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy."""
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(scores)]
    ranks = np.empty(len(scores))
    ranks[order] = ((first + last + 1) / 2.0)[group]
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN with one class only."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: the mean of per-group AUC weighted by the group's impressions, over groups
    that have both a click and a non-click (others carry no ranking signal); NaN if none."""
    return _gauc(labels, scores, groups)[0]


def _gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """(GAUC, number of groups it averages over)."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, np.float64).ravel()
    _, inverse = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    bounds = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0, True])
    total, weight, counted = 0.0, 0, 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        clicks = y[idx].sum()
        if 0 < clicks < len(idx):
            total += auc(y[idx], s[idx]) * len(idx)
            weight += len(idx)
            counted += 1
    return (total / weight if weight else float("nan")), counted


def size_bins(sizes: dict[str, int], bins: int = 5) -> list[list[str]]:
    """Splits domains, largest first, into `bins` groups holding about equal numbers of rows
    (equal-frequency bins): the first holds the few largest domains, the last the long tail."""
    ordered = sorted(sizes, key=lambda k: (-sizes[k], k))
    total = float(sum(sizes.values())) or 1.0
    groups: list[list[str]] = [[] for _ in range(bins)]
    seen = 0
    for key in ordered:
        b = min(int(seen / total * bins), bins - 1)
        groups[b].append(key)
        seen += sizes[key]
    return groups


def uplifted_share(domain_auc: dict[str, dict], baseline_auc: dict[str, dict]) -> float:
    """Share of domains (scored by both) where the AUC is above the baseline's."""
    common = [k for k in domain_auc if k in baseline_auc]
    if not common:
        return float("nan")
    return sum(domain_auc[k]["auc"] > baseline_auc[k]["auc"] for k in common) / len(common)
