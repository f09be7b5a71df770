"""The rows a fit does not train on, chosen by request-id hash (ecdctr.data.datasets.HeldOut):
a fit's validation share (the lowest hash buckets of its newest days, sized by its clicks) and
daily's evaluation share of day D (the highest buckets of D's ad requests), and the side of
that split a dataset reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ecdctr.data.datasets import HeldOut, Share, held_out_counts, partition_files, share_buckets
from ecdctr.data.vocab import Partition, read_stats
from ecdctr.io import layout
from ecdctr.spec.feature_spec import Spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validation:
    """The evidence a fit validates on: the held-out share of requests (by request-id hash,
    ecdctr.data.datasets.HeldOut) of the newest `days` of its window, with its rows and clicks.
    Those rows are never trained on; the rest of those days is."""

    share: float
    days: tuple[Partition, ...]
    rows: int
    clicks: int

    def buckets(self, work: str) -> Share:
        """Its rows: the lowest hash buckets of its days' requests."""
        return Share(*share_buckets(self.share), frozenset(files_of(work, self.days)))

    def rows_in(self, spec: Spec, work: str, parts: Sequence[Partition]) -> int:
        """Its rows among parts (a fit's training days; an update may validate on older ones)."""
        inside = [p for p in self.days if p in parts]
        if len(inside) == len(self.days):
            return self.rows
        return held_out_counts(spec, files_of(work, inside), self.share)[0]


@dataclass(frozen=True)
class Evaluation:
    """The rows daily judges the A-CTR of day D on (its metrics, the CPM's beside them, the
    gate): the top `share` of D's ad requests by request-id hash (share_buckets, top), with
    their rows and clicks; disjoint from every validation share (the bottom buckets). Never
    trained on: the fits of the A-CTR of D and its BatchNorm re-estimation leave them out, and
    the next day's update trains on the days after D."""

    share: float
    day: Partition
    rows: int
    clicks: int

    def buckets(self, work: str) -> Share:
        """Its rows: the highest hash buckets of D's requests."""
        return Share(*share_buckets(self.share, top=True), frozenset(files_of(work, [self.day])))

    def describe(self) -> dict:
        """For reports and a checkpoint's meta."""
        return {"share": self.share, "day": self.day[1].isoformat(), "source": self.day[0],
                "rows": self.rows, "clicks": self.clicks}


def evaluation_share(spec: Spec, work: str, day: Partition, share: float) -> Evaluation:
    """The Evaluation of day (a partition): the top `share` of its requests, counted."""
    return Evaluation(share, day, *held_out_counts(spec, files_of(work, [day]), share, top=True))


def split(spec: Spec, work: str, held: bool, *sets: Validation | Evaluation | None
          ) -> HeldOut | None:
    """A dataset's side of a request-id split: the rows of the given sets (held), or every
    other row (not held: a training set); None when no set is given (all rows)."""
    shares = tuple(s.buckets(work) for s in sets if s is not None)
    return HeldOut(spec.request_id, shares, held) if shares else None


def choose_validation(spec: Spec, work: str, parts: Sequence[Partition], share: float,
                      min_clicks: int) -> Validation | None:
    """The validation of a fit on parts: the held-out `share` of the newest day's requests,
    grown a day at a time back into the window until it holds min_clicks clicks (or the window
    ends). None (no validation) when share is 0 or the share holds no click or only clicks
    (an AUC needs both)."""
    if share <= 0:
        return None
    rows = clicks = 0
    days: list[Partition] = []
    for date in sorted({d for _, d in parts}, reverse=True):
        day = [p for p in parts if p[1] == date]
        held_rows, held_clicks = held_out_counts(spec, files_of(work, day), share)
        days += day
        rows, clicks = rows + held_rows, clicks + held_clicks
        if clicks >= min_clicks:
            break
    if clicks == 0 or clicks == rows:
        logger.warning(f"no validation: the held-out {share:.0%} of the requests of "
                       f"{', '.join(f'{s} {d}' for s, d in sorted(days))} holds {rows:,} rows and "
                       f"{clicks:,} clicks (an AUC needs both classes); the fit runs its epochs "
                       f"without early stopping")
        return None
    return Validation(share, tuple(sorted(days)), rows, clicks)


def unjudgeable(work: str, day: Partition, evaluation: Evaluation | None) -> str | None:
    """Why no model can be judged on day, its evaluation share of it (or all of it when
    evaluation is None) holding no row, with the fix; None when there are rows."""
    if evaluation is not None and evaluation.rows:
        return None
    source, date = day
    stats = read_stats(work, source, date)
    if evaluation is None and stats["rows_written"]:
        return None
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.get("quarantine_reasons", {}).items()))
    held = (f"its evaluation share ({evaluation.share:.0%} of its requests) holds none of its "
            f"{stats['rows_written']:,} rows" if stats["rows_written"] else
            f"its {stats['rows_read']:,} rows read were all quarantined"
            + (f" ({reasons})" if reasons else ""))
    return (f"{source} {date}, the day the model is judged on, has no rows to judge it on: "
            f"{held}. Fix: see why in {layout.quarantine_folder(work, source, date)} and fix the "
            f"day's logs; the next run of the day rebuilds it (the days after it run as usual)")


def files_of(work: str, parts: Sequence[Partition]) -> list[str]:
    """The TFRecord shards of the given partitions."""
    return [f for source, d in parts for f in partition_files(work, source, [d])]
