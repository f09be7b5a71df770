"""Tests for LogLoss, AUC and GAUC."""

import itertools
import math

import numpy as np

from ecdctr import metrics


def _pairwise_auc(y, s):
    pos = [b for a, b in zip(y, s, strict=True) if a == 1]
    neg = [b for a, b in zip(y, s, strict=True) if a == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300), 1)  # many ties
    assert abs(metrics.auc(y, s) - _pairwise_auc(y, s)) < 1e-9


def test_auc_edge_cases():
    assert metrics.auc([0, 1], [0.1, 0.9]) == 1.0
    assert metrics.auc([0, 1], [0.9, 0.1]) == 0.0
    assert metrics.auc([1, 1], [0.3, 0.4]) != metrics.auc([1, 1], [0.3, 0.4])  # NaN


def test_gauc_hand_computed():
    # user a: 2 rows, perfectly ranked (AUC 1); user b: 4 rows, AUC 0.5; user c: one class only.
    labels = [1, 0, 1, 0, 0, 1, 1, 1]
    scores = [0.9, 0.1, 0.2, 0.4, 0.3, 0.1, 0.5, 0.6]
    groups = ["a", "a", "b", "b", "b", "b", "c", "c"]
    # b: positives 0.2, 0.1 vs negatives 0.4, 0.3 -> 0 wins of 4 -> AUC 0.0
    expected = (1.0 * 2 + 0.0 * 4) / 6
    assert math.isclose(metrics.gauc(labels, scores, groups), expected)


def test_logloss_known_value():
    assert math.isclose(metrics.logloss([1, 0], [0.5, 0.5]), math.log(2))


def test_summary_keys():
    out = metrics.summary(np.array([0, 1, 0, 1]), np.array([0.1, 0.8, 0.3, 0.6]),
                          np.array(["u", "u", "v", "v"]))
    assert out["auc"] == 1.0 and out["gauc"] == 1.0 and out["rows"] == 4
    assert math.isclose(out["ctr"], 0.5)
