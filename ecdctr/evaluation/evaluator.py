"""Exact LogLoss, AUC, GAUC and per-domain AUC of scored batches in bounded memory: each row
becomes one 64-bit key (group, float32 score, label); keys are sorted in chunks, spilled to
temporary files and merged block by block into per-group counts (an external sort). The same
pass gives DeLong's variances and the calibration bins."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO

import numpy as np

from ecdctr.evaluation.calibration import EqualMassBins, calibration
from ecdctr.evaluation.uncertainty import delong_variance, gauc_variance, interval

CHUNK_ROWS = 1 << 20  # keys sorted in memory before a run is spilled (8 MB)
BLOCK_ROWS = 1 << 16  # keys read from each run at a time while merging (512 kB)
FAN_IN = 64  # runs merged at once; more runs are first merged into longer ones
_SCORE_BITS = np.uint64(32)
_SIGN = np.uint32(1 << 31)
# a group's sums in the sorted pass: the squares are DeLong's (ecdctr.evaluation.uncertainty)
COUNT_NAMES = {"groups": np.int64, "clicks": np.int64, "non_clicks": np.int64, "u2": np.int64,
               "click_squares": np.float64, "non_click_squares": np.float64}


def pack(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One uint64 key a row that sorts by (group, score, label): group in the top 31 bits,
    the float32 score's bits made order-preserving (equal floats: equal bits, -0.0 is 0.0;
    NaN scores, which a model must not give, tie with each other), the label in the lowest
    bit."""
    s = np.asarray(scores, np.float32).ravel() + np.float32(0)  # -0.0 + 0.0 = 0.0
    s[np.isnan(s)] = np.nan  # one bit pattern for every NaN, so that they tie
    g = np.asarray(groups).ravel()
    if g.size and not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"group indices must be integers, got {g.dtype}")
    if g.size and (g.min() < 0 or g.max() >= 1 << 31):
        raise ValueError(f"group indices must be in [0, 2**31), got {g.min()}..{g.max()}")
    bits = s.view(np.uint32)
    bits = np.where(bits & _SIGN, ~bits, bits | _SIGN).astype(np.uint64)
    y = np.asarray(labels).ravel().astype(bool).astype(np.uint64)
    return ((g.astype(np.uint64) << np.uint64(33))
            | (bits << np.uint64(1)) | y)


class GroupedAuc:
    """Clicks, non-clicks and twice the Mann-Whitney U (ties count one half) of each group
    over rows added in batches. Memory is bounded by chunk_rows + fan_in x block_rows keys
    (8 bytes each), whatever the number of rows; disk holds 8 bytes a row while counting
    (anonymous temporary files in `folder`, gone when closed or when the process ends)."""

    def __init__(self, folder: str | None = None, chunk_rows: int = CHUNK_ROWS,
                 block_rows: int = BLOCK_ROWS, fan_in: int = FAN_IN):
        self.folder, self.chunk_rows, self.block_rows = folder, chunk_rows, block_rows
        self.fan_in = max(fan_in, 2)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._runs: list[IO[bytes]] = []

    def add(self, groups: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
        """Adds rows: group indices (0 <= g < 2**31), float32 scores, 0/1 labels."""
        keys = pack(groups, scores, labels)
        self._buffer.append(keys)
        self._buffered += len(keys)
        if self._buffered >= self.chunk_rows:
            self._spill()

    def _spill(self) -> None:
        if self._buffered:
            self._runs.append(self._write(np.sort(np.concatenate(self._buffer))))
        self._buffer, self._buffered = [], 0

    def _write(self, blocks: np.ndarray | Iterable[np.ndarray]) -> IO[bytes]:
        run = tempfile.TemporaryFile(prefix="ecdctr-eval-", dir=self.folder)
        for block in [blocks] if isinstance(blocks, np.ndarray) else blocks:
            block.tofile(run)
        run.seek(0)
        return run

    def _sorted_blocks(self) -> Iterator[np.ndarray]:
        if not self._runs:  # it all fits in one chunk: counted in blocks all the same
            keys = np.sort(np.concatenate(self._buffer)) if self._buffer else np.zeros(0, np.uint64)
            self._buffer, self._buffered = [], 0
            for start in range(0, len(keys), self.block_rows):
                yield keys[start:start + self.block_rows]
            return
        self._spill()
        while len(self._runs) > self.fan_in:
            merged = [self._write(_merge(self._runs[i:i + self.fan_in], self.block_rows))
                      for i in range(0, len(self._runs), self.fan_in)]
            self.close()
            self._runs = merged
        yield from _merge(self._runs, self.block_rows)

    def counts(self, observe: Callable[[np.ndarray], None] | None = None
               ) -> dict[str, np.ndarray]:
        """COUNT_NAMES of every group seen, by ascending group (u2: twice the U statistic, an
        exact integer; the squares: DeLong's sums). `observe` sees each block of sorted keys.
        Once per instance: it closes the runs."""
        counter = _Counter()
        try:
            for block in self._sorted_blocks():
                counter.feed(block)
                if observe is not None:
                    observe(block)
        finally:
            self.close()
        return counter.finish()

    def close(self) -> None:
        """Deletes the spilled runs."""
        for run in self._runs:
            run.close()
        self._runs = []


def unpack_scores(keys: np.ndarray) -> np.ndarray:
    """The float32 scores of packed keys (pack's order-preserving bits turned back)."""
    bits = ((keys >> np.uint64(1)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return np.where(bits & _SIGN, bits ^ _SIGN, ~bits).astype(np.uint32).view(np.float32)


def _merge(runs: Sequence[IO[bytes]], block_rows: int) -> Iterator[np.ndarray]:
    """Ascending blocks of the keys of sorted runs: each step emits every buffered key up to
    the smallest of the runs' last buffered keys, so one run's buffer empties each time."""
    heads = [np.fromfile(run, np.uint64, block_rows) for run in runs]
    while True:
        live = [i for i, head in enumerate(heads) if len(head)]
        if not live:
            return
        bound = min(heads[i][-1] for i in live)
        parts = []
        for i in live:
            cut = int(np.searchsorted(heads[i], bound, side="right"))
            parts.append(heads[i][:cut])
            heads[i] = heads[i][cut:]
            if not len(heads[i]):
                heads[i] = np.fromfile(runs[i], np.uint64, block_rows)
        yield np.sort(np.concatenate(parts), kind="stable")


class _Counter:
    """Per-group counts of ascending keys fed block by block. The last tie (keys equal but
    for the label) and the last group of a block may go on in the next: they are carried as
    counts, so memory does not grow with a long tie or a large group."""

    def __init__(self) -> None:
        self.tie: tuple[np.uint64, int, int] | None = None  # (value, clicks, non-clicks)
        # (group, clicks, non-clicks, u2, click squares, non-click squares): COUNT_NAMES
        self.group: tuple | None = None
        self.done: list[tuple[np.ndarray, ...]] = []

    def feed(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        value = keys >> np.uint64(1)
        labels = (keys & np.uint64(1)).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, value[1:] != value[:-1]])
        values = value[starts]
        clicks = np.add.reduceat(labels, starts)
        non = np.diff(np.r_[starts, len(keys)]) - clicks
        if self.tie is not None:
            v, c, n = self.tie
            if values[0] == v:
                clicks[0] += c
                non[0] += n
            else:
                values, clicks, non = np.r_[v, values], np.r_[c, clicks], np.r_[n, non]
        self.tie = (values[-1], int(clicks[-1]), int(non[-1]))
        self._ties(values[:-1], clicks[:-1], non[:-1])

    def _ties(self, values: np.ndarray, clicks: np.ndarray, non: np.ndarray) -> None:
        """Adds finished ties (ascending (group, score) values)."""
        if not len(values):
            return
        group = values >> _SCORE_BITS
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        sizes = np.diff(np.r_[starts, len(values)])
        below = np.cumsum(non) - non  # non-clicks scored lower, over all groups ...
        below -= np.repeat(below[starts], sizes)  # ... then within the tie's group
        clicks_below = np.cumsum(clicks) - clicks
        clicks_below -= np.repeat(clicks_below[starts], sizes)
        if self.group is not None and self.group[0] == group[0]:
            below[:sizes[0]] += self.group[2]
            clicks_below[:sizes[0]] += self.group[1]
        placement = 2 * below + non  # of each click in the tie (twice the non-clicks below it)
        placed = (2 * clicks_below + clicks).astype(np.float64)  # of each non-click, likewise
        u2 = clicks * placement
        squares = clicks * placement.astype(np.float64) ** 2, non * placed ** 2
        ids = group[starts]
        totals = [np.add.reduceat(x, starts) for x in (clicks, non, u2, *squares)]
        if self.group is not None:
            g, *carried = self.group
            if g == ids[0]:
                for total, value in zip(totals, carried, strict=True):
                    total[0] += value
            else:
                self.done.append((np.array([g], np.uint64),
                                  *(np.array([value]) for value in carried)))
        self.group = (ids[-1], *(total[-1].item() for total in totals))
        self.done.append((ids[:-1], *(total[:-1] for total in totals)))

    def finish(self) -> dict[str, np.ndarray]:
        if self.tie is not None:
            v, c, n = self.tie
            self._ties(np.array([v], np.uint64), np.array([c]), np.array([n]))
        if self.group is not None:
            g, *carried = self.group
            self.done.append((np.array([g], np.uint64), *(np.array([value]) for value in carried)))
        columns = zip(*self.done, strict=True) if self.done else [[]] * len(COUNT_NAMES)
        return {name: np.concatenate([np.zeros(0, dtype), *(np.asarray(a).astype(dtype)
                                                            for a in column)])
                for (name, dtype), column in zip(COUNT_NAMES.items(), columns, strict=True)}


def auc_from_counts(clicks: np.ndarray, non_clicks: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """AUC of each group from its counts, computed as ecdctr.evaluation.metrics.auc does (the same
    float64 operations on the same exact integers); NaN with one class only."""
    pairs = (np.asarray(clicks, np.int64) * np.asarray(non_clicks, np.int64)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.asarray(u2, np.float64) / 2.0) / pairs
    return np.where(pairs > 0, out, np.nan)


class Evaluator:
    """LogLoss, AUC, GAUC (impression-weighted mean of per-user AUC over users with both
    classes), CTR and mean prediction of scored batches, the figures ecdctr.evaluation.metrics computes
    on whole arrays; with per_domain, the AUC and rows of every domain with both classes;
    with domain_bins (lists of domain keys), the rows and AUC of each bin.

    Memory: the GroupedAuc bounds (a few tens of MB) plus one dict entry per user and per
    domain; never the rows. AUC, GAUC, CTR, rows and per-domain figures equal ecdctr.evaluation.metrics'
    exactly; LogLoss and mean prediction are sums taken batch by batch, equal up to float
    rounding (summation order)."""

    def __init__(self, per_domain: bool = False, domain_bins: Sequence[Sequence[str]] = (),
                 folder: str | None = None, chunk_rows: int = CHUNK_ROWS,
                 block_rows: int = BLOCK_ROWS, fan_in: int = FAN_IN):
        def grouped() -> GroupedAuc:
            return GroupedAuc(folder, chunk_rows, block_rows, fan_in)

        self.rows = self.clicks = 0
        self.log_sum = self.prob_sum = 0.0
        self.users: dict[object, int] = {}
        self.domains: dict[str, int] = {}
        self.auc, self.gauc = grouped(), grouped()
        self.domain_auc = grouped() if per_domain else None
        self.bin_of = {key: i for i, keys in enumerate(domain_bins) for key in keys}
        self.bins = len(domain_bins)
        self.bin_auc = grouped() if domain_bins else None
        self.domain_sums = np.zeros((3, 0))  # per domain index: rows, clicks, predicted clicks

    def add(self, labels: np.ndarray, probs: np.ndarray, groups: np.ndarray,
            domains: np.ndarray | None = None, eps: float = 1e-7) -> None:
        """Adds a batch: 0/1 labels, float32 click probabilities, the group_by values (users)
        and, for per_domain or domain_bins, the domain keys."""
        y = np.asarray(labels).ravel()
        s = np.asarray(probs, np.float32).ravel()
        if not len(y):
            return
        p = np.clip(s.astype(np.float64), eps, 1 - eps)
        y64 = y.astype(np.float64)
        self.log_sum += float(np.sum(y64 * np.log(p) + (1 - y64) * np.log(1 - p)))
        self.prob_sum += float(np.sum(s))  # in float32 as numpy's mean of a batch: one batch is equal
        self.rows += len(y)
        self.clicks += int(np.count_nonzero(y))
        self.auc.add(np.zeros(len(y), np.int64), s, y)
        self.gauc.add(_indices(self.users, groups), s, y)
        if self.domain_auc is not None or self.bin_auc is not None:
            d = _indices(self.domains, np.asarray(domains).astype(str))
            if self.domain_auc is not None:
                self.domain_auc.add(d, s, y)
                self._add_domain_sums(d, y, s)
            if self.bin_auc is not None:
                of = np.array([self.bin_of.get(name, -1) for name in self.domains])[d]
                self.bin_auc.add(of[of >= 0], s[of >= 0], y[of >= 0])

    def _add_domain_sums(self, d: np.ndarray, y: np.ndarray, s: np.ndarray) -> None:
        grown = np.zeros((3, len(self.domains)))
        grown[:, :self.domain_sums.shape[1]] = self.domain_sums
        for row, weights in enumerate((None, y.astype(np.float64), s.astype(np.float64))):
            grown[row] += np.bincount(d, weights=weights, minlength=len(self.domains))
        self.domain_sums = grown

    def result(self) -> dict:
        """The summary (keys of the daily report's metrics), plus per_domain_auc,
        per_domain_calibration and bins when asked. Every AUC and GAUC comes with the clicks
        behind it and a 95% interval (ecdctr.evaluation.uncertainty); None where it is not
        defined. Once per instance: it deletes the spilled runs."""
        rows = self.rows
        bins = EqualMassBins(rows)
        overall = self.auc.counts(lambda keys: bins.add(unpack_scores(keys), keys & np.uint64(1)))
        auc = auc_from_counts(overall["clicks"], overall["non_clicks"], overall["u2"])
        auc_variance = _delong(overall)
        gauc, counted, gauc_variance = self._gauc()
        first = float(auc[0]) if len(auc) else float("nan")
        out = {
            "rows": rows,
            "clicks": self.clicks,
            "logloss": -self.log_sum / rows if rows else float("nan"),
            "auc": first,
            "auc_se": _se(auc_variance[0] if len(auc) else float("nan")),
            "auc_ci": interval(first, auc_variance[0]) if len(auc) else None,
            "gauc": gauc,
            "gauc_se": _se(gauc_variance),
            "gauc_ci": interval(gauc, gauc_variance),
            "gauc_groups": counted,
            # rounded to float32 as numpy's mean of the float32 labels and probabilities was
            "ctr": float(np.float32(float(np.float32(self.clicks)) / rows)) if rows else float("nan"),
            "mean_prediction": float(np.float32(self.prob_sum / rows)) if rows else float("nan"),
            **calibration(rows, self.clicks, self.prob_sum),
            "calibration_error": bins.error(),
        }
        names = list(self.domains)
        if self.domain_auc is not None:
            c = self.domain_auc.counts()
            aucs = auc_from_counts(c["clicks"], c["non_clicks"], c["u2"])
            both = [(names[g], a, cl + n, cl, v) for g, a, cl, n, v in
                    zip(c["groups"], aucs, c["clicks"], c["non_clicks"], _delong(c), strict=True)
                    if cl and n]
            out["per_domain_auc"] = {k: {"auc": float(a), "rows": int(r), "clicks": int(cl),
                                         "auc_ci": interval(float(a), v)}
                                     for k, a, r, cl, v in sorted(both)}
            out["per_domain_calibration"] = {
                name: {"rows": int(r), "clicks": int(cl),
                       **calibration(int(r), int(cl), float(p))}
                for name, r, cl, p in sorted(zip(names, *self.domain_sums, strict=True))}
        if self.bin_auc is not None:
            c = self.bin_auc.counts()
            aucs = auc_from_counts(c["clicks"], c["non_clicks"], c["u2"])
            found = {int(g): {"rows": int(cl + n), "auc": float(a), "clicks": int(cl),
                              "auc_ci": interval(float(a), v)}
                     for g, cl, n, a, v in zip(c["groups"], c["clicks"], c["non_clicks"], aucs,
                                               _delong(c), strict=True)}
            empty = {"rows": 0, "auc": float("nan"), "clicks": 0, "auc_ci": None}
            out["bins"] = [found.get(b, empty) for b in range(self.bins)]
        return out

    def _gauc(self) -> tuple[float, int, float]:
        """GAUC summed user by user in the order of their ids, as ecdctr.evaluation.metrics.gauc does
        (so the float sum rounds the same), the users it averages and its user-level variance."""
        c = self.gauc.counts()
        both = (c["clicks"] > 0) & (c["non_clicks"] > 0)
        if not both.any():
            return float("nan"), 0, float("nan")
        users = np.empty(len(self.users), object)
        users[:] = list(self.users)
        ids = c["groups"][both]
        order = np.argsort(users[ids], kind="stable")
        sizes = (c["clicks"] + c["non_clicks"])[both][order]
        aucs = auc_from_counts(c["clicks"][both], c["non_clicks"][both], c["u2"][both])[order]
        total = np.add.accumulate(aucs * sizes)[-1]
        return float(total / int(sizes.sum())), int(both.sum()), gauc_variance(aucs, sizes)

    def close(self) -> None:
        """Deletes the spilled runs (result() does it too)."""
        for grouped in (self.auc, self.gauc, self.domain_auc, self.bin_auc):
            if grouped is not None:
                grouped.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _delong(counts: dict[str, np.ndarray]) -> np.ndarray:
    return delong_variance(counts["clicks"], counts["non_clicks"], counts["u2"],
                           counts["click_squares"], counts["non_click_squares"])


def _se(variance: float) -> float:
    return math.sqrt(variance) if math.isfinite(variance) else float("nan")


def _indices(index: dict, values: np.ndarray) -> np.ndarray:
    """Dense indices of values, new values numbered as they come."""
    return np.array([index.setdefault(v, len(index)) for v in np.asarray(values).ravel().tolist()],
                    np.int64)
