"""CLI subcommands for experiments: `reproduce` and `tune`.

Importing this module stays light (argparse only); pandas, TensorFlow and Optuna load inside
the commands.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys

from tf_gru4rec.cli import types

logger = logging.getLogger("tf_gru4rec")

# As tf_gru4rec.training.reproduce.SETTING_KEYS / BASELINES (not imported: it loads TensorFlow).
SETTING_KEYS = ("top1-100", "bpr-100", "xe-100", "top1-1000", "bpr-1000", "xe-1000",
                "rsc15-xe", "rsc15-bprmax")
BASELINE_NAMES = ("pop", "spop", "itemknn", "bprmf")
TIE_MODES = ("standard", "conservative", "median")
LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")


def cmd_reproduce(args) -> int:
    from tf_gru4rec.cli.common import read_clicks as _read
    from tf_gru4rec.paths import check_input_file, check_output_file
    from tf_gru4rec.training.reproduce import format_markdown, run_reproduction

    check_input_file(args.test, "--test")
    check_output_file(args.out)
    if args.json:
        check_output_file(args.json, "--json")
    report = run_reproduction(
        _read(args.train, args, "--train"), _read(args.test, args, "--test"),
        settings=args.settings,
        baselines=args.baselines, quick=args.quick, epochs=args.epochs, seed=args.seed,
        tie_mode=args.tie_mode, verbose=args.verbose)
    report["train"], report["test"] = args.train, args.test
    command = _reproduce_command(args)
    title = f"GRU4Rec reproduction: {os.path.basename(args.train)} -> " \
            f"{os.path.basename(args.test)}"
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    with open(args.out, "w") as f:
        f.write(format_markdown(report, title=title, command=command))
    json_path = args.json or os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    logger.info("wrote %s and %s", args.out, json_path)
    sys.stdout.write(format_markdown(report, title=title))
    return 0


def _reproduce_command(args) -> str:
    """The command line that makes the same report (options at their defaults left out)."""
    words = ["tf-gru4rec", "reproduce", "--train", args.train, "--test", args.test,
             "--out", args.out]
    if args.quick:
        words.append("--quick")
    if args.epochs is not None:
        words += ["--epochs", str(args.epochs)]
    if list(args.settings) != list(SETTING_KEYS):
        words += ["--settings", *args.settings]
    if list(args.baselines) != list(BASELINE_NAMES):
        words += ["--baselines", *args.baselines]
    if args.seed:
        words += ["--seed", str(args.seed)]
    if args.tie_mode != "conservative":
        words += ["--tie-mode", args.tie_mode]
    return " ".join(shlex.quote(w) for w in words)


def cmd_tune(args) -> int:
    from tf_gru4rec.extras import require

    require("tune", "optuna")
    from tf_gru4rec.cli.common import json_out as _json_out
    from tf_gru4rec.cli.common import overrides as _overrides
    from tf_gru4rec.cli.common import preset as _preset
    from tf_gru4rec.cli.common import read_clicks as _read
    from tf_gru4rec.config_checks import check_config
    from tf_gru4rec.paths import check_input_file, check_output_file
    from tf_gru4rec.training.reproduce import train_and_eval_logs
    from tf_gru4rec.training.tuning import (
        best_preset,
        default_space,
        load_space,
        summary,
        tune,
        write_preset,
    )

    check_input_file(args.valid, "--valid")
    check_output_file(args.out)
    if args.space:
        check_input_file(args.space, "--space", "a search space JSON file")
    base = _preset(args.base_preset)
    overrides = _overrides(args.set)
    if args.epochs is not None:
        overrides["n_epochs"] = str(args.epochs)
    if args.loss not in (None, "choose"):
        overrides["loss"] = args.loss
    base = base.with_overrides(overrides)
    check_config(base)
    space = load_space(args.space) if args.space else default_space(
        None if args.loss == "choose" else base.loss)
    space = [p for p in space if p.name not in overrides]  # --set fixes a parameter
    logger.info("searching %s from %s", [p.name for p in space], base.to_dict())
    _, train_log, valid_log = train_and_eval_logs(_read(args.train, args, "--train"),
                                                  _read(args.valid, args, "--valid"))
    if train_log.n_predictions == 0:
        raise ValueError(f"--train {args.train!r}: every session has a single event, nothing "
                         "to train on; expected sessions of 2 or more clicks")
    study = tune(base, train_log, valid_log, space, n_trials=args.trials,
                 study_name=args.study_name, storage=args.storage, metric=args.metric,
                 timeout=None if args.timeout_minutes is None else args.timeout_minutes * 60.0,
                 seed=args.seed, prune=not args.no_prune)
    write_preset(best_preset(study, base), args.out)
    result = summary(study, args.metric)
    result["preset"] = args.out
    _json_out(result)
    return 0


def register(subparsers) -> None:
    """Add `reproduce` and `tune` to the `tf-gru4rec` parser."""
    from tf_gru4rec.cli.common import add_read_options as _add_read_options

    p = subparsers.add_parser(
        "reproduce",
        help="the paper's Table 1 baselines and Table 3 / 2018 GRU4Rec settings, as Markdown")
    p.add_argument("--train", required=True, help="training click log (e.g. train_full)")
    p.add_argument("--test", required=True, help="test click log")
    p.add_argument("--out", required=True, help="Markdown report to write")
    p.add_argument("--json", help="JSON report (default: the --out path with .json)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny models, 1 epoch (tests, notebooks)")
    p.add_argument("--epochs", type=types.integer(1),
                   help="epochs of every GRU setting (default: 10)")
    p.add_argument("--settings", nargs="+", choices=SETTING_KEYS, default=list(SETTING_KEYS),
                   help="GRU4Rec settings to run (default: all)")
    p.add_argument("--baselines", nargs="*", choices=BASELINE_NAMES,
                   default=list(BASELINE_NAMES), help="baselines to run (default: all)")
    p.add_argument("--seed", type=types.integer(0), default=0,
                   help="seed of every model (default: 0)")
    p.add_argument("--tie-mode", choices=TIE_MODES, default="conservative",
                   help="rank ties rule (default: conservative, ties count against the target)")
    p.add_argument("--verbose", default=2, type=types.verbosity,
                   help="Keras verbosity while training (default: 2, a line per epoch)")
    _add_read_options(p)
    p.set_defaults(func=cmd_reproduce)

    p = subparsers.add_parser(
        "tune",
        help="Optuna search over the original's parameters on a train/validation split")
    p.add_argument("--train", required=True, help="training click log (e.g. train_tr)")
    p.add_argument("--valid", required=True,
                   help="validation click log after it in time (e.g. train_valid; never the "
                        "test set)")
    p.add_argument("--out", required=True, help="preset JSON of the best trial to write")
    p.add_argument("--trials", type=types.integer(1), required=True,
                   help="finished trials the study should have; a rerun continues up to it")
    p.add_argument("--timeout-minutes", type=types.number(0, low_open=True),
                   help="stop starting trials after this")
    p.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///tune.db "
                                     "(default: in memory, not resumable)")
    p.add_argument("--study-name", default="gru4rec",
                   help="study name in the storage (default: gru4rec)")
    p.add_argument("--base-preset", default="rsc15-xe",
                   help="preset (name or JSON file) giving the unsearched values; it is the "
                        "study's first trial (default: rsc15-xe)")
    p.add_argument("--loss", choices=(*LOSSES, "choose"),
                   help="fix the loss (default: the base preset's) or search it (choose: "
                        "cross-entropy or bpr-max)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a parameter (removed from the search), e.g. --set layers=100")
    p.add_argument("--epochs", type=types.integer(1),
                   help="epochs per trial (default: the preset's)")
    p.add_argument("--space", help="search space JSON (the original's paramspace format)")
    p.add_argument("--metric", choices=("recall@20", "mrr@20"), default="recall@20",
                   help="validation metric to maximise (default: recall@20)")
    p.add_argument("--no-prune", action="store_true",
                   help="no median pruning of poor trials (validation every epoch otherwise)")
    p.add_argument("--seed", type=types.integer(0), default=0,
                   help="sampler seed (default: 0)")
    _add_read_options(p)
    p.set_defaults(func=cmd_tune)
