"""The `tf-gru4rec` command line: train, evaluate, baselines, export, serve, replay, demo."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys

from tf_gru4rec import cli_types as types

logger = logging.getLogger("tf_gru4rec")


def _add_read_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("click-log format")
    group.add_argument("--format", default="auto",
                       choices=("auto", "tsv", "csv", "parquet", "yoochoose"),
                       help="auto, tsv, csv, parquet or yoochoose (default: by file name)")
    group.add_argument("--session-col", default="SessionId")
    group.add_argument("--item-col", default="ItemId")
    group.add_argument("--time-col", default="Time")


def _read(path: str, args, option: str):
    from tf_gru4rec.data.io import read_events
    from tf_gru4rec.paths import check_input_file

    check_input_file(path, option)
    return read_events(path, session_col=args.session_col, item_col=args.item_col,
                       time_col=args.time_col, fmt=args.format)


def _check_trainable(events, option: str, path: str) -> None:
    """An error if no session has a next event to train on (every item of the training log
    is in the vocabulary, so a session of 2 or more events is one)."""
    from tf_gru4rec.data.io import SESSION

    if not events[SESSION].duplicated().any():
        raise ValueError(f"{option} {path!r}: every session has a single event, nothing to "
                         "train on; expected sessions of 2 or more clicks")


def _test_log(path: str, args, vocabulary, option: str = "--test"):
    """Test events restricted to the model's items, then sessions with >= 2 events; an error
    if nothing is left to evaluate."""
    from tf_gru4rec.data.io import ITEM
    from tf_gru4rec.data.preprocess import drop_short_sessions
    from tf_gru4rec.data.session_log import SessionLog

    events = _read(path, args, option)
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


def _overrides(pairs: list[str]) -> dict:
    """--set KEY=VALUE pairs as a dict."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set loss=bpr-max")
        overrides[key.strip()] = value
    return overrides


def _preset(value: str):
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


def _config(args, overrides: dict):
    """The run's TrainConfig: preset (or defaults), then --set overrides, range-checked."""
    from tf_gru4rec.config import TrainConfig
    from tf_gru4rec.config_checks import check_config

    config = _preset(args.preset) if args.preset else TrainConfig()
    config = config.with_overrides(overrides)
    check_config(config)
    return config


def _json_out(result: dict) -> None:
    sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")


def _check_train_paths(args) -> None:
    from tf_gru4rec.paths import (
        check_input_file,
        check_model_dir,
        check_output_dir,
        check_output_file,
    )

    check_output_dir(args.out, "--out", replaceable=True)
    if os.path.isdir(args.train):  # Parquet shards of `prepare log --shards`
        from tf_gru4rec.data.io import DataError
        from tf_gru4rec.data.shards import ShardSet

        try:  # kept for training: the vocabulary is read once
            args.train_shards = ShardSet.load(args.train)
        except DataError as error:
            raise ValueError(f"--train {args.train!r} is a directory, not Parquet shards "
                             f"({error})") from None
    else:
        check_input_file(args.train, "--train")
    for option, path in (("--test", args.test), ("--valid", args.valid)):
        if path:
            check_input_file(path, option)
    if args.warm_start:
        check_model_dir(args.warm_start, "--warm-start")
    if args.backup_dir:
        check_output_dir(args.backup_dir, "--backup-dir")
        out, backup = os.path.abspath(args.out), os.path.abspath(args.backup_dir)
        if os.path.commonpath([out, backup]) == out:
            raise ValueError(f"--backup-dir {args.backup_dir!r} is inside --out; expected a "
                             "directory outside it (--out is replaced as a whole)")
    elif args.backup_every:
        raise ValueError("--backup-every needs --backup-dir")
    if args.log_json:
        check_output_file(args.log_json, "--log-json")
    if args.tensorboard:
        check_output_dir(args.tensorboard, "--tensorboard")
    if args.early_stopping is not None and not args.valid:
        raise ValueError("--early-stopping monitors val_recall@20: give a --valid click log")


def cmd_train(args) -> int:
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.vocabulary import ItemVocabulary
    from tf_gru4rec.workers import cluster_from_env

    _check_train_paths(args)  # before TensorFlow loads: bad input fails in a second
    overrides = _overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    config = _config(args, overrides)
    cluster = cluster_from_env()
    if cluster is not None or args.workers > 1 or args.mirrored or os.path.isdir(args.train):
        from tf_gru4rec import cli_distributed

        if cluster is None and args.workers > 1:  # this process only starts the workers
            cli_distributed.check_options(args, config, cluster)
            from tf_gru4rec.workers import launch_local_workers

            return launch_local_workers(args.workers, args.argv)
        return cli_distributed.train_distributed(args, config, cluster)
    if args.tensorboard:
        from tf_gru4rec.extras import require

        require("--tensorboard", "tensorboard")
    logger.info("config: %s", config.to_dict())
    events = _read(args.train, args, "--train")
    _check_trainable(events, "--train", args.train)
    import keras

    from tf_gru4rec.evaluation import evaluate
    from tf_gru4rec.paths import atomic_directory
    from tf_gru4rec.training import save_model_dir, train

    model = None
    if args.warm_start:
        from tf_gru4rec.training import compile_model, load_model_dir
        from tf_gru4rec.warm_start import grow_model

        previous = load_model_dir(args.warm_start)
        vocabulary = previous.vocabulary.extend(events["ItemId"].to_numpy())
        log = SessionLog.from_events(events, vocabulary)
        model = grow_model(previous.model, previous.vocabulary, vocabulary)
        model.set_item_support(log.item_support())
        compile_model(model, config)
    else:
        vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
        log = SessionLog.from_events(events, vocabulary)
    # Every input is read and checked before training starts.
    test_log = _test_log(args.test, args, vocabulary) if args.test else None
    callbacks = []
    if args.valid:
        from tf_gru4rec.callbacks import RankingValidation

        valid_log = _test_log(args.valid, args, vocabulary, "--valid")
        callbacks.append(RankingValidation(valid_log, (20,), config.tie_mode,
                                           batch_size=config.eval_batch_size))
    if args.early_stopping is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_recall@20", mode="max", patience=args.early_stopping,
            restore_best_weights=True, verbose=1))
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(args.tensorboard))
    if args.log_json:
        callbacks.append(_JsonLines(args.log_json))
    import contextlib

    # Keras writes its progress bar to stdout; stdout carries the metrics JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        result = train(config, log, callbacks=callbacks, verbose=args.verbose, model=model,
                       backup_dir=args.backup_dir, backup_every=args.backup_every)
    metrics = {
        "train_seconds": result.train_seconds,
        # events trained on: per epoch (each event but its session's last) and in all epochs
        "train_events_per_epoch": log.n_predictions,
        "train_epochs": len(result.history.get("loss", [])) or config.n_epochs,
        "train_events": result.train_events,
        "train_events_per_second": result.events_per_second,
        "train_resumes": result.resumes,
        "final_loss": float(result.history["loss"][-1]) if result.history.get("loss") else None,
        "n_items": len(vocabulary),
    }
    if test_log is not None:
        metrics.update(evaluate(result.model, test_log, config.cutoffs, config.tie_mode,
                                config.eval_batch_size))
    with atomic_directory(args.out) as staging:  # all files appear at once, or none
        save_model_dir(staging, result.model, vocabulary, config)
        with open(os.path.join(staging, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
    _json_out(metrics)
    return 0


def cmd_evaluate(args) -> int:
    from tf_gru4rec.evaluation import evaluate
    from tf_gru4rec.paths import check_input_file, check_model_dir
    from tf_gru4rec.training import load_model_dir

    check_model_dir(args.model)
    check_input_file(args.test, "--test")
    trained = load_model_dir(args.model)
    test_log = _test_log(args.test, args, trained.vocabulary)
    cutoffs = args.cutoffs or trained.config.cutoffs
    tie_mode = args.tie_mode or trained.config.tie_mode
    result = evaluate(trained.model, test_log, cutoffs, tie_mode, args.batch_size)
    _results_out({args.model: result} if not args.json else result, args.json)
    return 0


def add_json_option(parser) -> None:
    """--json: print the results as JSON instead of a table."""
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON (default: a table)")


def _results_out(results: dict, as_json: bool) -> None:
    """Metrics as JSON, or as a table of one row per model (`results`: name -> metrics)."""
    if as_json:
        _json_out(results)
        return
    from tf_gru4rec.results_table import format_metrics

    sys.stdout.write(format_metrics(results) + "\n")


def cmd_generate(args) -> int:
    from tf_gru4rec.data.io import write_events
    from tf_gru4rec.data.synthetic import (
        SyntheticConfig,
        generate_sessions,
        train_test_split_synthetic,
    )
    from tf_gru4rec.paths import check_output_dir

    check_output_dir(args.out)
    config = SyntheticConfig(n_items=args.items, n_sessions=args.sessions, seed=args.seed)
    events = generate_sessions(config)
    train_events, test_events = train_test_split_synthetic(events, test_days=args.test_days)
    os.makedirs(args.out, exist_ok=True)
    write_events(train_events, os.path.join(args.out, "train.tsv"))
    write_events(test_events, os.path.join(args.out, "test.tsv"))
    _json_out({"train_events": len(train_events), "test_events": len(test_events),
               "out": args.out})
    return 0


def cmd_demo(args) -> int:
    from tf_gru4rec.demo import DemoOptions, format_summary, run_demo
    from tf_gru4rec.extras import require

    require("demo (it serves the model it trains)", "grpc", "tensorflow_serving")
    from tf_gru4rec.paths import check_output_dir

    check_output_dir(args.workdir, "--workdir")
    check_output_dir(args.export_base, "--export-base")
    _preset(args.preset)

    summary = run_demo(DemoOptions(workdir=args.workdir, export_base=args.export_base,
                                   n_items=args.items, n_sessions=args.sessions,
                                   preset=args.preset, seed=args.seed, verbose=args.verbose))
    sys.stdout.write(format_summary(summary) + "\n")
    return 0


class _JsonLines:
    """Keras callback writing one JSON line of logs per epoch (created lazily: keras import)."""

    def __new__(cls, path):
        import keras

        class JsonLines(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                with open(path, "a") as f:
                    f.write(json.dumps({"epoch": epoch + 1, **{k: float(v) for k, v in
                                                                (logs or {}).items()}}) + "\n")

        return JsonLines()


def build_parser() -> argparse.ArgumentParser:
    parser = types.Parser(prog="tf-gru4rec", description=__doc__)
    parser.add_argument("-v", "--log-level", default="INFO", type=types.log_level)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (and evaluate it on --test)")
    p.add_argument("--train", required=True, help="training click log")
    p.add_argument("--test", help="test click log (evaluated after training)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--preset", help="preset name (rsc15-xe, paper2016-top1, ...) or JSON file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set loss=bpr-max --set layers=100/100")
    p.add_argument("--seed", type=types.integer(0))
    p.add_argument("--warm-start", metavar="MODEL_DIR",
                   help="continue from a trained model; new items are appended to its vocabulary")
    p.add_argument("--backup-dir", help="checkpoint each epoch here; a rerun resumes from it")
    p.add_argument("--backup-every", type=types.integer(0), default=0, metavar="STEPS",
                   help="with --backup-dir, also checkpoint every STEPS training steps "
                        "(rounded up to whole blocks of steps_per_execution)")
    p.add_argument("--log-json", help="append one JSON line of training logs per epoch")
    p.add_argument("--valid", help="validation click log: Recall@K / MRR@K after each epoch "
                                   "(val_recall@20, ... in the logs, TensorBoard and --log-json)")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard logs here (loss; validation metrics with --valid)")
    p.add_argument("--early-stopping", type=types.integer(0), metavar="PATIENCE",
                   help="stop when val_recall@20 has not improved for PATIENCE epochs and "
                        "keep the best epoch's weights (needs --valid)")
    p.add_argument("--verbose", default="auto", type=types.verbosity,
                   help="Keras verbosity: auto, 0 (silent), 1 (progress bar), 2 (one line)")
    group = p.add_argument_group(
        "more than one worker or device (README: More than one machine)")
    group.add_argument("--workers", type=types.integer(1), default=1, metavar="N",
                       help="train with N worker processes on 127.0.0.1 "
                            "(MultiWorkerMirroredStrategy); on a cluster, set TF_CONFIG on "
                            "each machine instead and run the same command")
    group.add_argument("--mirrored", action="store_true",
                       help="train on all of this host's devices (MirroredStrategy)")
    _add_read_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="Recall@K / MRR@K of a trained model on a test log")
    p.add_argument("--model", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--cutoffs", type=types.integer(1), nargs="+")
    p.add_argument("--tie-mode", choices=["standard", "conservative", "median"])
    p.add_argument("--batch-size", type=types.integer(1), default=None,
                   help="session-parallel slots per step (default: sized to keep them full)")
    add_json_option(p)
    _add_read_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("generate", help="write the bundled synthetic click log (train/test)")
    p.add_argument("--out", required=True)
    p.add_argument("--items", type=types.integer(2), default=2000)
    p.add_argument("--sessions", type=types.integer(1), default=20000)
    p.add_argument("--test-days", type=types.number(0, low_open=True), default=1.0)
    p.add_argument("--seed", type=types.integer(0), default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the main job on the bundled synthetic data: train, "
                       "evaluate against baselines, export, serve a few requests")
    p.add_argument("--workdir", default="runs/demo", help="data and model directory")
    p.add_argument("--export-base", default="export/gru4rec", help="SavedModel base path")
    p.add_argument("--items", type=types.integer(2), default=2000)
    p.add_argument("--sessions", type=types.integer(1), default=20000)
    p.add_argument("--preset", default="quick")
    p.add_argument("--seed", type=types.integer(0), default=0)
    p.add_argument("--verbose", default="auto", type=types.verbosity)
    p.set_defaults(func=cmd_demo)

    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# Modules that add subcommands with `register(subparsers)`; they import TensorFlow lazily.
_SUBCOMMAND_MODULES: list[str] = ["tf_gru4rec.cli_prepare", "tf_gru4rec.cli_baselines",
                                   "tf_gru4rec.cli_serving",
                                   "tf_gru4rec.cli_research"]


def main(argv=None) -> int:
    """Run a command; bad input gives one line on stderr and exit code 2 (see README)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error, already written on stderr
        return done.code if isinstance(done.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level,
                        format=f"%(asctime)s %(levelname)s {_worker_label()}%(name)s: "
                               "%(message)s")
    from tf_gru4rec import xla_flags

    xla_flags.apply()  # before TensorFlow loads (the quiet import below looks devices up)
    if args.log_level != "DEBUG":  # TensorFlow's C++ start-up lines only with -v debug
        from tf_gru4rec.tf_quiet import hide_startup_lines

        hide_startup_lines()
    try:
        return args.func(args)
    except (ValueError, OSError) as error:
        types.fail(args.command, error)
        return 2
    except KeyError as error:
        types.fail(args.command, error.args[0] if error.args else error)
        return 2
    except ModuleNotFoundError as error:  # a module of an optional extra, found missing late
        from tf_gru4rec.extras import explain

        if explain(error) is None:
            raise
        types.fail(args.command, explain(error))
        return 2
    finally:
        from tf_gru4rec.tf_quiet import uninstall

        uninstall()


def _worker_label() -> str:
    """"worker I " in the log lines of a multi-worker process (TF_CONFIG set), else ""."""
    try:
        text = json.loads(os.environ.get("TF_CONFIG") or "{}")
        return f"worker {int(text['task']['index'])} "
    except (ValueError, KeyError, TypeError):
        return ""


def entry() -> None:
    """The `tf-gru4rec` command: restarts once with huge pages for large item tables (see
    `tf_gru4rec.hugepages`), then runs `main`."""
    from tf_gru4rec.hugepages import reexec_with_hugepages

    reexec_with_hugepages("tf_gru4rec.cli", sys.argv[1:])
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
