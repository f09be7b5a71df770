"""Calibration of scored rows: predicted over observed clicks with its interval, and the
expected calibration error over equal-mass bins, taken from the evaluator's sorted pass."""

from __future__ import annotations

import numpy as np

from ecdctr.evaluation.uncertainty import calibration_interval

CALIBRATION_BINS = 10  # equal-mass bins of the expected calibration error


class EqualMassBins:
    """Rows, clicks and predicted clicks of CALIBRATION_BINS bins of equal row counts over
    the rows in ascending score order; fed the sorted scores block by block, so it holds one
    triple per bin. A tie that straddles a bin edge is split by position."""

    def __init__(self, rows: int, bins: int = CALIBRATION_BINS):
        self.total, self.bins, self.seen = rows, bins, 0
        self.rows = np.zeros(bins, np.int64)
        self.clicks = np.zeros(bins, np.int64)
        self.predicted = np.zeros(bins, np.float64)

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Adds the next rows in ascending score order."""
        position = self.seen + np.arange(len(scores), dtype=np.int64)
        index = np.minimum(position * self.bins // max(self.total, 1), self.bins - 1)
        self.rows += np.bincount(index, minlength=self.bins)
        self.clicks += np.bincount(index, weights=labels, minlength=self.bins).astype(np.int64)
        self.predicted += np.bincount(index, weights=np.asarray(scores, np.float64),
                                      minlength=self.bins)
        self.seen += len(scores)

    def error(self) -> float:
        """Expected calibration error: sum over bins of |predicted - observed clicks| / rows."""
        if not self.seen:
            return float("nan")
        return float(np.sum(np.abs(self.predicted - self.clicks)) / self.seen)


def calibration(rows: int, clicks: int, predicted: float) -> dict:
    """{"predicted_clicks", "calibration_ratio", "calibration_ci"}: predicted over observed
    clicks (NaN without a click) and its 95% interval from the clicks' Poisson interval."""
    ratio = predicted / clicks if clicks else float("nan")
    return {"predicted_clicks": predicted,
            "calibration_ratio": ratio if rows else float("nan"),
            "calibration_ci": calibration_interval(predicted, clicks) if rows else None}
