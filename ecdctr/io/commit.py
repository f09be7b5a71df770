"""Write whole, then make visible: the one mechanism for every output a reader must see whole
or not at all (a file, a model folder, an export version, a built day).

It is written under a staging name beside its destination that readers ignore, then made
visible in one step: where the file system renames atomically (local disks, HDFS) a rename,
an existing destination renamed aside first (`swap_in`); on object stores (no atomic rename,
no folders) a copy with a designated file written last (a marker, or the file readers check
for), and a single file is one PUT, which appears whole. Staging names carry the writer's
process id where several processes write side by side, so the leftovers of dead ones can be
found (`leftovers_of_dead_processes`). It works on either file layer through the `Files`
protocol: tf.io.gfile (ecdctr.io.storage.FILES) or Beam's FileSystems
(ecdctr.io.beam_files.FILES, for the build, whose workers load no TensorFlow).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

STAGING_SUFFIX = ".tmp"  # <folder>.tmp: a folder being written, or on its way out
OLD_SUFFIX = ".old.tmp"  # <folder>.old.tmp: the folder a swap replaced, deleted once it is done
TEMP_FILE_TAG = ".tmp-"  # <file>.tmp-<pid>: a file being written, renamed to <file> when whole
STAGING_PREFIX = ".staging-"  # .staging-<label><time>-<pid>: an export being written
# <name>.tmp-<pid> (a file written whole, then renamed) and .staging-<...>-<pid> (an export)
TEMP_OF_PROCESS = re.compile(r"[.-]tmp-\d+$|^\.staging-.*-\d+$")


class Files(Protocol):
    """The file operations the mechanism needs, on one file layer."""

    def join(self, path: str, *parts: str) -> str:
        """path/part/..."""

    def dirname(self, path: str) -> str:
        """The folder holding path."""

    def renames_atomically(self, path: str) -> bool:
        """Whether a rename at path is one atomic step (so staging is published by renames)."""

    def exists(self, path: str) -> bool:
        """Whether a file or folder exists at path."""

    def listdir(self, folder: str) -> list[str]:
        """Sorted names in folder; [] if it does not exist."""

    def makedirs(self, folder: str) -> None:
        """Creates folder and its parents where folders exist."""

    def write_bytes(self, path: str, data: bytes, sync: bool = False) -> None:
        """Writes a file in place (sync: durable before a rename, where the layer can)."""

    def replace(self, source: str, destination: str) -> None:
        """Renames file source over destination."""

    def rename(self, source: str, destination: str) -> None:
        """Moves folder source to destination, which must not exist."""

    def copy_tree(self, source: str, destination: str, last: Sequence[str]) -> None:
        """Copies folder source to destination, the relative paths in `last` after the rest."""

    def remove(self, path: str) -> None:
        """Deletes file path if it exists."""

    def delete_tree(self, folder: str) -> None:
        """Deletes folder and everything below it, if it exists."""


def temp_file(path: str) -> str:
    """The name a file is written under before it is renamed to path: <path>.tmp-<pid>."""
    return f"{path}{TEMP_FILE_TAG}{os.getpid()}"


def is_temp_file(name: str, of: str) -> bool:
    """Whether file name is a temp_file of the file named `of` (by any process)."""
    return name.startswith(f"{of}{TEMP_FILE_TAG}")


def staging_folder(base: str, files: Files, label: str = "") -> str:
    """A folder in base for one process to write an output into, a name readers of base
    ignore: .staging-<label><time>-<pid>."""
    return files.join(base, f"{STAGING_PREFIX}{label}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")


def write_file(files: Files, path: str, data: bytes) -> None:
    """Writes path so that readers see all of data or the file as it was: where renames are
    atomic, into temp_file(path) (synced), then renamed over path; elsewhere one write (an
    object store's PUT appears whole)."""
    if not files.renames_atomically(path):
        files.write_bytes(path, data)
        return
    files.makedirs(files.dirname(path))
    temp = temp_file(path)
    files.write_bytes(temp, data, sync=True)
    files.replace(temp, path)


def swap_in(files: Files, staged: str, final: str, old: str) -> None:
    """Renames folder staged to final; an existing final is first renamed to old (whose own
    leftovers go first), which the caller deletes once nothing needs it."""
    if files.exists(final):
        files.delete_tree(old)
        files.rename(final, old)
    files.rename(staged, final)


@contextlib.contextmanager
def writing_folder(files: Files, folder: str, last: str) -> Iterator[str]:
    """Yields the folder to write `folder`'s files into; the caller writes `last` (a relative
    path, what readers check for) last. Where renames are atomic that is <folder>.tmp, swapped
    in for folder when the block ends without an error (see swap_in); elsewhere folder itself,
    its `last` deleted first, so that readers take it as absent until it is written again."""
    atomic = files.renames_atomically(folder)
    target = folder + STAGING_SUFFIX if atomic else folder
    if not atomic:
        files.remove(files.join(folder, last))
    files.delete_tree(target)
    yield target
    if atomic:
        old = folder + OLD_SUFFIX
        swap_in(files, target, folder, old)
        files.delete_tree(old)


def publish_folder(files: Files, staged: str, final: str, last: Sequence[str],
                   marker: str, body: bytes) -> None:
    """Makes the whole folder staged visible as final (which must not exist), with the file
    `marker` (a relative path) holding body: where renames are atomic the marker is written
    into staged, which is renamed; elsewhere the files are copied, those in `last` after the
    others, then the marker is written, and staged is deleted."""
    if files.renames_atomically(final):
        write_file(files, files.join(staged, marker), body)
        files.rename(staged, final)
        return
    files.copy_tree(staged, final, last)
    write_file(files, files.join(final, marker), body)
    files.delete_tree(staged)


def delete_folder(files: Files, folder: str, first: str) -> None:
    """Deletes folder so that nothing takes it for whole while it goes: where renames are
    atomic it is renamed to <folder>.tmp first; elsewhere its file `first` (what readers
    check for) is deleted first."""
    if files.renames_atomically(folder):
        trash = folder + STAGING_SUFFIX
        files.delete_tree(trash)
        files.rename(folder, trash)
        files.delete_tree(trash)
    else:
        files.remove(files.join(folder, first))
        files.delete_tree(folder)


def leftovers_of_dead_processes(files: Files, folder: str, prefix: str = "") -> list[str]:
    """The paths in folder, named with `prefix`, that processes which are gone were writing
    (temp_file and staging_folder names; this process's own are not leftovers)."""
    found = []
    for name in files.listdir(folder):
        if name.startswith(prefix) and TEMP_OF_PROCESS.search(name):
            pid = int(name.rsplit("-", 1)[1])
            if pid != os.getpid() and not process_alive(pid):
                found.append(files.join(folder, name))
    return found


def process_alive(pid: int) -> bool:
    """True while a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
