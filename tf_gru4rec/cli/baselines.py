"""The `tf-gru4rec baselines` subcommand: fit POP / S-POP / item-KNN / BPR-MF on a training log,
evaluate them on a test log like a GRU model, and print a table of their metrics (or
{name: metrics} as JSON with --json).

Importing this module stays light (argparse only); NumPy and pandas load inside the command.
"""

from __future__ import annotations

import argparse
import logging

from tf_gru4rec.cli import types

logger = logging.getLogger("tf_gru4rec")

# As tf_gru4rec.evaluation.baselines.BASELINE_NAMES / TIE_MODES (not imported here: it loads NumPy).
NAMES = ("pop", "spop", "itemknn", "bprmf")
TIE_MODES = ("standard", "conservative", "median")


def register(subparsers) -> None:
    """Add the `baselines` subcommand to the `tf-gru4rec` parser."""
    from tf_gru4rec.cli.common import add_json_option, add_read_options

    p = subparsers.add_parser(
        "baselines", help="Recall@K / MRR@K of POP, S-POP, item-KNN and BPR-MF",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--train", required=True, help="training click log (defines the items)")
    p.add_argument("--test", required=True, help="test click log")
    p.add_argument("--names", nargs="+", choices=NAMES, default=list(NAMES),
                   help="baselines to run")
    p.add_argument("--cutoffs", type=types.integer(1), nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--tie-mode", choices=TIE_MODES, default="conservative")
    p.add_argument("--top-n", type=types.integer(1), default=100,
                   help="POP / S-POP: items with a non-zero popularity score")
    p.add_argument("--n-neighbors", type=types.integer(1), default=100,
                   help="item-KNN neighbours per item")
    p.add_argument("--lmbd", type=types.number(0), default=20.0,
                   help="item-KNN support regularisation")
    p.add_argument("--alpha", type=types.number(0, 1), default=0.5,
                   help="item-KNN normalisation balance")
    p.add_argument("--n-factors", type=types.integer(1), default=100, help="BPR-MF factors")
    p.add_argument("--n-epochs", type=types.integer(1), default=10, help="BPR-MF epochs")
    p.add_argument("--learning-rate", type=types.number(0, low_open=True), default=0.01,
                   help="BPR-MF learning rate")
    p.add_argument("--seed", type=types.integer(0), default=0, help="BPR-MF seed")
    add_json_option(p)
    add_read_options(p)
    p.set_defaults(func=cmd_baselines)


def cmd_baselines(args) -> int:
    from tf_gru4rec.cli.common import check_trainable, read_clicks, results_out, test_log
    from tf_gru4rec.data.io import ITEM
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.vocabulary import ItemVocabulary
    from tf_gru4rec.evaluation.baselines import run_baselines
    from tf_gru4rec.paths import check_input_file

    check_input_file(args.test, "--test")
    events = read_clicks(args.train, args, "--train")
    vocabulary = ItemVocabulary.from_events(events[ITEM].to_numpy())
    check_trainable(events, "--train", args.train)
    train_log = SessionLog.from_events(events, vocabulary)
    test = test_log(args.test, args, vocabulary)
    params = {
        "pop": {"top_n": args.top_n},
        "spop": {"top_n": args.top_n},
        "itemknn": {"n_neighbors": args.n_neighbors, "lmbd": args.lmbd, "alpha": args.alpha},
        "bprmf": {"n_factors": args.n_factors, "n_epochs": args.n_epochs,
                  "learning_rate": args.learning_rate, "seed": args.seed},
    }
    logger.info("baselines %s on %d training items, %d test events", args.names,
                len(vocabulary), test.n_predictions)
    results_out(run_baselines(train_log, test, names=args.names, cutoffs=args.cutoffs,
                              tie_mode=args.tie_mode, params=params), args.json)
    return 0
