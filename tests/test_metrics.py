"""Tests for LogLoss, AUC and GAUC."""

import itertools
import math

import numpy as np
import pytest

from ecdctr.evaluation import metrics
from ecdctr.evaluation.evaluator import Evaluator, GroupedAuc, pack


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


def _random_day(rows, seed, users):
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.3).astype(np.float32)
    scores = (np.round(rng.random(rows) * 20) / 20).astype(np.float32)  # many ties
    scores[rng.random(rows) < 0.1] = -0.0  # equal to 0.0
    groups = np.array([b"u%d" % i for i in rng.integers(0, users, rows)], dtype=object)
    domains = np.array([f"d{i}" for i in rng.integers(0, 4, rows)])
    return labels, scores, groups, domains


def _streamed(day, batch=97, **options):
    evaluator = Evaluator(per_domain=True, domain_bins=[["d0", "d1"], ["d3"], ["absent"]],
                          **options)
    for i in range(0, len(day[0]), batch):
        evaluator.add(*(column[i:i + batch] for column in day))
    return evaluator.result()


@pytest.mark.parametrize("spill", [{}, {"block_rows": 7}, {"chunk_rows": 300, "block_rows": 7, "fan_in": 2}])
def test_streamed_metrics_equal_the_whole_array_ones(spill):
    """Spilled runs (chunk_rows), blocks that end inside ties and groups (block_rows) and a
    multi-pass merge (fan_in): AUC, GAUC and per-domain AUC equal exactly."""
    labels, scores, groups, domains = day = _random_day(5000, 0, 600)
    out = _streamed(day, **spill)
    assert out["auc"] == metrics.auc(labels, scores)
    assert out["gauc"] == metrics.gauc(labels, scores, groups)
    assert out["gauc_groups"] == metrics._gauc(labels, scores, groups)[1] > 100
    assert math.isclose(out["logloss"], metrics.logloss(labels, scores), rel_tol=1e-12)
    assert out["rows"] == 5000 and out["ctr"] == float(np.mean(labels))
    assert math.isclose(out["mean_prediction"], float(np.mean(scores)), rel_tol=1e-6)
    assert out["per_domain_auc"] == {
        d: {"auc": metrics.auc(labels[domains == d], scores[domains == d]),
            "rows": int((domains == d).sum())} for d in ("d0", "d1", "d2", "d3")}
    both = np.isin(domains, ["d0", "d1"])
    assert out["bins"][0] == {"rows": int(both.sum()), "auc": metrics.auc(labels[both], scores[both])}
    assert out["bins"][2]["rows"] == 0 and math.isnan(out["bins"][2]["auc"])


def test_streamed_metrics_of_one_batch_equal_bit_for_bit():
    labels, scores, groups, domains = day = _random_day(300, 1, 40)
    out = _streamed(day, batch=4096)
    assert out["logloss"] == metrics.logloss(labels, scores)
    assert out["mean_prediction"] == float(np.mean(scores))


def test_a_tie_and_a_user_longer_than_the_blocks_are_counted_exactly():
    rng = np.random.default_rng(2)
    labels = (rng.random(3000) < 0.5).astype(np.float32)
    scores = np.full(3000, 0.25, np.float32)
    scores[:1000] = rng.random(1000).astype(np.float32)
    groups = np.array([b"a"] * 2000 + [b"b"] * 1000, dtype=object)
    out = _streamed((labels, scores, groups, np.full(3000, "d0")), chunk_rows=256, block_rows=16)
    assert out["auc"] == metrics.auc(labels, scores)
    assert out["gauc"] == metrics.gauc(labels, scores, groups)


def test_empty_and_one_class_days_give_nan_as_before():
    out = Evaluator().result()
    assert out["rows"] == 0 and out["gauc_groups"] == 0
    assert all(math.isnan(out[k]) for k in ("logloss", "auc", "gauc", "ctr", "mean_prediction"))
    evaluator = Evaluator()
    evaluator.add(np.ones(3), np.full(3, 0.5, np.float32), np.array([b"u"] * 3, dtype=object))
    out = evaluator.result()
    assert math.isnan(out["auc"]) and math.isnan(out["gauc"]) and out["ctr"] == 1.0


def test_spilled_runs_are_deleted():
    counter = GroupedAuc(chunk_rows=10)
    for i in range(5):
        counter.add(np.arange(10) % 3, np.linspace(0, 1, 10, dtype=np.float32) + i, np.arange(10) % 2)
    runs = list(counter._runs)
    assert len(runs) == 5 and not any(run.closed for run in runs)
    assert counter.counts()["groups"].tolist() == [0, 1, 2]
    assert all(run.closed for run in runs)


def test_packed_keys_tie_every_nan_and_refuse_groups_not_in_31_bits():
    quiet, signed = np.float32(np.nan), -np.float32(np.nan)  # two NaN bit patterns
    payload = np.array([0x7FC00001], np.uint32).view(np.float32)[0]
    keys = pack(np.zeros(3, np.int64), np.array([quiet, signed, payload], np.float32),
                np.zeros(3))
    assert len(set(keys.tolist())) == 1
    with pytest.raises(ValueError, match=r"2\*\*31"):
        pack(np.array([1 << 31]), np.zeros(1, np.float32), np.zeros(1))
    with pytest.raises(ValueError, match=r"2\*\*31"):
        pack(np.array([-1]), np.zeros(1, np.float32), np.zeros(1))
    with pytest.raises(ValueError, match="integers"):
        pack(np.array([1.5]), np.zeros(1, np.float32), np.zeros(1))
