"""The rows a fit does not train on, chosen by request-id hash (ecdctr.data.datasets.HeldOut):
a fit's validation share (the lowest hash buckets of its newest days, sized by its clicks) and
daily's evaluation share of day D (the highest buckets of D's ad requests), and the side of
that split a dataset reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ecdctr.data.datasets import HeldOut, Share, held_out_counts, partition_files, share_buckets
from ecdctr.data.vocab import Partition
from ecdctr.spec.feature_spec import Spec


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
        return None
    return Validation(share, tuple(sorted(days)), rows, clicks)


def files_of(work: str, parts: Sequence[Partition]) -> list[str]:
    """The TFRecord shards of the given partitions."""
    return [f for source, d in parts for f in partition_files(work, source, [d])]
