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
    assert {d: {"auc": f["auc"], "rows": f["rows"]} for d, f in out["per_domain_auc"].items()} == {
        d: {"auc": metrics.auc(labels[domains == d], scores[domains == d]),
            "rows": int((domains == d).sum())} for d in ("d0", "d1", "d2", "d3")}
    both = np.isin(domains, ["d0", "d1"])
    assert {k: out["bins"][0][k] for k in ("rows", "auc")} == {
        "rows": int(both.sum()), "auc": metrics.auc(labels[both], scores[both])}
    assert out["bins"][0]["clicks"] == int(labels[both].sum()) and out["bins"][0]["auc_ci"]
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


def _delong_reference(y, s):
    """DeLong's variance by its definition: placements from every (click, non-click) pair."""
    pos = [b for a, b in zip(y, s, strict=True) if a == 1]
    neg = [b for a, b in zip(y, s, strict=True) if a == 0]

    def psi(p, n):
        return 1.0 if p > n else 0.5 if p == n else 0.0

    v10 = [sum(psi(p, n) for n in neg) / len(neg) for p in pos]
    v01 = [sum(psi(p, n) for p in pos) / len(pos) for n in neg]
    area = sum(v10) / len(v10)

    def sample_variance(v):
        return sum((x - area) ** 2 for x in v) / (len(v) - 1)

    return sample_variance(v10) / len(pos) + sample_variance(v01) / len(neg)


def _gauc_variance_reference(y, s, g):
    users = {}
    for label, score, user in zip(y, s, g, strict=True):
        users.setdefault(user, []).append((label, score))
    both = [rows for rows in users.values() if 0 < sum(r[0] for r in rows) < len(rows)]
    aucs = [_pairwise_auc(*zip(*rows, strict=True)) for rows in both]
    weights = [len(rows) for rows in both]
    total = sum(weights)
    mean = sum(a * w for a, w in zip(aucs, weights, strict=True)) / total
    k = len(both)
    return k / (k - 1) * sum((w * (a - mean)) ** 2 for a, w in zip(aucs, weights, strict=True)) / total ** 2


@pytest.mark.parametrize("spill", [{}, {"chunk_rows": 300, "block_rows": 7, "fan_in": 2}])
def test_intervals_equal_their_definitions_on_random_days_with_ties(spill):
    from ecdctr.evaluation.uncertainty import Z95

    labels, scores, groups, domains = day = _random_day(1500, 3, 40)
    out = _streamed(day, **spill)
    variance = _delong_reference(labels, scores)
    assert math.isclose(out["auc_se"] ** 2, variance, rel_tol=1e-9)
    half = Z95 * math.sqrt(variance)
    assert out["auc_ci"] == pytest.approx([out["auc"] - half, out["auc"] + half], rel=1e-9)
    assert out["clicks"] == int(labels.sum())
    assert math.isclose(out["gauc_se"] ** 2, _gauc_variance_reference(labels, scores, groups),
                        rel_tol=1e-9)
    for d in ("d0", "d3"):
        rows = domains == d
        low, high = out["per_domain_auc"][d]["auc_ci"]
        reference = Z95 * math.sqrt(_delong_reference(labels[rows], scores[rows]))
        assert math.isclose(high - low, 2 * reference, rel_tol=1e-9)
        assert out["per_domain_auc"][d]["clicks"] == int(labels[rows].sum())


def test_the_gauc_interval_agrees_with_a_user_bootstrap():
    labels, scores, groups, _ = day = _random_day(3000, 4, 60)
    out = _streamed(day)
    rng = np.random.default_rng(0)
    users = np.unique(groups)
    rows_of = {u: np.flatnonzero(groups == u) for u in users}
    values = []
    for _ in range(300):
        picked = np.concatenate([rows_of[u] for u in rng.choice(users, len(users))])
        # a user drawn twice is one user with every row twice: the same AUC at twice the weight
        values.append(metrics.gauc(labels[picked], scores[picked], groups[picked]))
    assert 0.6 < np.std(values) / out["gauc_se"] < 1.6


def test_a_day_without_enough_of_a_class_has_no_interval_but_its_clicks():
    evaluator = Evaluator()
    evaluator.add(np.array([1, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3], np.float32),
                  np.array([b"u"] * 4, dtype=object))
    out = evaluator.result()
    assert out["auc"] == 1.0 and out["clicks"] == 1 and out["auc_ci"] is None
    assert math.isnan(out["auc_se"]) and out["gauc_ci"] is None


def test_calibration_ratio_interval_and_equal_mass_error():
    from ecdctr.evaluation.uncertainty import poisson_interval

    rng = np.random.default_rng(5)
    probs = rng.uniform(0.01, 0.2, 4000).astype(np.float32)
    labels = (rng.random(4000) < probs * 1.5).astype(np.float32)  # clicked more than predicted
    domains = np.where(rng.random(4000) < 0.5, "a", "b")
    evaluator = Evaluator(per_domain=True)
    for i in range(0, 4000, 333):
        evaluator.add(labels[i:i + 333], probs[i:i + 333],
                      np.array([b"u"] * len(labels[i:i + 333]), dtype=object), domains[i:i + 333])
    out = evaluator.result()
    predicted, clicks = float(probs.astype(np.float64).sum()), int(labels.sum())
    # predicted clicks are summed in float32 batch by batch, as the mean prediction is
    assert math.isclose(out["predicted_clicks"], predicted, rel_tol=1e-6)
    assert math.isclose(out["calibration_ratio"], predicted / clicks, rel_tol=1e-6)
    low, high = poisson_interval(clicks)
    assert out["calibration_ci"] == pytest.approx([predicted / high, predicted / low], rel=1e-6)
    assert out["calibration_ci"][1] < 1  # under-predicts, and knows it
    order = np.argsort(probs, kind="stable")
    ece = sum(abs(float(probs[part].astype(np.float64).sum()) - float(labels[part].sum()))
              for part in np.array_split(order, 10)) / 4000
    assert math.isclose(out["calibration_error"], ece, rel_tol=1e-9)
    for d in ("a", "b"):
        rows = domains == d
        part = out["per_domain_calibration"][d]
        assert part["rows"] == int(rows.sum()) and part["clicks"] == int(labels[rows].sum())
        assert math.isclose(part["calibration_ratio"],
                            float(probs[rows].astype(np.float64).sum()) / labels[rows].sum(),
                            rel_tol=1e-9)


def test_poisson_interval_is_close_to_the_exact_one():
    from ecdctr.evaluation.uncertainty import poisson_interval

    # exact Garwood 95% limits (chi-square quantiles / 2)
    exact = {0: (0.0, 3.689), 1: (0.0253, 5.572), 5: (1.623, 11.668), 30: (20.241, 42.827)}
    for count, (low, high) in exact.items():
        got = poisson_interval(count)
        assert got[0] == pytest.approx(low, rel=0.02, abs=1e-3)
        assert got[1] == pytest.approx(high, rel=0.01)
