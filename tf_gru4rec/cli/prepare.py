"""CLI subcommand `prepare`: `prepare log` (any click log) and `prepare rsc15` (the paper's).

Importing this module stays light (argparse only); pandas loads inside the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tf_gru4rec.cli import types

# Rows per chunk of `prepare log --shards` (tests set it small; default: prepare_shards').
CHUNK_ROWS_ENV = "TF_GRU4REC_PREPARE_CHUNK_ROWS"
SEPARATOR_NAMES = {"tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def cmd_prepare_log(args) -> int:
    if args.shards:
        return _prepare_log_shards(args)
    from tf_gru4rec.data.io import write_events
    from tf_gru4rec.data.prepare_log import format_table, prepare_log
    from tf_gru4rec.data.raw_log import read_raw_log
    from tf_gru4rec.paths import atomic_directory, check_input_file

    check_input_file(args.input, "--input")
    _check_prepare_out(args.out)
    stats = {}
    events = read_raw_log(args.input, **_read_options(args), stats=stats)
    try:
        frames, report = prepare_log(events, **_protocol_options(args))
    except ValueError as error:
        raise _protocol_error(args, error) from None
    report = _with_read_report(report, args, stats)
    report["source"] = os.path.abspath(args.input)
    report["files"] = {name: os.path.join(args.out, f"{name}.tsv") for name in frames}
    with atomic_directory(args.out) as staging:  # all files appear at once, or none
        for name, frame in frames.items():
            write_events(frame, os.path.join(staging, f"{name}.tsv"))
        with open(os.path.join(staging, "prepare.json"), "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    sys.stdout.write(format_table(report) + "\n")
    return 0


def _prepare_log_shards(args) -> int:
    """`prepare log --shards`: chunks staged on disk, the protocol run by DuckDB, the training
    set written as session-sorted Parquet shards (`tf_gru4rec.data.prepare_shards`)."""
    from tf_gru4rec import extras
    extras.require("prepare log --shards", "duckdb")
    from tf_gru4rec.data.prepare_log import format_table
    from tf_gru4rec.data.prepare_shards import ShardWork
    from tf_gru4rec.data.scale_protocol import run_protocol
    from tf_gru4rec.data.shard_writer import (
        FORMAT,
        write_events_table,
        write_items,
        write_train_shards,
    )
    from tf_gru4rec.paths import atomic_directory, check_input_file

    check_input_file(args.input, "--input")
    _check_prepare_out(args.out)
    chunk_rows = int(os.environ.get(CHUNK_ROWS_ENV, 0)) or None
    with ShardWork(args.out, memory_mb=args.memory_mb) as work:
        stats = {}
        work.load(args.input, chunk_rows=chunk_rows, **_read_options(args), stats=stats)
        try:
            report = run_protocol(work.con, "events", **_protocol_options(args))
        except ValueError as error:
            raise _protocol_error(args, error) from None
        report = _with_read_report(report, args, stats)
        report["source"] = os.path.abspath(args.input)
        report["format"] = FORMAT
        names = list(report["outputs"])
        report["files"] = {name: os.path.join(args.out, "train" if name == "train"
                                              else f"{name}.parquet") for name in names}
        report["files"]["items"] = os.path.join(args.out, "items.parquet")
        with atomic_directory(args.out) as staging:  # all files appear at once, or none
            shards, raw_ids, support = write_train_shards(
                work.con, "train", os.path.join(staging, "train"), args.shard_events)
            write_items(os.path.join(staging, "items.parquet"), raw_ids, support)
            for name in names[1:]:
                write_events_table(work.con, name, os.path.join(staging, f"{name}.parquet"))
            report["shards"] = shards
            report["n_items"] = len(raw_ids)
            with open(os.path.join(staging, "prepare.json"), "w") as f:
                json.dump(report, f, indent=2)
                f.write("\n")
    labels = {name: "train/" if name == "train" else f"{name}.parquet" for name in names}
    sys.stdout.write(format_table(report, labels) + "\n")
    return 0


def _read_options(args) -> dict:
    """The keyword arguments of `raw_log.read_raw_log` from `prepare log`'s options."""
    return {"session_col": args.session_col, "item_col": args.item_col,
            "time_col": args.time_col, "sep": args.sep, "time_unit": args.time_unit,
            "date_col": args.date_col, "offset_col": args.offset_col,
            "offset_unit": args.offset_unit, "row_filters": _row_filters(args)}


def _row_filters(args) -> list:
    from tf_gru4rec.data.row_filter import RowFilter

    filters = []
    for option, texts, keep in (("--keep", args.keep, True), ("--drop", args.drop, False)):
        for text in texts or ():
            try:
                filters.append(RowFilter.parse(text, keep))
            except ValueError as error:
                raise ValueError(f"{option} {text!r}: {error}") from None
    return filters


def _protocol_options(args) -> dict:
    """The keyword arguments of `prepare_log` / `run_protocol` from `prepare log`'s options:
    each period in days or hours (or from an absolute start), the filters, the collapse."""
    from tf_gru4rec.data.prepare_log import SECONDS_PER_DAY

    def seconds(days, hours):
        return (days or 0.0) * SECONDS_PER_DAY + (hours or 0.0) * 3600.0

    test = seconds(args.test_days, args.test_hours)
    if not test and args.test_start is None:
        test = SECONDS_PER_DAY  # the default: the last day
    return {"test_seconds": test, "valid_seconds": seconds(args.valid_days, args.valid_hours),
            "min_session_length": args.min_session_length,
            "min_item_support": args.min_item_support, "test_start": args.test_start,
            "valid_start": args.valid_start, "collapse": args.collapse_repeats}


def _with_read_report(report: dict, args, stats: dict) -> dict:
    """`report` with "read": the rows read and what each row filter removed."""
    filters = [{**f.to_dict(), "rows_removed": removed}
               for f, removed in zip(_row_filters(args), stats["rows_removed"], strict=True)]
    return {"read": {"rows": stats["rows_read"], "row_filters": filters}, **report}


def _protocol_error(args, error: ValueError) -> ValueError:
    return ValueError(f"--input {args.input!r}: {error}; expected a longer log, or smaller "
                      "--min-item-support, --min-session-length, --test-days/--test-hours "
                      "or --valid-days/--valid-hours (or another --test-start/--valid-start)")


def _check_prepare_out(path: str) -> None:
    """--out: new, empty, or the output of an earlier `prepare log` (it is replaced)."""
    from tf_gru4rec.paths import check_output_dir

    check_output_dir(path)
    if (os.path.isdir(path) and os.listdir(path)
            and not os.path.isfile(os.path.join(path, "prepare.json"))):
        raise ValueError(f"--out {path!r} is a directory with other content; expected a new or "
                         "empty directory, or one written by `prepare log` (it is replaced)")


def _separator(text: str) -> str:
    if text in SEPARATOR_NAMES:
        return SEPARATOR_NAMES[text]
    if text == "\\t":
        return "\t"
    if len(text) != 1:
        raise argparse.ArgumentTypeError(
            f"expected tab, comma, semicolon, pipe or a single character, received {text!r}")
    return text


def cmd_prepare_rsc15(args) -> int:
    from tf_gru4rec.cli.common import json_out as _json_out
    from tf_gru4rec.data.io import read_yoochoose_clicks
    from tf_gru4rec.data.rsc15 import prepare_rsc15, write_rsc15
    from tf_gru4rec.paths import check_input_file, check_output_dir

    check_input_file(args.clicks, "--clicks", "a yoochoose-clicks.dat file")
    check_output_dir(args.out)
    events = read_yoochoose_clicks(args.clicks)
    frames, report = prepare_rsc15(events, test_seconds=args.test_days * 86_400.0,
                                   min_session_length=args.min_session_length,
                                   min_item_support=args.min_item_support)
    empty = [name for name, frame in frames.items() if len(frame) == 0]
    if empty:
        raise ValueError(f"--clicks {args.clicks!r}: the protocol leaves no event in "
                         f"{', '.join(empty)}; expected a longer log (or a smaller --test-days, "
                         "--min-item-support)")
    paths = write_rsc15(frames, args.out, prefix=args.prefix)
    report["source"] = os.path.abspath(args.clicks)
    report["files"] = paths
    report_path = os.path.join(args.out, f"{args.prefix}_report.json")
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    _json_out({"files": paths, "report": report_path, "outputs": report["outputs"]})
    return 0



def _add_filter_options(parser) -> None:
    """The paper's filters, shared by every `prepare` dataset."""
    parser.add_argument("--min-session-length", type=types.integer(2), default=2,
                        help="shortest session kept (default: 2)")
    parser.add_argument("--min-item-support", type=types.integer(1), default=5,
                        help="fewest events of a kept item (default: 5)")


def register(subparsers) -> None:
    """Add `prepare log` and `prepare rsc15` to the `tf-gru4rec` parser."""
    p = subparsers.add_parser("prepare", help="filter and split a raw click log "
                                              "(any log, or the paper's RSC15)")
    datasets = p.add_subparsers(dest="dataset", required=True)
    q = datasets.add_parser(
        "log",
        help="any click log -> train.tsv / test.tsv (/ valid.tsv) and prepare.json",
        description="Read the log (text, gzip or Parquet, by content); keep the rows of "
                    "--keep/--drop; optionally collapse repeated clicks (--collapse-repeats). "
                    "Keep sessions >= --min-session-length events and items >= "
                    "--min-item-support events (repeated until both hold); the sessions "
                    "ending in the last --test-days (--test-hours, or from --test-start) are "
                    "the test set (and the --valid-days before them the validation set); "
                    "test and validation events of items unknown to training are dropped, "
                    "then their sessions shorter than 2. "
                    "Writes train.tsv, test.tsv (valid.tsv), prepare.json (what each step "
                    "removed) and prints a summary table.")
    q.add_argument("--input", required=True,
                   help="click log with a header line: text, gzip-compressed text or Parquet "
                        "(told apart by content, not by name)")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--sep", type=_separator,
                   help="field separator: tab, comma, semicolon, pipe or a character "
                        "(default: detected)")
    q.add_argument("--session-col", default="SessionId")
    q.add_argument("--item-col", default="ItemId")
    q.add_argument("--time-col", default="Time",
                   help="time column: unix seconds or milliseconds, or ISO 8601 strings")
    q.add_argument("--time-unit", choices=("auto", "s", "ms"), default="auto",
                   help="unit of a numeric --time-col (auto: a median above 1e11 is "
                        "milliseconds)")
    q.add_argument("--date-col", help="the time as a date column (ISO 8601) instead of "
                                      "--time-col, plus the optional --offset-col")
    q.add_argument("--offset-col", help="offset after --date-col (e.g. seconds in the day)")
    q.add_argument("--offset-unit", choices=("s", "ms", "min", "h"), default="s",
                   help="unit of --offset-col (default: s)")
    rows = q.add_argument_group("rows and repeats")
    rows.add_argument("--keep", action="append", metavar="COLUMN=VALUE[,VALUE...]",
                      help="keep only the rows whose COLUMN is one of the values, e.g. "
                           "--keep 'action_type=clickout item,search for item' (repeatable: "
                           "a row must pass every --keep and --drop)")
    rows.add_argument("--drop", action="append", metavar="COLUMN=VALUE[,VALUE...]",
                      help="drop the rows whose COLUMN is one of the values (repeatable)")
    rows.add_argument("--collapse-repeats", action="store_true",
                      help="collapse consecutive events of the same item in a session into "
                           "one (before the session-length and item-support filters)")
    _add_filter_options(q)
    period = types.number(0, low_open=True)
    split = q.add_argument_group(
        "splits", "the test set: sessions ending in the last DAYS or HOURS, or at or after "
                  "--test-start (default: the last day); a validation set likewise, before "
                  "the test set")
    test = split.add_mutually_exclusive_group()
    test.add_argument("--test-days", type=period, metavar="DAYS")
    test.add_argument("--test-hours", type=period, metavar="HOURS")
    test.add_argument("--test-start", type=types.instant, metavar="TIME",
                      help="ISO 8601 date-time (UTC unless a zone is given) or unix seconds")
    valid = split.add_mutually_exclusive_group()
    valid.add_argument("--valid-days", type=period, metavar="DAYS")
    valid.add_argument("--valid-hours", type=period, metavar="HOURS")
    valid.add_argument("--valid-start", type=types.instant, metavar="TIME")
    scale = q.add_argument_group(
        "logs larger than memory (needs the scale extra: duckdb)")
    scale.add_argument("--shards", action="store_true",
                       help="read the log by chunks, run the protocol with DuckDB on disk and "
                            "write train/part-NNNNN.parquet shards sorted by session start, "
                            "items.parquet, test.parquet (valid.parquet)")
    scale.add_argument("--shard-events", type=types.integer(1), default=1_000_000,
                       help="events per training shard, cut at a session end "
                            "(default: 1000000)")
    scale.add_argument("--memory-mb", type=types.integer(64), default=1024,
                       help="DuckDB's memory limit in MiB; beyond it, it spills to a work "
                            "directory beside --out (default: 1024)")
    q.set_defaults(func=cmd_prepare_log)

    q = datasets.add_parser(
        "rsc15",
        help="RSC15: yoochoose-clicks.dat -> train_full / test / train_tr / train_valid",
        description="Keep sessions >= 2 events, items >= 5 events, sessions >= 2 again; the "
                    "sessions ending in the last --test-days are the test set (test items "
                    "unknown to training and then short test sessions dropped); the same split "
                    "inside train_full gives train_tr / train_valid. Writes tab-separated "
                    "PREFIX_train_full.txt, PREFIX_test.txt, PREFIX_train_tr.txt, "
                    "PREFIX_train_valid.txt and PREFIX_report.json (what each step removed).")
    q.add_argument("--clicks", required=True,
                   help="raw yoochoose-clicks.dat (session,ISO time,item,category; .gz too)")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--test-days", type=types.number(0, low_open=True), default=1.0,
                   help="length of the test (and validation) period in days (default: 1)")
    _add_filter_options(q)
    q.add_argument("--prefix", default="rsc15", type=types.name,
                   help="output file name prefix (default: rsc15)")
    q.set_defaults(func=cmd_prepare_rsc15)
