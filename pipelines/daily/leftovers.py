"""What killed runs left behind, deleted when the next run starts: unfinished model folders, a
version whose publish was cut short, backups of other days' fits, and the export staging folders
and report temp files of dead processes. Runs under the work lock, so no other daily run is
writing them. (A Beam build deletes its own unfinished staging under <work>/.staging when it
starts, under the build lock: see pipelines/build/publish.py.)"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Sequence

from ecdctr.io import storage
from ecdctr.serving.export import remove_version, unfinished_versions
from pipelines.daily.model_store import ModelStore

Log = Callable[[str], None]
# <name>.tmp-<pid> (a file written whole, then renamed) and .staging-<...>-<pid> (an export)
TEMP_OF_PROCESS = re.compile(r"[.-]tmp-\d+$|^\.staging-.*-\d+$")


def remove_leftovers(stores: Sequence[ModelStore], export_base: str, reports: str,
                     backups: str | None, date: dt.date, log: Log) -> None:
    """Deletes the leftovers of killed runs: in the model stores, the versions under
    export_base, the fit backups of days other than `date` under `backups` (None: no cluster),
    and temp files of processes that are gone in export_base and the `reports` folder."""
    for store in stores:
        store.remove_unfinished()
    for path in unfinished_versions(export_base):
        log(f"removing a version whose publish was interrupted: {path}")
        remove_version(path)
    if backups is not None:  # backups of other days' fits cannot be resumed
        for name in storage.listdir(backups):
            if name != date.isoformat():
                log(f"removing the backup of an interrupted run of {name}: "
                    f"{storage.join(backups, name)}")
                storage.rmtree(storage.join(backups, name))
    for folder, prefix in ((export_base, ".staging-"), (reports, "")):
        for name in storage.listdir(folder):
            if name.startswith(prefix) and TEMP_OF_PROCESS.search(name):
                pid = int(name.rsplit("-", 1)[1])
                if pid != os.getpid() and not process_alive(pid):
                    path = storage.join(folder, name)
                    log(f"removing leftovers of an interrupted run: {path}")
                    storage.rmtree(path)


def process_alive(pid: int) -> bool:
    """True while a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
