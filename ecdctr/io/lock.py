"""The one lock of the pipeline: a flock on a local file, so a second run of the same job on
the same work folder is refused while the first runs, and a killed run's lock is released by
the kernel."""

import contextlib
import fcntl
import os
from collections.abc import Iterator


class Busy(RuntimeError):
    """Another process holds the lock; the message names the lock file and what holds it."""


@contextlib.contextmanager
def exclusive(path: str, holder: str) -> Iterator[None]:
    """Holds an exclusive flock on the local file `path` (its folder is made) for the block.
    Raises Busy, naming `holder` (what runs, e.g. "another daily run") and the file, when
    another process holds it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as lock:  # a local lock file, not a data path
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{holder} holds {lock.name}; wait for it to finish") from None
        yield
