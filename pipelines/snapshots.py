"""Which TPM snapshots a CPM reads: the TPM's window, the newest usable snapshots, and those a
spec can still read."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import numpy as np

from ecdctr.config import Windows
from ecdctr.spec.feature_spec import Spec
from ecdctr.training.checkpoint import Snapshot

logger = logging.getLogger(__name__)


def tpm_window(date: dt.date, windows: Windows, historical: bool) -> tuple[dt.date, dt.date]:
    """[first, end) of the natural days a TPM trained on date reads: the tpm_days before date,
    or, historical, the tpm_days before the CPM window of date begins."""
    end = date - dt.timedelta(days=windows.cpm_days) if historical else date
    return end - dt.timedelta(days=windows.tpm_days), end


def choose_snapshots(snapshots: Sequence[tuple[str, dict]], cpm_first: dt.date, keep: int,
                     historical: bool) -> list[str]:
    """Names of the snapshots (oldest first; (name, meta) pairs) a CPM whose window starts at
    cpm_first reads: the newest `keep`, and with historical only those whose window ends
    before cpm_first."""
    usable = [name for name, meta in snapshots
              if not historical or meta["window"][1] < cpm_first.isoformat()]
    return usable[-keep:] if keep else []


def snapshot_problem(snapshot: Snapshot, spec: Spec) -> str | None:
    """Why a model of spec cannot read a TPM snapshot (None when it can): each of its tables is
    looked up by the name of a categorical feature of the spec, one id per row."""
    kinds = {f.name: f.kind for f in spec.features}
    for name in sorted(snapshot.tables):
        if name not in kinds:
            return f"it holds a table keyed by {name!r}, a feature the spec no longer has"
        if kinds[name] != "categorical":
            return f"it looks up {name!r} as one id per row; the spec makes it {kinds[name]}"
    return None


def readable_snapshots(snapshots: Sequence[Snapshot], spec: Spec) -> list[Snapshot]:
    """The snapshots (oldest first) a model of spec reads together: the newest it can read and
    the older ones with the same tables and dims. The others, left behind by a spec change
    (an entity feature renamed, removed or resized), are left out with a log line instead of
    failing every CPM and A-CTR until they age out."""
    kept: list[Snapshot] = []
    newer: dict[str, int] | None = None  # the tables and dims of the snapshots kept
    for snapshot in reversed(snapshots):
        problem = snapshot_problem(snapshot, spec)
        layout = {name: np.shape(rows)[1] for name, (_, rows) in sorted(snapshot.tables.items())}
        if problem is None and newer is not None and layout != newer:
            problem = f"its tables {layout} differ from the newer snapshots' {newer}"
        if problem:
            logger.info(f"TPM snapshot {snapshot.name} left out: {problem} (the spec changed since it "
                        f"trained; it leaves the choice as newer snapshots arrive)")
            continue
        newer = layout
        kept.append(snapshot)
    return kept[::-1]
