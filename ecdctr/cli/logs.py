"""Command-line logging: absl's logging flags and handler, TensorFlow's native log level, and
a TensorFlow import that keeps its native start-up noise out of a normal run's output."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

from absl import flags
from absl import logging as absl_logging

import ecdctr

# The packages whose module loggers log the progress of every command.
LOGGERS = ("ecdctr", "pipelines")
# absl's logging flags, known from TensorFlow's own tools; `ecdctr --help` shows them.
FLAG_NAMES = ("verbosity", "log_dir", "logtostderr", "alsologtostderr", "stderrthreshold",
              "logger_levels")
# What TensorFlow's native code prints while it is imported on a CPU-only machine: plugin
# registration races, missing CUDA/TensorRT, oneDNN and CPU-instruction notices. None of it
# is actionable here; shown again with --verbosity=0 or more.
NOISE = re.compile(
    r"Unable to register cu(DNN|FFT|BLAS) factory|Could not find cuda drivers|"
    r"TF-TRT Warning: Could not find TensorRT|oneDNN custom operations are on|"
    r"This TensorFlow binary is optimized to use available CPU instructions|"
    r"^To enable the following instructions:|"
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR")

# At the default verbosity: Beam logs a failing DoFn's traceback here and then raises the same
# failure, which the CLI prints once (its error line, or the traceback of a bug).
QUIET_LOGGERS = ("apache_beam.runners.common",)
# Library warnings about optional parts ecdctr does not use (Beam's BigQuery client).
NOISE_LOGS = re.compile(r"apitools not found, and bigquery client libraries are not available")


class _DropNoise(logging.Filter):
    """Drops NOISE_LOGS records unless --verbosity is 0 or more."""

    def filter(self, record: logging.LogRecord) -> bool:
        return flags.FLAGS.verbosity >= 0 or not NOISE_LOGS.search(str(record.msg))


_DROP_NOISE = _DropNoise()


def reset_flags() -> None:
    """Puts the logging flags back to their defaults, so that a command run in-process (tests,
    tools) does not inherit the verbosity of the one before."""
    for name in FLAG_NAMES:
        flags.FLAGS[name].unparse()


def configure() -> None:
    """Applies the parsed logging flags. --verbosity sets the libraries' level as in absl (-1:
    warnings, the default here although absl.app's is 0; 0: info; 1: debug), while the progress
    of ecdctr's own packages (LOGGERS) stays at info unless --verbosity is -2 (errors only) or
    lower, or --logger_levels names the package.
    --log_dir writes absl's log files there (stderr then gets what --stderrthreshold lets
    through, or everything with --alsologtostderr). TensorFlow's native log level follows
    --verbosity unless TF_CPP_MIN_LOG_LEVEL was set by the user."""
    fv = flags.FLAGS
    if not fv["verbosity"].present:  # absl.app raised it to info; libraries stay at warning
        fv.verbosity = -1
    handler = absl_logging.get_absl_handler()
    if handler not in logging.root.handlers:
        absl_logging.use_absl_handler()  # also applies --verbosity and --logger_levels
    if fv.log_dir:
        if "://" in fv.log_dir:
            raise ValueError(f"--log_dir={fv.log_dir}: absl writes log files on a local disk. "
                             f"Fix: pass a local folder (the work folder may still be a URI).")
        os.makedirs(fv.log_dir, exist_ok=True)
        handler.start_logging_to_file(program_name="ecdctr", log_dir=fv.log_dir)
    else:
        fv.logtostderr = True  # the stderr of now (a test's capture, a redirect)
    root = logging.getLogger().getEffectiveLevel()
    handler.addFilter(_DROP_NOISE)  # once: a set of filters
    for name in QUIET_LOGGERS:
        if name not in (fv.logger_levels or {}):
            logging.getLogger(name).setLevel(logging.CRITICAL if fv.verbosity < 0 else
                                             logging.NOTSET)
    for name in LOGGERS:
        if name not in (fv.logger_levels or {}):
            logging.getLogger(name).setLevel(min(root, logging.INFO) if root <= logging.WARNING
                                             else root)
    if not ecdctr.USER_TF_CPP_MIN_LOG_LEVEL:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if fv.verbosity >= 0 else "2"


class _Keep(logging.Handler):
    """Keeps the records it is given, as the lines a command reports in its own output."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        severity = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        self.lines.append(severity + record.getMessage())


@contextlib.contextmanager
def kept_lines(name: str) -> Iterator[list[str]]:
    """The info lines and above that the logger `name` (or one below it) logs meanwhile, each
    with its severity in front from warning up ("error: ..."), kept from the log instead: for
    a command that reports them in its own output."""
    logger, keep = logging.getLogger(name), _Keep()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(keep)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield keep.lines
    finally:
        logger.removeHandler(keep)
        logger.propagate = propagate
        logger.setLevel(level)


def import_tensorflow() -> None:
    """Imports TensorFlow (a no-op once imported). At the default verbosity, what its native
    code writes to the process's stderr meanwhile is caught and written back without the
    lines NOISE matches: nothing else is dropped."""
    if "tensorflow" in sys.modules or flags.FLAGS.verbosity >= 0:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (e.g. closed by the caller): nothing to filter
        import tensorflow  # noqa: F401
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines(keepends=True) if not NOISE.search(line)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()
