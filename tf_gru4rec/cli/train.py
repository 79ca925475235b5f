"""`tf-gru4rec train`: one process, several local devices (`--mirrored`), N local worker
processes (`--workers N`) or a cluster (`TF_CONFIG`), from a click-log file or Parquet shards,
all on the same training loop (`tf_gru4rec.training.loop`) with the same options.

Under several workers every worker reads the data, trains and validates (so that early stopping
stops all of them at the same epoch); the chief (worker 0) alone writes: the backups,
TensorBoard, `--log-json`, `--out`. All end with a check that every replica holds the same
weights (a sha256 of each replica's variables, gathered over the cluster; the digests go to
metrics.json).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys

from tf_gru4rec.cli import types
from tf_gru4rec.cli.common import (
    add_read_options,
    check_trainable,
    json_out,
    overrides,
    read_clicks,
    test_log,
    train_config,
)
from tf_gru4rec.config_checks import SYNC_MODES, check_backup_every, check_replica_split

logger = logging.getLogger("tf_gru4rec")


def register(sub) -> None:
    """The `train` subcommand."""
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
    group.add_argument("--sync", choices=SYNC_MODES,
                       help="with several workers: 'step' (default) sums their gradients at "
                            "every step, the maths of one process; 'block' lets each worker "
                            "train a block of steps_per_execution steps on its own, then "
                            "averages their models (local SGD: one exchange per block); "
                            "'overlap' as 'block', but each worker trains its next block "
                            "while the average travels and applies it one block late "
                            "(README: More than one machine); same as --set sync=...")
    add_read_options(p)
    p.set_defaults(func=cmd_train)


def check_train_paths(args) -> None:
    """Every path of `train`, before TensorFlow loads (bad input fails in a second)."""
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


def check_options(args, config, cluster) -> None:
    """The options that do not go together, and the extras they need, before anything starts
    (and before `--workers` starts its workers)."""
    if args.warm_start and getattr(args, "train_shards", None) is not None:
        raise ValueError("--warm-start appends the new items to the model's vocabulary, but "
                         "Parquet shards hold item indices fixed by their items.parquet; "
                         "expected --train as a click-log file with --warm-start")
    if cluster is not None and args.workers > 1 and cluster[0] != args.workers:
        raise ValueError(f"--workers {args.workers}, but TF_CONFIG lists {cluster[0]} workers; "
                         "expected the same number (or no --workers on a cluster)")
    check_backup_every(config, args.backup_every)
    n_workers = cluster[0] if cluster else args.workers
    check_replica_split(config, n_workers)
    if config.batch_size % n_workers:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {n_workers} "
                         "workers; expected a multiple (each worker holds batch_size / workers "
                         "session slots)")
    if args.tensorboard:
        from tf_gru4rec.extras import require

        require("--tensorboard", "tensorboard")


def cmd_train(args) -> int:
    from tf_gru4rec.training.workers import cluster_from_env

    check_train_paths(args)
    values = overrides(args.set)
    if args.seed is not None:
        values["seed"] = str(args.seed)
    if args.sync is not None:
        values["sync"] = args.sync
    config = train_config(args, values)
    cluster = cluster_from_env()
    check_options(args, config, cluster)
    if cluster is None and args.workers > 1:  # this process only starts the workers
        from tf_gru4rec.training.workers import launch_local_workers

        return launch_local_workers(args.workers, args.argv)
    strategy = None
    if cluster is not None or args.mirrored:
        from tf_gru4rec.training.distributed import make_strategy

        # The strategy comes before any other TensorFlow op of the process.
        strategy = make_strategy("multi-worker" if cluster else "mirrored")
    chief = cluster is None or cluster[1] == 0
    if cluster is not None:  # `--workers N` sets each local worker's share of the cores
        logger.info("worker %d of %d: %s intra-op threads", cluster[1], cluster[0],
                    os.environ.get("TF_NUM_INTRAOP_THREADS", "TensorFlow's default"))
    logger.info("config: %s", config.to_dict())
    source, vocabulary, model = _training_data(args, config)
    # Every input is read and checked before training starts.
    test = test_log(args.test, args, vocabulary) if args.test else None
    from tf_gru4rec import training
    # Keras writes its progress bar to stdout; stdout carries the metrics JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        result = training.train(config, source, callbacks=_callbacks(args, config, vocabulary,
                                                                       chief),
                                verbose=args.verbose if chief else 0, model=model,
                                backup_dir=args.backup_dir, backup_every=args.backup_every,
                                strategy=strategy, chief=chief)
    metrics = {
        "train_seconds": result.train_seconds,
        # events trained on: per epoch (each event but its session's last) and in all epochs
        "train_events_per_epoch": source.n_predictions,
        "train_epochs": len(result.history.get("loss", [])) or config.n_epochs,
        "train_events": result.train_events,
        "train_events_per_second": result.events_per_second,
        "train_resumes": result.resumes,
        "final_loss": float(result.history["loss"][-1]) if result.history.get("loss") else None,
        "n_items": len(vocabulary),
        # counted by the loop: steps run, events trained on (by all replicas together)
        "steps_per_epoch": result.steps_per_epoch, "events_per_epoch": result.events_per_epoch,
    }
    if strategy is not None:
        digests = result.trainer.gathered_digests()  # every worker: also the end barrier
        if len(set(digests)) != 1:
            logger.error("the replicas ended with different weights: %s", digests)
            return 1
        metrics.update({"workers": cluster[0] if cluster else 1,
                        "replicas": result.trainer.n_replicas,
                        # how the replicas synchronised (as run, not as asked)
                        "sync": result.trainer.sync,
                        "replica_weight_digests": digests})
        if not chief:
            logger.info("worker %d done (weights %s…); the chief writes --out", cluster[1],
                        digests[0][:12])
            return 0
    if test is not None:
        from tf_gru4rec.evaluation import evaluate

        metrics.update(evaluate(result.model, test, config.cutoffs, config.tie_mode,
                                config.eval_batch_size))
    from tf_gru4rec.paths import atomic_directory

    with atomic_directory(args.out) as staging:  # all files appear at once, or none
        training.save_model_dir(staging, result.model, vocabulary, config)
        with open(os.path.join(staging, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
    json_out(metrics)
    return 0


def _training_data(args, config):
    """(TrainingSource, vocabulary, model to continue or None) of `--train` (`--warm-start`)."""
    from tf_gru4rec.data.distributed_input import TrainingSource
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.vocabulary import ItemVocabulary

    shards = getattr(args, "train_shards", None)  # loaded by the path checks
    if shards is not None:
        return TrainingSource(shards=shards), shards.vocabulary, None
    events = read_clicks(args.train, args, "--train")
    check_trainable(events, "--train", args.train)
    model = None
    if args.warm_start:
        from tf_gru4rec.training.build import compile_model
        from tf_gru4rec.training.model_dir import load_model_dir
        from tf_gru4rec.training.warm_start import grow_model

        previous = load_model_dir(args.warm_start)
        vocabulary = previous.vocabulary.extend(events["ItemId"].to_numpy())
        log = SessionLog.from_events(events, vocabulary)
        model = grow_model(previous.model, previous.vocabulary, vocabulary)
        model.set_item_support(log.item_support())
        compile_model(model, config)
    else:
        vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
        log = SessionLog.from_events(events, vocabulary)
    return TrainingSource(log=log), vocabulary, model


def _callbacks(args, config, vocabulary, chief: bool) -> list:
    """The training loop's callbacks; those that only write are the chief's."""
    import keras

    callbacks = []
    if args.valid:  # every worker: early stopping decides on it
        from tf_gru4rec.training.callbacks import RankingValidation

        valid_log = test_log(args.valid, args, vocabulary, "--valid")
        callbacks.append(RankingValidation(valid_log, (20,), config.tie_mode,
                                           batch_size=config.eval_batch_size))
    if args.early_stopping is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_recall@20", mode="max", patience=args.early_stopping,
            restore_best_weights=True, verbose=1 if chief else 0))
    if args.tensorboard and chief:
        callbacks.append(keras.callbacks.TensorBoard(args.tensorboard))
    if args.log_json and chief:
        from tf_gru4rec.training.callbacks import JsonLines

        callbacks.append(JsonLines(args.log_json))
    return callbacks
