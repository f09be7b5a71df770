"""The model folders of one kind: TPM snapshots under <work>/tpm, CPM and A-CTR checkpoints
under <work>/models/{cpm,actr}. Which are whole and current, which a day may use, how old ones
are pruned and what a killed run left unfinished. A folder is whole once its meta.json is in
place (ecdctr/training/checkpoint.py writes it last) and its files are as meta.json records
them (sizes here; bytes too, crc32c, for the one a step loads: `newest`); a damaged one is
named, taken as missing (made again when due) and skipped for the previous one."""

from __future__ import annotations

import datetime as dt
import logging
import re

from ecdctr.io import commit, storage
from ecdctr.io.jsonio import DamagedFile, read_json_object
from ecdctr.training.checkpoint import META, folder_damage, is_current

logger = logging.getLogger(__name__)

CPM_KEEP = 4  # newest CPM checkpoints kept
ACTR_KEEP = 7  # newest A-CTR checkpoints kept
FOLDER_NAME = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")  # YYYY-MM (a monthly TPM) or YYYY-MM-DD


class ModelStore:
    """The model folders under `root`, each named for its period or day (FOLDER_NAME)."""

    def __init__(self, root: str):
        self.root = root
        self.legacy: set[str] = set()  # folders of an older format, logged once
        self.damaged: dict[str, str] = {}  # folder name -> what is wrong with it
        self.sized: set[str] = set()  # folders whose file sizes were checked (meta)
        self.proven: set[str] = set()  # folders whose bytes were checked (newest)

    def path(self, name: str) -> str:
        """The folder of the output called name."""
        return storage.join(self.root, name)

    def meta(self, name: str) -> dict | None:
        """The meta.json of the output called name; None when it has none, or when it or a
        file it records is damaged (`damaged`; logged once as a warning: the output counts as
        missing, so its step makes it again)."""
        path = storage.join(self.root, name, META)
        if not storage.exists(path):
            return None
        if name in self.damaged:
            return None
        try:
            meta = read_json_object(path)
            problem = None if name in self.sized else folder_damage(self.path(name), meta)
        except DamagedFile as e:
            problem = str(e)
        if problem:
            self.mark_damaged(name, problem)
            return None
        self.sized.add(name)  # once per store: a folder changes only through `saved`
        return meta

    def mark_damaged(self, name: str, problem: str) -> None:
        """Takes the output called name as missing from now on, with a warning saying why."""
        self.damaged[name] = problem
        logger.warning(f"{problem}: {self.path(name)} is damaged; it is taken as missing (the "
                       f"previous one is used) and made again when due")

    def saved(self, name: str) -> None:
        """The output called name was just written again: whatever was wrong with it is gone."""
        self.damaged.pop(name, None)
        self.sized.discard(name)
        self.proven.discard(name)

    def newest(self, outputs: list[tuple[str, dict]]) -> tuple[str, dict] | None:
        """The newest of outputs ((name, meta), oldest first) whose every file holds the bytes
        written (crc32c); the damaged ones met on the way are marked (mark_damaged) and
        skipped for the one before. None when none is left."""
        for name, meta in reversed(outputs):
            if name not in self.proven:
                problem = folder_damage(self.path(name), meta, content=True)
                if problem:
                    self.mark_damaged(name, problem)
                    continue
                self.proven.add(name)
            return name, meta
        return None

    def complete(self) -> list[tuple[str, dict]]:
        """(name, meta) of the whole outputs, oldest first (by the last day they were trained
        on, then name). Folders an older ecdctr wrote are left out (logged once)."""
        found = [(name, meta) for name in storage.listdir(self.root)
                 if FOLDER_NAME.match(name) and (meta := self.meta(name)) is not None]
        for name, meta in found:
            if not is_current(meta) and name not in self.legacy:
                self.legacy.add(name)
                logger.info(f"{self.path(name)} was written by an older ecdctr and cannot be rebuilt: "
                            f"ignored (retrained when due; delete it to free the disk)")
        found = [(name, meta) for name, meta in found if is_current(meta)]
        return sorted(found, key=lambda item: (item[1].get("window", [item[0]] * 2)[-1], item[0]))

    def usable(self, date: dt.date) -> list[tuple[str, dict]]:
        """The whole outputs trained on days before `date` only (so date stays held out)."""
        return [(name, meta) for name, meta in self.complete()
                if meta.get("window", [name] * 2)[-1] < date.isoformat()]

    def prune(self, keep: int, protect: set[str]) -> None:
        """Removes all but the newest `keep` outputs (never those in protect); each is renamed
        to <name>.tmp first, so a kill mid-delete leaves nothing that looks whole."""
        for name, _ in self.complete()[:-keep]:
            if name in protect:
                continue
            folder = self.path(name)
            commit.delete_folder(storage.FILES, folder, first=META)
            logger.info(f"removed old {folder}")

    def remove_unfinished(self) -> None:
        """Deletes what killed runs left here: `<name>.tmp` folders (a save or a prune cut
        short) and meta.json temp files (a metrics update cut short)."""
        for name in storage.listdir(self.root):
            if name.endswith(commit.STAGING_SUFFIX):
                logger.info(f"removing leftovers of an interrupted run: {self.path(name)}")
                storage.rmtree(self.path(name))
            for leftover in storage.listdir(self.path(name)):
                if commit.is_temp_file(leftover, of=META):
                    storage.remove(storage.join(self.root, name, leftover))
