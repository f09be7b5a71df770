"""No silent method: when a run configured for the TPM (transfer.tpm_snapshots above 0) trains
a model that reads no TPM snapshot, why, said in a warning and in the report (daily) or beside
the compare table's `WITHOUT TPM` label (ablations)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)


def no_snapshot_reason(usable: Sequence[tuple[str, dict]], cpm_first: dt.date,
                       historical: bool, chosen: int, damaged: Mapping[str, str] | None = None
                       ) -> str:
    """Why a CPM whose window starts at cpm_first reads no TPM snapshot, given the usable
    snapshots ((name, meta) pairs), how many were chosen before the unreadable were left out
    and the damaged ones left out ({name: what is wrong})."""
    if damaged:
        return (f"the TPM snapshot(s) {', '.join(sorted(damaged))} are damaged and left out "
                f"({'; '.join(damaged[n] for n in sorted(damaged))}); the TPM step retrains "
                f"its period's snapshot when due")
    if not usable:
        return "no TPM snapshot was trained yet (the TPM's windows held no built natural day)"
    if not chosen:
        return (f"transfer.tpm_historical: none of the {len(usable)} snapshot(s) learned only "
                f"from days before the CPM window starts ({cpm_first}); windows that cover the "
                f"whole history leave the TPM no days" if historical else "none was chosen")
    return f"the spec cannot read the {chosen} chosen snapshot(s) (see the log)"


def without_tpm(model: str, reason: str) -> str:
    """The note of a model configured for the TPM (transfer.tpm_snapshots > 0) that reads no
    snapshot: logged as a warning, and for its report entry's `tpm`."""
    logger.warning(f"the {model} reads no TPM snapshot although the run is configured for the "
                   f"TPM: {reason}. It trains without the TPM's embeddings")
    return f"configured, but no snapshot: {reason}"
