"""File access for every data path, local or a URI (s3://, gs://, hdfs://): tf.io.gfile, with
tensorflow-io registered and given the standard AWS variables when a path needs it.

Data paths (logs, work folder, exports, models) go through this module, never through
`open`, `os.path` or `shutil`, so that the same code runs on a laptop folder and on a bucket.
Object stores have no atomic rename and no real folders: `rename` of a folder copies then
deletes, and folders exist only while something is inside them. Callers that need a reader
never to see half of something write it under a name the reader ignores, then publish it
(see ecdctr/serving/export.py).

Credentials and endpoints come from the environment, as every AWS tool reads them:
AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION (or AWS_DEFAULT_REGION). `configure_s3` passes them on to
tensorflow-io (S3_ENDPOINT, S3_USE_HTTPS, S3_VERIFY_SSL) and `beam_s3_options` to Beam.

Absence and failure are told apart: only a definite "not found" is absence (False, [],
FileNotFoundError); a store that cannot be asked raises StorageError naming the path, the
endpoint and the fix. A dead object store fails each call within ECDCTR_STORAGE_TIMEOUT
seconds (default 120), and once found dead it fails the process's later calls at once for
that long (see docs/storage.md).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import posixpath
import re
import stat as stat_mode
from collections.abc import Iterator, Sequence
from typing import Any

from ecdctr.io import commit
from ecdctr.io.failures import ATTEMPTS, failure, refuse_if_dead
from ecdctr.io.failures import TIMEOUT_VARIABLE as TIMEOUT_VARIABLE  # re-exported: callers
from ecdctr.io.failures import StorageError as StorageError  # reach them through storage
from ecdctr.io.failures import endpoint as endpoint
from ecdctr.io.failures import per_try_seconds as per_try_seconds
from ecdctr.io.failures import timeout as timeout


class _TensorFlow:
    """tensorflow, imported at first use: the build's Beam workers only join paths here and
    never load it (its import costs them ~2.5 CPU seconds each)."""

    def __getattr__(self, name: str) -> Any:
        import tensorflow

        return getattr(tensorflow, name)


tf = _TensorFlow()

# Schemes TensorFlow itself does not register; importing tensorflow_io registers them.
_TFIO_SCHEMES = frozenset({"s3", "hdfs", "viewfs", "har", "az", "http", "https"})
_native_loaded = False


def _confirm_absent(path: str, action: str = "read") -> None:
    """tensorflow-io answers "not found" for an S3 path also when the store did not answer:
    its bucket is asked (HeadBucket), which says either, so that a dead store raises
    StorageError instead of passing for absence. A missing bucket raises too."""
    if scheme(path) != "s3":
        return
    bucket = "s3://" + path[len("s3://"):].split("/", 1)[0] + "/"
    try:
        tf.io.gfile.stat(bucket)
    except tf.errors.NotFoundError:
        raise StorageError(f"cannot {action} {path}: bucket {bucket} does not exist at "
                           f"{endpoint(path)}. Fix: create it, or correct the path "
                           f"or AWS_ENDPOINT_URL") from None
    except tf.errors.OpError as e:
        raise failure(path, action, e) from None


def _bucket_slash(path: str) -> str:
    """A bare bucket URI with the trailing '/' tensorflow-io wants (s3://b -> s3://b/)."""
    return path + "/" if "/" not in path.partition("://")[2] else path


def explain(error: BaseException) -> StorageError | None:
    """The StorageError behind a TensorFlow error raised outside this module (a tf.data
    reader, a SavedModel load) when an S3 store fails: tensorflow-io reports a dead store as
    "not found" on the path, or as UnknownError with curl's code and no path. A named S3
    path's bucket is asked; None if it answers (the error is then what it says) or the error
    is of another kind."""
    if not type(error).__module__.startswith("tensorflow"):
        return None
    text = str(getattr(error, "message", error))
    found = re.search(r"\bs3://[^\s'\",;]+", text)
    try:
        if found is not None:
            refuse_if_dead(found.group(0))
            _confirm_absent(found.group(0))
            return None
    except StorageError as e:
        return e
    if "curlCode" in text and _native_loaded:  # tensorflow-io's S3 client could not connect
        explained = failure("s3:// (read by TensorFlow)", "read", error)
        return explained if isinstance(explained, StorageError) else None
    return None


def _remote_stat(path: str, action: str) -> Any:
    """tf.io.gfile.stat of a URI, None if it is definitely absent; StorageError otherwise."""
    refuse_if_dead(path)
    path = _bucket_slash(path)
    try:
        return tf.io.gfile.stat(path)
    except tf.errors.NotFoundError:
        _confirm_absent(path, action)
        return None
    except tf.errors.OpError as e:
        raise failure(path, action, e) from None


@contextlib.contextmanager
def _call(path: str, action: str) -> Iterator[None]:
    """A gfile call on path: on an object store, refused at once if its store was found dead,
    and its failure (but "not found") raised as StorageError."""
    if not is_remote(path):
        yield
        return
    refuse_if_dead(path)
    try:
        yield
    except tf.errors.NotFoundError:
        raise
    except tf.errors.OpError as e:
        raise failure(path, action, e) from None


def _local_stat(path: str) -> os.stat_result | None:
    """os.stat of a local path, None if nothing is there; other errors (permission denied on
    a parent folder, I/O errors) raise, they are not absence."""
    try:
        return os.stat(path[len("file://"):] if scheme(path) == "file" else path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def scheme(path: str) -> str:
    """The URI scheme of path ('' for a local path)."""
    head, sep, _ = path.partition("://")
    return head.lower() if sep and head.isalnum() else ""


def is_remote(path: str) -> bool:
    """Whether path is a URI (object store, HDFS) rather than a local path."""
    return scheme(path) not in ("", "file")


def configure_s3() -> None:
    """Passes the standard AWS variables on to tensorflow-io's S3 file system (which reads
    S3_ENDPOINT / S3_USE_HTTPS / S3_VERIFY_SSL / AWS_REGION); an explicit S3_* wins. Bounds
    each request to timeout() / REQUESTS_PER_CALL seconds: ATTEMPTS tries ("standard" retry
    mode, AWS_MAX_ATTEMPTS, which boto3 reads too) of at most per_try_seconds() to connect
    (S3_CONNECT_TIMEOUT_MSEC) and to wait for an answer (S3_REQUEST_TIMEOUT_MSEC) each."""
    per_try = str(per_try_seconds() * 1000)
    for name, value in (("AWS_RETRY_MODE", "standard"), ("AWS_MAX_ATTEMPTS", str(ATTEMPTS)),
                        ("S3_CONNECT_TIMEOUT_MSEC", per_try),
                        ("S3_REQUEST_TIMEOUT_MSEC", per_try)):
        os.environ.setdefault(name, value)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        os.environ.setdefault("S3_ENDPOINT", endpoint)
        https = not endpoint.lower().startswith("http://")
        os.environ.setdefault("S3_USE_HTTPS", "1" if https else "0")
        os.environ.setdefault("S3_VERIFY_SSL", "1" if https else "0")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        os.environ.setdefault("AWS_REGION", region)


def beam_s3_options() -> list[str]:
    """Beam pipeline arguments for its S3 file system, from the same AWS variables; sets
    the boto3 client's tries (AWS_MAX_ATTEMPTS) and connect timeout (AWS_DEFAULTS_MODE
    standard: 3.1 s) in the environment, which Beam's workers inherit, unless set."""
    env = os.environ
    for name, value in (("AWS_RETRY_MODE", "standard"), ("AWS_MAX_ATTEMPTS", str(ATTEMPTS)),
                        ("AWS_DEFAULTS_MODE", "standard")):  # boto3: 3.1 s to connect
        env.setdefault(name, value)
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    pairs = [("--s3_endpoint_url", endpoint),
             ("--s3_access_key_id", env.get("AWS_ACCESS_KEY_ID")),
             ("--s3_secret_access_key", env.get("AWS_SECRET_ACCESS_KEY")),
             ("--s3_session_token", env.get("AWS_SESSION_TOKEN")),
             ("--s3_region_name", env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"))]
    options = [f"{flag}={value}" for flag, value in pairs if value]
    if endpoint and endpoint.lower().startswith("http://"):
        options.append("--s3_disable_ssl")
    return options


def register(path: str) -> None:
    """Makes path's scheme usable by tf.io.gfile (imports tensorflow_io for s3/hdfs/...)."""
    global _native_loaded
    if scheme(path) in _TFIO_SCHEMES and not _native_loaded:
        configure_s3()
        import tensorflow_io  # noqa: F401  (registers the file systems)

        _native_loaded = True


def native_loaded() -> bool:
    """Whether tensorflow-io's file systems were loaded in this process. Its S3 client aborts
    the interpreter at exit ('pure virtual method called', status 134), so the CLI then ends
    the process itself with the real status."""
    return _native_loaded


def renames_atomically(path: str) -> bool:
    """Whether a folder rename at path is one atomic step (local disks, HDFS) rather than a
    copy and a delete that readers can see half of (object stores)."""
    return scheme(path) not in ("s3", "gs", "az")


def join(path: str, *parts: str) -> str:
    """path/part/...: os.path.join for local paths, '/' for URIs."""
    if is_remote(path):
        return posixpath.join(path, *parts)
    return os.path.join(path, *parts)


def dirname(path: str) -> str:
    """The folder holding path."""
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def basename(path: str) -> str:
    """The last component of path (a trailing '/' ignored)."""
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(
        path.rstrip(os.sep))


def absolute(path: str) -> str:
    """path made absolute if local; URIs unchanged."""
    return path if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    """Whether a file or (non-empty, on object stores) folder exists at path; StorageError
    (or OSError, locally) when the store cannot tell."""
    register(path)
    if is_remote(path):
        return _remote_stat(path, "look up") is not None
    return _local_stat(path) is not None


def isdir(path: str) -> bool:
    """Whether path is a folder (False: nothing there, or a file); StorageError (or OSError,
    locally) when the store cannot tell."""
    register(path)
    if is_remote(path):
        found = _remote_stat(path, "look up")
        return found is not None and bool(found.is_directory)
    found = _local_stat(path)
    return found is not None and stat_mode.S_ISDIR(found.st_mode)


def mtime(path: str) -> float:
    """When file path was last written, in seconds since the epoch."""
    register(path)
    if not is_remote(path):
        found = _local_stat(path)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return found.st_mtime
    found = _remote_stat(path, "look up")
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    return found.mtime_nsec / 1e9


def makedirs(path: str) -> None:
    """Creates path and its parents (a no-op on object stores, where folders are prefixes)."""
    register(path)
    with _call(path, "create"):
        tf.io.gfile.makedirs(path)


def listdir(path: str) -> list[str]:
    """Sorted names in folder path; [] if it does not exist; StorageError if the store fails."""
    if not isdir(path):
        return []
    try:
        names = tf.io.gfile.listdir(_bucket_slash(path) if is_remote(path) else path)
    except tf.errors.NotFoundError:  # removed meanwhile
        return []
    except tf.errors.OpError as e:
        raise failure(path, "list", e) from None
    return sorted({name.rstrip("/") for name in names} - {""})


def glob(pattern: str) -> list[str]:
    """Sorted paths matching pattern; StorageError if the store fails (an S3 store that
    matched nothing is asked whether it answered at all)."""
    register(pattern)
    refuse_if_dead(pattern)
    try:
        found = tf.io.gfile.glob(pattern)
    except tf.errors.NotFoundError:
        found = []
    except tf.errors.OpError as e:
        raise failure(pattern, "list", e) from None
    if not found:
        _confirm_absent(pattern, "list")
    return sorted(found)


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(folder, subfolders, files) under path, top down (nothing if path is no folder);
    StorageError if the store fails."""
    if not isdir(path):
        return
    folders, files = [], []
    for name in listdir(path):
        (folders if isdir(join(path, name)) else files).append(name)
    yield path, folders, files
    for name in folders:
        yield from walk(join(path, name))


def open(path: str, mode: str = "r") -> tf.io.gfile.GFile:  # the module's open: gfile, any scheme
    """A file object for path ('r', 'rb', 'w', 'wb', 'a'); text modes are UTF-8."""
    register(path)
    return tf.io.gfile.GFile(path, mode)


def read_text(path: str) -> str:
    """The UTF-8 text of file path (FileNotFoundError if there is none, as open() says)."""
    return read_bytes(path).decode("utf-8")


def read_bytes(path: str) -> bytes:
    """The bytes of file path (FileNotFoundError if there is none, as open() says)."""
    if not is_remote(path):
        with builtins.open(path[len("file://"):] if scheme(path) == "file" else path, "rb") as f:
            return f.read()
    refuse_if_dead(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        _confirm_absent(path)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from None
    except tf.errors.OpError as e:
        raise failure(path, "read", e) from None


def write_text(path: str, text: str) -> None:
    """Writes text to path: through a temporary file and a rename on local disks, so readers
    never see half (commit.write_file); one PUT on object stores, which is atomic there."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    """Writes data to path atomically (see write_text)."""
    if is_remote(path):
        with _call(path, "write"):
            FILES.write_bytes(path, data)
        return
    commit.write_file(FILES, path, data)


def remove(path: str) -> None:
    """Deletes file path if it exists."""
    if exists(path):
        with _call(path, "delete"):
            tf.io.gfile.remove(path)


def rmtree(path: str) -> None:
    """Deletes folder path and everything in it, if it exists."""
    if isdir(path):
        with _call(path, "delete"):
            tf.io.gfile.rmtree(path)
    elif exists(path):
        with _call(path, "delete"):
            tf.io.gfile.remove(path)


def files_under(path: str) -> list[str]:
    """Paths of every file under folder path, relative to it, sorted."""
    found = []
    for folder, _, files in walk(path):
        relative = folder[len(path.rstrip("/")):].strip("/")
        found += [posixpath.join(relative, name) if relative else name for name in files]
    return sorted(found)


def copy(source: str, destination: str, overwrite: bool = True) -> None:
    """Copies file source to destination (any scheme to any scheme)."""
    register(source)
    register(destination)
    parent = dirname(destination)
    if parent and not is_remote(destination):
        os.makedirs(parent, exist_ok=True)
    with _call(source, "copy"), _call(destination, "copy to"):
        tf.io.gfile.copy(source, destination, overwrite=overwrite)


def copytree(source: str, destination: str, last: tuple[str, ...] = ()) -> None:
    """Copies folder source to destination file by file; files named in `last` (relative
    paths) are copied after every other, in that order."""
    files = files_under(source)
    ordered = [f for f in files if f not in last] + [f for f in last if f in files]
    for relative in ordered:
        copy(join(source, relative), join(destination, relative))


def rename(source: str, destination: str) -> None:
    """Moves source (a file or folder) to destination, which must not exist. Atomic on local
    disks and HDFS; on object stores a copy then a delete, which readers can see half of."""
    register(source)
    if not renames_atomically(source) and isdir(source):
        copytree(source, destination)
        rmtree(source)
        return
    with _call(source, "rename"):
        tf.io.gfile.rename(source, destination, overwrite=False)


class GfileFiles:
    """This module's file operations as commit.Files, for outputs that must appear whole."""

    join = staticmethod(join)
    dirname = staticmethod(dirname)
    renames_atomically = staticmethod(renames_atomically)
    exists = staticmethod(exists)
    listdir = staticmethod(listdir)
    rename = staticmethod(rename)
    remove = staticmethod(remove)
    delete_tree = staticmethod(rmtree)

    def makedirs(self, folder: str) -> None:
        """Creates folder and its parents ('': the current folder, nothing to do)."""
        if folder:
            makedirs(folder)

    def write_bytes(self, path: str, data: bytes, sync: bool = False) -> None:
        """Writes a file in place (gfile has no fsync: sync is not honoured)."""
        with open(path, "wb") as f:
            f.write(data)

    def replace(self, source: str, destination: str) -> None:
        """Renames file source over destination."""
        register(source)
        with _call(source, "rename"):
            tf.io.gfile.rename(source, destination, overwrite=True)

    def copy_tree(self, source: str, destination: str, last: Sequence[str]) -> None:
        """Copies folder source to destination, `last` after the rest (see copytree)."""
        copytree(source, destination, tuple(last))


FILES = GfileFiles()
