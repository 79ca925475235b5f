"""The `tf-gru4rec` command line: train, evaluate, baselines, export, serve, replay, demo."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys

from tf_gru4rec.cli import train as cli_train
from tf_gru4rec.cli import types
from tf_gru4rec.cli.common import (
    add_json_option,
    add_read_options,
    json_out,
    preset,
    results_out,
    test_log,
)

__all__ = ["add_json_option", "build_parser", "entry", "main"]

logger = logging.getLogger("tf_gru4rec")


def cmd_evaluate(args) -> int:
    from tf_gru4rec.evaluation import evaluate
    from tf_gru4rec.paths import check_input_file, check_model_dir
    from tf_gru4rec.training.model_dir import load_model_dir

    check_model_dir(args.model)
    check_input_file(args.test, "--test")
    trained = load_model_dir(args.model)
    test = test_log(args.test, args, trained.vocabulary)
    cutoffs = args.cutoffs or trained.config.cutoffs
    tie_mode = args.tie_mode or trained.config.tie_mode
    result = evaluate(trained.model, test, cutoffs, tie_mode, args.batch_size)
    results_out({args.model: result} if not args.json else result, args.json)
    return 0


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
    json_out({"train_events": len(train_events), "test_events": len(test_events),
               "out": args.out})
    return 0


def cmd_demo(args) -> int:
    from tf_gru4rec.demo import DemoOptions, format_summary, run_demo
    from tf_gru4rec.extras import require

    require("demo (it serves the model it trains)", "grpc", "tensorflow_serving")
    from tf_gru4rec.paths import check_output_dir

    check_output_dir(args.workdir, "--workdir")
    check_output_dir(args.export_base, "--export-base")
    preset(args.preset)

    summary = run_demo(DemoOptions(workdir=args.workdir, export_base=args.export_base,
                                   n_items=args.items, n_sessions=args.sessions,
                                   preset=args.preset, seed=args.seed, verbose=args.verbose))
    sys.stdout.write(format_summary(summary) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = types.Parser(prog="tf-gru4rec", description=__doc__)
    parser.add_argument("-v", "--log-level", default="INFO", type=types.log_level)
    sub = parser.add_subparsers(dest="command", required=True)
    cli_train.register(sub)

    p = sub.add_parser("evaluate", help="Recall@K / MRR@K of a trained model on a test log")
    p.add_argument("--model", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--cutoffs", type=types.integer(1), nargs="+")
    p.add_argument("--tie-mode", choices=["standard", "conservative", "median"])
    p.add_argument("--batch-size", type=types.integer(1), default=None,
                   help="session-parallel slots per step (default: sized to keep them full)")
    add_json_option(p)
    add_read_options(p)
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
_SUBCOMMAND_MODULES: list[str] = ["tf_gru4rec.cli.prepare", "tf_gru4rec.cli.baselines",
                                   "tf_gru4rec.cli.serving",
                                   "tf_gru4rec.cli.research"]


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
    from tf_gru4rec.nn import xla_flags
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
