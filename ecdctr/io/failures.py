"""What a failing store is: StorageError (never absence), the bound on how long a dead object
store may hold up a call (ECDCTR_STORAGE_TIMEOUT), the endpoint a message names, and the
stores this process found dead, whose later calls fail at once for the length of the bound.
ecdctr/io/storage.py and the build's Beam side (beam_files) use it."""

from __future__ import annotations

import math
import os
import time

TIMEOUT_VARIABLE = "ECDCTR_STORAGE_TIMEOUT"
DEFAULT_TIMEOUT = 120.0  # seconds a dead object store may take to fail a call
ATTEMPTS = 3  # tries per request to an object store (AWS_MAX_ATTEMPTS)
REQUESTS_PER_CALL = 3  # the most requests one call here makes before it knows (stat: 2 + 1)
# Errors of a store that did not answer (tensorflow-io reports curl's connection errors as
# UnknownError): its endpoint is taken as dead for the rest of the bound.
_UNREACHABLE = ("UnknownError", "UnavailableError", "DeadlineExceededError",
                "ResourceExhaustedError")
# Errors that say the store failed (rather than the call was wrong: AlreadyExists,
# FailedPrecondition, InvalidArgument, ... stay what they are).
_STORE_FAILURES = (*_UNREACHABLE, "InternalError", "UnauthenticatedError",
                   "PermissionDeniedError", "AbortedError")
_dead: dict[str, tuple[float, str]] = {}  # endpoint -> (when found dead, the error)


class StorageError(Exception):
    """A storage call that failed (the store unreachable, the request refused): never absence,
    which only a definite not-found answer means."""


def timeout() -> float:
    """Seconds a dead object store may take to fail a call: $ECDCTR_STORAGE_TIMEOUT, else 120."""
    raw = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"{TIMEOUT_VARIABLE}={raw!r} is not a number of seconds above 0. "
                         f"Fix: e.g. {TIMEOUT_VARIABLE}={DEFAULT_TIMEOUT:g}, or unset it.")
    return value


def per_try_seconds() -> int:
    """Seconds one try of a request to an object store may wait to connect, or for an answer:
    what of timeout() / REQUESTS_PER_CALL is left after the retry waits ("standard" mode:
    up to 1 + 2 s), over ATTEMPTS; at least 1."""
    return max(1, int((timeout() / REQUESTS_PER_CALL - 3) / ATTEMPTS))


def endpoint(path: str) -> str:
    """Where path's store answers, for messages: the S3 endpoint, else scheme://host."""
    if path.lower().startswith("s3://"):
        return (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or "AWS S3 (no AWS_ENDPOINT_URL set)")
    head, _, rest = path.partition("://")
    return f"{head.lower()}://{rest.split('/')[0]}"


def failure(path: str, action: str, error: BaseException) -> BaseException:
    """The StorageError of a call on path that the store failed (its endpoint is marked dead
    when it did not answer); any other error as it is."""
    kind = type(error).__name__
    if kind not in _STORE_FAILURES:
        return error
    detail = " ".join(str(getattr(error, "message", error)).split()).lstrip(": ")[:300]
    where = endpoint(path)
    message = (f"cannot {action} {path}: the store at {where} failed ({kind}: {detail}). Fix: "
               f"check that {where} is up and reachable from this machine and the credentials "
               f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) are right, then rerun; "
               f"{TIMEOUT_VARIABLE}={timeout():g} s bounds the wait")
    if kind in _UNREACHABLE:
        _dead[where] = (time.monotonic(), message)
    return StorageError(message)


def refuse_if_dead(path: str) -> None:
    """Raises at once when path's store was found dead within the last timeout() seconds."""
    if "://" not in path or path.lower().startswith("file://"):
        return
    found = _dead.get(endpoint(path))
    if found is not None:
        ago = time.monotonic() - found[0]
        if ago < timeout():
            raise StorageError(f"{found[1]} (found unreachable {ago:.0f} s ago)")
        del _dead[endpoint(path)]
