"""What the `tf-gru4rec` subcommands share: click-log options and reading, the training
config from `--preset` and `--set`, the test-log check, and the output (JSON or a table).

Imports no other command-line module (`cli`, `cli_train`, ... import it), and TensorFlow only
where a helper needs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

logger = logging.getLogger("tf_gru4rec")


def add_read_options(parser: argparse.ArgumentParser) -> None:
    """--format, --session-col, --item-col, --time-col."""
    group = parser.add_argument_group("click-log format")
    group.add_argument("--format", default="auto",
                       choices=("auto", "tsv", "csv", "parquet", "yoochoose"),
                       help="auto, tsv, csv, parquet or yoochoose (default: by file name)")
    group.add_argument("--session-col", default="SessionId")
    group.add_argument("--item-col", default="ItemId")
    group.add_argument("--time-col", default="Time")


def add_json_option(parser) -> None:
    """--json: print the results as JSON instead of a table."""
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON (default: a table)")


def read_clicks(path: str, args, option: str):
    """The click log at `path` (checked as an input file of `option`) with the read options."""
    from tf_gru4rec.data.io import read_events
    from tf_gru4rec.paths import check_input_file

    check_input_file(path, option)
    return read_events(path, session_col=args.session_col, item_col=args.item_col,
                       time_col=args.time_col, fmt=args.format)


def check_trainable(events, option: str, path: str) -> None:
    """An error if no session has a next event to train on (every item of the training log
    is in the vocabulary, so a session of 2 or more events is one)."""
    from tf_gru4rec.data.io import SESSION

    if not events[SESSION].duplicated().any():
        raise ValueError(f"{option} {path!r}: every session has a single event, nothing to "
                         "train on; expected sessions of 2 or more clicks")


def test_log(path: str, args, vocabulary, option: str = "--test"):
    """Test events restricted to the model's items, then sessions with >= 2 events; an error
    if nothing is left to evaluate."""
    from tf_gru4rec.data.io import ITEM
    from tf_gru4rec.data.preprocess import drop_short_sessions
    from tf_gru4rec.data.session_log import SessionLog

    events = read_clicks(path, args, option)
    known = vocabulary.lookup(events[ITEM].to_numpy()) >= 0
    if (~known).any():
        logger.info("test: dropping %d events of items unknown to the model", (~known).sum())
    kept = drop_short_sessions(events[known], 2)
    if len(kept) == 0:
        raise ValueError(
            f"{option} {path!r}: nothing to evaluate ({(~known).sum()} of {len(events)} events "
            "are of items unknown to the model); expected sessions of 2 or more clicks on "
            "items of the training log")
    return SessionLog.from_events(kept, vocabulary)


test_log.__test__ = False  # not a pytest test, whatever imports it


def overrides(pairs: list[str]) -> dict:
    """--set KEY=VALUE pairs as a dict."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set loss=bpr-max")
        values[key.strip()] = value
    return values


def preset(value: str):
    """--preset: a preset name or a JSON file of parameters, as a TrainConfig."""
    from tf_gru4rec.config import load_preset
    from tf_gru4rec.paths import check_input_file

    expected = "a preset name or a JSON file of parameters"
    if os.path.exists(value) or value.endswith(".json"):
        check_input_file(value, "--preset", expected)
        try:
            with open(value) as f:
                values = json.load(f)
        except ValueError as error:
            raise ValueError(f"--preset {value!r} is not valid JSON ({error}); expected "
                             f"{expected}") from None
        if not isinstance(values, dict):
            raise ValueError(f"--preset {value!r} holds a {type(values).__name__}; expected "
                             "a JSON object of parameters")
    return load_preset(value)


def train_config(args, values: dict):
    """The run's TrainConfig: preset (or defaults), then --set overrides, range-checked."""
    from tf_gru4rec.config import TrainConfig
    from tf_gru4rec.config_checks import check_config

    config = preset(args.preset) if args.preset else TrainConfig()
    config = config.with_overrides(values)
    check_config(config)
    return config


def json_out(result: dict) -> None:
    """`result` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")


def results_out(results: dict, as_json: bool) -> None:
    """Metrics as JSON, or as a table of one row per model (`results`: name -> metrics)."""
    if as_json:
        json_out(results)
        return
    from tf_gru4rec.cli.results_table import format_metrics

    sys.stdout.write(format_metrics(results) + "\n")
