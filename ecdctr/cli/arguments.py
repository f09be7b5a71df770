"""The arguments of the `ecdctr` command line: the commands, and each command's arguments."""

from __future__ import annotations

import argparse
import datetime as dt
import os

from absl.flags import argparse_flags

from ecdctr.cli import logs

FIRST_DATE, LAST_DATE = dt.date(1970, 1, 1), dt.date(9990, 12, 31)  # windows fit around them


def _date(text: str) -> dt.date:
    try:
        date = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None
    if not FIRST_DATE <= date <= LAST_DATE:
        raise argparse.ArgumentTypeError(f"{text} is out of range; use a date from {FIRST_DATE} "
                                         f"to {LAST_DATE}")
    return date


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


class _Parser(argparse_flags.ArgumentParser):
    """argparse with absl's logging flags (--verbosity/-v, --log_dir, --logtostderr,
    --alsologtostderr, --stderrthreshold, --logger_levels) on the command and each
    subcommand, listed in their help; absl's other flags stay hidden."""

    def _define_absl_flag(self, flag_instance, suppress):  # noqa: ANN001, ANN202
        super()._define_absl_flag(flag_instance, suppress and flag_instance.name not in
                                  logs.FLAG_NAMES)


def parser(description: str) -> argparse.ArgumentParser:
    """The `ecdctr` command line (its help opens with description): one subcommand per
    command, each command's arguments added by its own function below."""
    p = _Parser(prog="ecdctr", description=description,
                epilog="Logging: ecdctr's progress at info on stderr; libraries' warnings. "
                       "-v 0 adds libraries' info and TensorFlow's native start-up lines, "
                       "-v 1 debug, --verbosity=-2 errors only; --log_dir=DIR writes absl log "
                       "files (add --alsologtostderr to keep stderr).")
    sub = p.add_subparsers(dest="command", required=True)
    _simulate_arguments(sub.add_parser("simulate", help="write simulated natural and ad logs"))
    _build_arguments(sub.add_parser(
        "build", help="Beam job: raw logs -> TFRecords, token counts, stats",
        epilog="Arguments after `--` are Beam pipeline options, e.g. "
               "-- --direct_num_workers=2 --direct_running_mode=multi_processing"))
    _daily_arguments(sub.add_parser(
        "daily", help="run what is due for a day: build, TPM, CPM, A-CTR, export"))
    _compare_arguments(sub.add_parser(
        "compare", help="train model variants on the same days, score held-out days"))
    _inspect_arguments(sub.add_parser(
        "inspect", help="say what a model folder is (reads its meta.json only)"))
    _versions_arguments(sub.add_parser(
        "versions", help="list the published versions: day, metrics, gate"))
    _rollback_arguments(sub.add_parser(
        "rollback", help="serve an earlier version again, and hold new ones"))
    _history_arguments(sub.add_parser(
        "history", help="the served model's figures on each new day, from the daily reports"))
    _predict_arguments(sub.add_parser(
        "predict", help="score raw-log rows with an exported SavedModel"))
    _query_arguments(sub.add_parser(
        "query", help="score raw-log rows through a running TF Serving"))
    _spec_arguments(sub.add_parser(
        "spec", help="check a feature spec (and its logs); say what a spec change does"))
    return p


def _simulate_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--out", required=True, help="logs folder to write")
    s.add_argument("--start", type=_date, required=True, help="first day, YYYY-MM-DD")
    s.add_argument("--days", type=_positive_int, required=True, help="number of days")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--users", type=_positive_int, help="initial users (default: simulator default)")
    s.add_argument("--items", type=_positive_int, help="initial items")
    s.add_argument("--rows_per_day", type=_positive_int, help="natural rows per day (ad: a tenth)")
    s.add_argument("--ad_ctr_offset", type=float,
                   help="extra click logit of ad impressions (default -0.3, ad blindness: an ad "
                        "CTR about half the natural one; 0.7 makes them about equal)")
    s.add_argument("--away_rate", type=float,
                   help="intermittent users: daily chance a user leaves for a while (default 0)")
    s.add_argument("--return_rate", type=float, help="daily chance an away user returns (0.05)")


def _build_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--spec", required=True, help="feature spec YAML")
    b.add_argument("--logs", required=True,
                   help="raw logs folder (<logs>/<source>/date=D/): a path, s3://, gs://, hdfs://")
    b.add_argument("--work", required=True,
                   help="work folder for examples, counts, stats: a path, s3://, gs://, hdfs://")
    b.add_argument("--lock", help="local lock file against concurrent builds (default: "
                                  "<work>/.build.lock for a local --work, none for a remote one)")
    b.add_argument("--start", type=_date, help="first day to build (default: all)")
    b.add_argument("--end", type=_date, help="last day to build (default: all)")
    b.add_argument("--sources", default="natural,ad", help="comma-separated sources")
    b.add_argument("--skip_built", action="store_true", help="leave days already built alone")


def _daily_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--config", required=True, help="run config YAML (see configs/demo.yaml)")
    when = d.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", type=_date, help="evaluation day D, YYYY-MM-DD")
    when.add_argument("--backfill", type=_date, nargs=2, metavar=("START", "END"),
                      help="run the days from START to END in order")
    d.add_argument("--force", action="store_true", help="run a day again even if its report says ok")


def _compare_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--config", required=True, help="run config YAML")
    c.add_argument("--date", type=_date, required=True, help="first held-out day D")
    c.add_argument("--variants", required=True,
                   help="comma-separated, e.g. dnn,dnn+adasparse,dnn+adasparse:binarization,"
                        "dnn+star,dnn+apg,dcnv2,dcnv2+adasparse (first = baseline); with "
                        "--source=ad also the E-CDCTR ablations ad_only, joint, finetune, ecdctr, "
                        "ecdctr-no_bn_reinit, ecdctr-no_tpm, ecdctr-auto, ecdctr-no_cpm, "
                        "ecdctr-daily")
    c.add_argument("--out", required=True, help="report JSON (a .md table is written beside it)")
    c.add_argument("--eval_days", type=_positive_int, default=1, help="held-out days from D (default 1)")
    c.add_argument("--source", choices=("natural", "ad"), default="natural")
    c.add_argument("--seeds", type=_positive_int, default=1, help="repeat with N seeds: mean ± std")
    c.add_argument("--plots", help="folder for PNG figures (masks, AUC by bin, sparsity band)")


def _inspect_arguments(i: argparse.ArgumentParser) -> None:
    i.add_argument("folder", help="a TPM snapshot, CPM or A-CTR folder, e.g. work/models/actr/D")
    i.add_argument("--json", action="store_true", help="print the whole meta.json instead")


def _versions_arguments(v: argparse.ArgumentParser) -> None:
    v.add_argument("--export", required=True,
                   help="the run config's export folder (or its actr/ folder), local or a URI")
    v.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _rollback_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--export", required=True, help="the export folder (or its actr/ folder)")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--to", type=_positive_int, help="the version to serve again")
    which.add_argument("--release", action="store_true",
                       help="end the hold: the next daily run publishes through the gate again")


def _history_arguments(h: argparse.ArgumentParser) -> None:
    h.add_argument("--work", required=True,
                   help="the run config's work folder (its reports/ are read), local or a URI")
    h.add_argument("--json", action="store_true", help="print JSON instead of a table")
    h.add_argument("--png", help="also draw the series into this PNG file")
    h.add_argument("--tensorboard", help="also write the series as TensorBoard scalars here "
                                         "(one per metric, step = the day's ordinal)")
    h.add_argument("--start", type=_date, help="first day, YYYY-MM-DD (default: the first)")
    h.add_argument("--end", type=_date, help="last day, YYYY-MM-DD (default: the last)")


def _predict_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--model", required=True,
                   help="a SavedModel version folder, or its parent (newest version is used)")
    r.add_argument("--input", required=True, help="JSON Lines file of raw-log rows (.jsonl[.gz])")
    r.add_argument("--batch_size", type=_positive_int, default=1024, help="rows per call (default 1024)")


def _query_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("--target", required=True,
                   help="HOST:PORT of TF Serving: its gRPC port (8500) or, with --protocol=rest, "
                        "its REST port (8501)")
    q.add_argument("--model", required=True, help="model name in TF Serving's models.config, e.g. actr")
    q.add_argument("--input", required=True, help="JSON Lines file of raw-log rows (.jsonl[.gz])")
    q.add_argument("--protocol", choices=("grpc", "rest"), default="grpc", help="default: grpc")
    q.add_argument("--spec", default=os.path.join("features", "default.yaml"),
                   help="feature spec that turns rows into Examples; it must match the served "
                        "model's (its assets.extra/spec.yaml). Default: features/default.yaml, "
                        "relative to the current directory")
    q.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    q.add_argument("--batch_size", type=_positive_int, default=256,
                   help="examples per request (default 256)")


def _spec_arguments(sp: argparse.ArgumentParser) -> None:
    spec_sub = sp.add_subparsers(dest="spec_command", required=True)
    sc = spec_sub.add_parser(
        "check", help="validate a spec; with --logs, run the build's row checks on a sample",
        epilog="Exit status: 0 valid (and no sampled row would be quarantined), 1 valid but "
               "sampled rows would be quarantined or log files are unreadable, 2 invalid spec.")
    sc.add_argument("file", help="feature spec YAML")
    sc.add_argument("--logs", help="raw logs folder (<logs>/<source>/date=D/) to sample")
    sc.add_argument("--days", type=_positive_int, default=3,
                    help="newest days per source to sample (default 3)")
    sc.add_argument("--rows", type=_positive_int, default=1000,
                    help="rows to sample per day (default 1000)")
    sc.add_argument("--json", action="store_true", help="print the report as JSON")
    sd = spec_sub.add_parser(
        "diff", help="what changes from OLD to NEW: features, warm starts, TPM snapshots, "
                     "retraining, rebuilding",
        epilog="Exit status: 0 identical in effect (same fingerprint), 1 they differ, 2 an "
               "invalid spec.")
    sd.add_argument("old", help="the spec in use (e.g. a model folder's spec.yaml)")
    sd.add_argument("new", help="the edited spec")
    sd.add_argument("--json", action="store_true", help="print the report as JSON")
