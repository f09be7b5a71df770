"""What killed runs left behind, deleted when the next run starts: unfinished model folders, a
version whose publish was cut short, backups of other days' fits, and the export staging folders
and report temp files of dead processes (named by ecdctr.io.commit). Runs under the work lock,
so no other daily run is writing them. (A Beam build deletes its own unfinished staging under
<work>/.staging when it starts, under the build lock: see pipelines/build/publish.py.)"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from ecdctr.io import commit, storage
from ecdctr.serving.export import remove_version, unfinished_versions
from pipelines.daily.model_store import ModelStore

logger = logging.getLogger(__name__)


def remove_leftovers(stores: Sequence[ModelStore], export_base: str, reports: str,
                     backups: str | None, date: dt.date) -> None:
    """Deletes the leftovers of killed runs: in the model stores, the versions under
    export_base, the fit backups of days other than `date` under `backups` (None: no cluster),
    and temp files of processes that are gone in export_base and the `reports` folder."""
    for store in stores:
        store.remove_unfinished()
    for path in unfinished_versions(export_base):
        logger.info(f"removing a version whose publish was interrupted: {path}")
        remove_version(path)
    if backups is not None:  # backups of other days' fits cannot be resumed
        for name in storage.listdir(backups):
            if name != date.isoformat():
                logger.info(f"removing the backup of an interrupted run of {name}: "
                            f"{storage.join(backups, name)}")
                storage.rmtree(storage.join(backups, name))
    for folder, prefix in ((export_base, commit.STAGING_PREFIX), (reports, "")):
        for path in commit.leftovers_of_dead_processes(storage.FILES, folder, prefix):
            logger.info(f"removing leftovers of an interrupted run: {path}")
            storage.rmtree(path)
