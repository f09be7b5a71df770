"""The `ecdctr` command line: simulate, build, daily, compare, predict, query, and the tools
around them (inspect, versions, rollback, history, spec). absl runs it (absl.app, absl's
logging flags on every subcommand through absl.flags.argparse_flags)."""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence

from absl import app

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from ecdctr.cli import logs
from ecdctr.cli.arguments import parser
from ecdctr.io.storage import StorageError
from ecdctr.io.storage import explain as storage_explain
from ecdctr.spec.validation import ConfigError

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `ecdctr` console script: absl.app runs the command."""
    from_command_line = argv is None  # else called in-process (tests, tools): sys.exit only
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, beam_args = argv[:cut], argv[cut + 1:]
    logs.reset_flags()
    app.run(lambda args: _run(args, beam_args, from_command_line),
            argv=["ecdctr", *argv], flags_parser=lambda a: parser(__doc__).parse_args(a[1:]))


def _run(args: argparse.Namespace, beam_args: list[str], from_command_line: bool) -> None:
    status = 1
    try:
        logs.configure()
        if args.command != "simulate":  # the one command that does not use TensorFlow
            logs.import_tensorflow()
        status = COMMANDS[args.command](args, beam_args) or 0
    except Exception as e:  # noqa: BLE001  (known kinds become one line; others a traceback)
        message = error_line(e)
        if message is None:
            traceback.print_exc()
            status = 1
        else:
            print(f"ecdctr {args.command}: error: {message}", file=sys.stderr)
            status = 2
    except KeyboardInterrupt:
        status = 130
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # a bug: its traceback, and the status of an uncaught exception
        traceback.print_exc()
        status = 1
    finally:
        _exit(status, whole_process=from_command_line)

_FIXES = {  # errno / TensorFlow error class -> what to do
    errno.ENOSPC: "free space on the disk or bucket that holds it",
    errno.EDQUOT: "free space or raise the quota of the disk that holds it",
    errno.EACCES: "give the user running ecdctr permission to it",
    errno.EPERM: "give the user running ecdctr permission to it",
    errno.EROFS: "point to a writable location",
    errno.EISDIR: "pass a file, not a folder",
    errno.ENOTDIR: "pass a folder, not a file",
    "ResourceExhaustedError": "free space on the disk or bucket that holds it",
    "PermissionDeniedError": "give the user running ecdctr permission to it",
    "NotFoundError": "check the path",
    "DataLossError": "the file is corrupt: delete it and rerun the step that writes it",
}


def _storage_error(e: BaseException | None, depth: int = 0) -> StorageError | None:
    """The StorageError behind e: e itself, its cause or context, or one that Beam's file
    systems wrapped (BeamIOError's exception_details), at any depth."""
    if e is None or depth > 8:
        return None
    if isinstance(e, StorageError):
        return e
    explained = storage_explain(e)
    if explained is not None:
        return explained
    details = getattr(e, "exception_details", None)
    for inner in details.values() if isinstance(details, dict) else ():
        found = _storage_error(inner, depth + 1) if isinstance(inner, BaseException) else None
        if found is not None:
            return found
    return _storage_error(e.__cause__ or e.__context__, depth + 1)


def error_line(e: BaseException) -> str | None:
    """One line saying what went wrong, where, and the fix, for the errors a user can act on
    (bad input, a missing or unwritable path, a full disk, TensorFlow file errors); None for
    anything else, which is a bug and keeps its traceback."""
    storage_error = _storage_error(e)
    if storage_error is not None:
        return str(storage_error)
    if isinstance(e, ConfigError | ValueError):
        return str(e)
    if isinstance(e, OSError):
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        fix = _FIXES.get(e.errno or -1)
        return f"{e.strerror or e}{where}" + (f". Fix: {fix}." if fix else "")
    kind = type(e).__name__
    if type(e).__module__.startswith("tensorflow") and hasattr(e, "message"):
        text = " ".join(str(e.message).split())[:500]
        return f"{kind}: {text}" + (f". Fix: {_FIXES[kind]}." if kind in _FIXES else "")
    if isinstance(e, RuntimeError):  # Beam's wrapping of a failed DoFn, traceback or not
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = str(e)
        if any(line.startswith("Traceback") for line in lines):
            causes = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
            cause = causes[-1] if causes else lines[-1]
        code = re.search(r"\[Errno (\d+)\]", cause)
        fix = _FIXES.get(int(code.group(1))) if code else None
        return cause + (f". Fix: {fix}." if fix else "")
    return None


def _exit(status: int, whole_process: bool) -> None:
    """Ends the process with status. Once tensorflow-io's S3 file system was used, the
    interpreter aborts at exit (status 134, 'pure virtual method called'): then the output
    is flushed and the process ends here, skipping the interpreter's teardown."""
    storage = sys.modules.get("ecdctr.io.storage")
    if whole_process and storage is not None and storage.native_loaded():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _simulate(args: argparse.Namespace, _: list[str]) -> None:
    from ecdctr.data.simulator import SimConfig, simulate

    sizes = {"users": args.users, "items": args.items, "natural_rows_per_day": args.rows_per_day,
             "away_rate": args.away_rate, "return_rate": args.return_rate,
             "ad_ctr_offset": args.ad_ctr_offset}
    config = SimConfig(seed=args.seed, **{k: v for k, v in sizes.items() if v is not None})
    summary = simulate(args.out, args.start, args.days, config)
    logger.info("simulated: %s", json.dumps(summary))


def _build(args: argparse.Namespace, beam_args: list[str]) -> None:
    from ecdctr.data.vocab import build_vocabularies
    from ecdctr.io.layout import built_partitions
    from ecdctr.spec.feature_spec import load_spec
    from pipelines.build import build

    spec = load_spec(args.spec)
    sources = [s for s in args.sources.split(",") if s]
    build(spec, args.logs, args.work, start=args.start, end=args.end, sources=sources,
          beam_args=beam_args, skip_built=args.skip_built, lock=args.lock)
    parts = [(s, d) for s in sources for d in built_partitions(args.work, s)]
    vocabs = build_vocabularies(spec, args.work, parts)  # each model folder keeps its own
    logger.info("vocabulary sizes over %d built days (min_count/max_size applied): %s", len(parts),
                ", ".join(f"{k} {len(v):,}" for k, v in vocabs.items()))


def _daily(args: argparse.Namespace, beam_args: list[str]) -> int:
    from dataclasses import replace

    from ecdctr.config import load_config
    from ecdctr.io.jsonio import json_safe
    from pipelines.daily import OUTCOMES, run_daily

    config = load_config(args.config)
    if beam_args:
        config = replace(config, beam_args=tuple(beam_args))
    days = [args.date]
    if args.backfill:
        start, end = args.backfill
        if start > end:
            raise ValueError(f"backfill start {start} is after end {end}")
        days = [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]
    codes = []
    for day in days:
        if len(days) > 1:
            logger.info("=== backfill %s ===", day)
        try:
            report = run_daily(config, day, force=args.force)
        except Exception as e:  # noqa: BLE001  (the report says failed; the exit code too)
            if isinstance(e, ConfigError):
                raise
            message = error_line(e)
            if message is None:
                traceback.print_exc()
            print(f"ecdctr daily: error: {day} failed: {message or type(e).__name__}",
                  file=sys.stderr)
            codes.append(OUTCOMES["failed"])
            break  # later days build on this one
        outcome = report.get("outcome", "published" if report.get("published") else "rejected")
        print(json.dumps(json_safe({
            "date": report["date"], "status": report["status"], "outcome": outcome,
            "metrics": _headline(report.get("metrics")), "published": report.get("published"),
            "export": report.get("export") or report.get("rejected"),
            # an auto setting's choice at the weekly derivation (docs/models.md)
            **({"choice": {k: report["choice"][k] for k in ("chosen", "reason")}}
               if report.get("choice") else {})}), indent=2, allow_nan=False))
        codes.append(OUTCOMES.get(outcome, OUTCOMES["failed"]))
    # the most urgent outcome of the days run: failed, then rejected, then published, then done
    urgency = [OUTCOMES[k] for k in ("failed", "rejected", "degraded", "published", "done")]
    return min(codes, key=lambda code: urgency.index(code) if code in urgency else len(urgency))


def _headline(metrics: dict | None) -> dict | None:
    """The day's figures for the summary on stdout: the overall ones; the per-domain and
    per-bin tables stay in the report file (hundreds of domains would bury the summary)."""
    if metrics is None:
        return None
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _compare(args: argparse.Namespace, beam_args: list[str]) -> None:
    from dataclasses import replace

    from ecdctr.config import load_config
    from pipelines.compare import markdown_table, run_compare

    config = load_config(args.config)
    if beam_args:
        config = replace(config, beam_args=tuple(beam_args))
    report = run_compare(config, args.date, [v for v in args.variants.split(",") if v], args.out,
                         eval_days=args.eval_days, source=args.source, seeds=args.seeds,
                         plots=args.plots)
    print(markdown_table(report))


def _inspect(args: argparse.Namespace, _: list[str]) -> None:
    from ecdctr.io import storage
    from ecdctr.training.checkpoint import META, describe

    if args.json:
        path = storage.join(args.folder, META)
        if not storage.exists(path):
            raise FileNotFoundError(f"{args.folder}: no {META}; not a model folder written by "
                                    f"ecdctr")
        print(storage.read_text(path))
    else:
        print(describe(args.folder))


def _predict(args: argparse.Namespace, _: list[str]) -> int:
    import tensorflow as tf

    from ecdctr.data.rows import RowParser
    from ecdctr.io import storage
    from ecdctr.serving.client import read_examples
    from ecdctr.serving.export import INPUT_KEY, OUTPUT_KEY, SPEC_FILE, versions
    from ecdctr.spec.feature_spec import load_spec

    path = args.model
    if not storage.exists(storage.join(path, "saved_model.pb")):
        found = versions(path)
        if not found:
            raise FileNotFoundError(f"{path}: neither a SavedModel nor a folder of versions. "
                                    f"Fix: pass <export>/actr or <export>/actr/<version>.")
        path = storage.join(path, str(found[-1]))
    parser = RowParser(load_spec(storage.join(path, "assets.extra", SPEC_FILE)))
    try:
        serve = tf.saved_model.load(path).signatures["serving_default"]
    except (tf.errors.OpError, OSError, ValueError) as e:
        raise RuntimeError(f"{path}: the SavedModel cannot be loaded ({str(e).splitlines()[0]}). "
                           f"Fix: pass another version, e.g. the previous one.") from None
    rows, problems = read_examples(args.input, parser)
    for problem in problems:
        print(problem, file=sys.stderr)
    bad = len(problems)
    good = [r for r in rows if r is not None]
    probs: list[float] = []
    for i in range(0, len(good), args.batch_size):
        batch = tf.constant(good[i:i + args.batch_size])
        probs.extend(serve(**{INPUT_KEY: batch})[OUTPUT_KEY].numpy().tolist())
    scores = iter(probs)
    for r in rows:
        print("nan" if r is None else f"{next(scores):.6f}")
    logger.info("scored %d rows with %s (%d invalid, printed as nan)", len(good), path, bad)
    return 1 if bad else 0


def _export_base(folder: str) -> str:
    from ecdctr.io import storage

    nested = storage.join(folder, "actr")
    return nested if storage.isdir(nested) else folder


def _versions(args: argparse.Namespace, _: list[str]) -> None:
    from ecdctr.io.jsonio import DamagedFile
    from ecdctr.serving.export import describe_versions, held

    base = _export_base(args.export)
    rows = describe_versions(base)
    try:
        hold = held(base)
    except DamagedFile as e:  # shown as it is: it keeps new versions out
        hold = {"damaged": str(e)}
    if args.json:
        print(json.dumps({"base": base, "versions": rows, "hold": hold}, indent=2))
        return
    if not rows:
        raise FileNotFoundError(f"{base}: no published version. Fix: pass the run config's "
                                f"export folder.")
    print(f"{'version':>7}  {'day':10}  {'AUC':>6}  {'gate':8}  {'vs serving':>10}  published at"
          f"{'':14}note")
    for row in rows:
        auc = f"{row['auc']:.4f}" if isinstance(row["auc"], float) else "-"
        vs = f"{row['serving_auc']:.4f}" if isinstance(row["serving_auc"], float) else "-"
        note = f"rollback to {row['rollback_of']}" if row["rollback_of"] else ""
        if row is rows[-1]:
            note = ("served (highest); " + note).strip("; ")
        print(f"{row['version']:>7}  {row['date'] or '-':10}  {auc:>6}  {row['gate'] or '-':8}  "
              f"{vs:>10}  {row['published_at'] or '-':26}{note}")
    if hold and "damaged" in hold:
        print(f"rollback hold damaged: {hold['damaged']}; new candidates are held until "
              f"`ecdctr rollback --release` removes it (or it is rewritten)")
    elif hold:
        print(f"rollback in force since {hold['at']}: version {hold['version']} serves version "
              f"{hold['to']}; new candidates are held (`ecdctr rollback --release` ends it)")


def _rollback(args: argparse.Namespace, _: list[str]) -> None:
    from ecdctr.serving.export import release, rollback

    base = _export_base(args.export)
    if args.release:
        hold = release(base)
        what = ("no rollback was in force" if not hold else
                f"removed the damaged rollback hold ({hold['damaged']})" if "damaged" in hold
                else f"released the rollback to version {hold['to']}")
        logger.info("%s", what + (": the next daily run publishes through the gate" if hold else ""))
        return
    rollback(base, args.to)


def _history(args: argparse.Namespace, _: list[str]) -> None:
    from ecdctr.evaluation import history
    from ecdctr.io.jsonio import json_safe

    rows = history.served_series(args.work, args.start, args.end)
    if args.json:
        print(json.dumps(json_safe(rows), indent=2))
    elif rows:
        print(history.text_table(rows))
    else:
        logger.warning("%s: no daily report with the served model's figures. Fix: pass the run "
                    "config's work folder; the first day a version serves is the day after "
                    "the first publish", args.work)
    if args.png:
        logger.info("wrote %s", history.write_png(rows, args.png))
    if args.tensorboard:
        logger.info("wrote TensorBoard scalars to %s", history.write_tensorboard(rows, args.tensorboard))


def _query(args: argparse.Namespace, _: list[str]) -> int:
    from ecdctr.data.rows import RowParser
    from ecdctr.serving.client import query, read_examples
    from ecdctr.spec.feature_spec import load_spec

    rows, problems = read_examples(args.input, RowParser(load_spec(args.spec)))
    for problem in problems:
        print(problem, file=sys.stderr)
    good = [r for r in rows if r is not None]
    probs = query(args.target, args.model, good, protocol=args.protocol, timeout=args.timeout,
                  batch_size=args.batch_size)
    scores = iter(probs)
    for r in rows:
        print("nan" if r is None else f"{next(scores):.6f}")
    logger.info("scored %d rows with model %s at %s over %s (%d invalid, printed as nan)", len(good),
                args.model, args.target, args.protocol, len(problems))
    return 1 if problems else 0


def _spec(args: argparse.Namespace, _: list[str]) -> int:
    from ecdctr.cli import spec_commands as spec_tools

    if args.spec_command == "check":
        report, status = spec_tools.check(args.file, args.logs, args.days, args.rows)
        print(spec_tools.as_json(report) if args.json else spec_tools.format_check(report))
    else:
        report, status = spec_tools.diff(args.old, args.new)
        print(spec_tools.as_json(report) if args.json else spec_tools.format_diff(report))
    return status


COMMANDS = {"simulate": _simulate, "build": _build, "daily": _daily, "compare": _compare,
            "inspect": _inspect, "predict": _predict, "query": _query, "versions": _versions,
            "rollback": _rollback, "history": _history, "spec": _spec}
