"""`tf-gru4rec train` on the custom `tf.distribute` loop: several workers (`TF_CONFIG`, or
`--workers N` on this machine), several local devices (`--mirrored`), or Parquet shards.

The chief (worker 0) evaluates and writes `--out`; every worker trains, and all end with a
check that every replica holds the same weights (a sha256 of each replica's variables, gathered
over the cluster; the digests go to metrics.json).
"""

from __future__ import annotations

import json
import logging
import os
import time

logger = logging.getLogger("tf_gru4rec")

# Options of `train` that run only on Keras `fit` (one process, one device, in-memory log).
FIT_ONLY_OPTIONS = (("backup_every", "--backup-every"), ("valid", "--valid"),
                    ("early_stopping", "--early-stopping"), ("tensorboard", "--tensorboard"),
                    ("warm_start", "--warm-start"))


def check_options(args, config, cluster) -> None:
    """Errors for options the distributed loop does not take, before anything starts."""
    how = ("--workers" if args.workers > 1 else "TF_CONFIG" if cluster else
           "--mirrored" if args.mirrored else "Parquet shards (--train is a directory)")
    for attribute, option in FIT_ONLY_OPTIONS:
        if getattr(args, attribute, None) not in (None, 0):
            raise ValueError(f"{option} is not available with {how}: distributed and sharded "
                             "training run a custom loop without it; expected a single-process "
                             "run on a click-log file for it")
    if cluster is not None and args.workers > 1 and cluster[0] != args.workers:
        raise ValueError(f"--workers {args.workers}, but TF_CONFIG lists {cluster[0]} workers; "
                         "expected the same number (or no --workers on a cluster)")
    n_workers = cluster[0] if cluster else args.workers
    if config.batch_size % n_workers:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {n_workers} "
                         "workers; expected a multiple (each worker holds batch_size / workers "
                         "session slots)")


def train_distributed(args, config, cluster) -> int:
    """Train (and on the chief evaluate and save) with the custom loop; returns the exit code."""
    from tf_gru4rec.distributed import make_strategy

    check_options(args, config, cluster)
    # The strategy comes before any other TensorFlow op of the process.
    strategy = make_strategy("multi-worker" if cluster else "mirrored")
    is_chief = cluster is None or cluster[1] == 0
    from tf_gru4rec.cli import _json_out, _read, _test_log
    from tf_gru4rec.distributed import DistributedTrainer
    from tf_gru4rec.distributed_input import TrainingSource

    shards = getattr(args, "train_shards", None)  # loaded by the path checks
    if shards is not None:
        source, vocabulary = TrainingSource(shards=shards), shards.vocabulary
    else:
        from tf_gru4rec.cli import _check_trainable
        from tf_gru4rec.data.session_log import SessionLog
        from tf_gru4rec.data.vocabulary import ItemVocabulary

        events = _read(args.train, args, "--train")
        _check_trainable(events, "--train", args.train)
        vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
        source = TrainingSource(log=SessionLog.from_events(events, vocabulary))
        del events
    test_log = _test_log(args.test, args, vocabulary) if args.test else None
    trainer = DistributedTrainer(config, source, strategy)
    log_json = args.log_json if is_chief else None

    def epoch_end(epoch, logs):
        if log_json:
            with open(log_json, "a") as f:
                f.write(json.dumps({"epoch": epoch + 1, **logs}) + "\n")

    backup = None
    if args.backup_dir:
        from tf_gru4rec.resume import TrainingBackup
        from tf_gru4rec.training import run_fingerprint

        # Epoch ends only; every worker restores the chief's backup (shared storage).
        backup = TrainingBackup(args.backup_dir, None, run_fingerprint(config, source),
                                with_metrics=False)
    start = time.perf_counter()
    history = trainer.fit(epoch_end, backup=backup, write_backups=is_chief)
    seconds = backup.elapsed() if backup is not None else time.perf_counter() - start
    digests = trainer.gathered_digests()  # every worker: also the end-of-training barrier
    if len(set(digests)) != 1:
        logger.error("the replicas ended with different weights: %s", digests)
        return 1
    if not is_chief:
        logger.info("worker %d done (weights %s…); the chief writes --out", cluster[1],
                    digests[0][:12])
        return 0
    events = source.n_predictions * len(history["loss"])
    metrics = {
        "train_seconds": seconds, "train_events": events,
        "train_events_per_epoch": source.n_predictions, "train_epochs": len(history["loss"]),
        "train_events_per_second": events / max(seconds, 1e-9),
        "final_loss": history["loss"][-1] if history["loss"] else None,
        "train_resumes": backup.resumes if backup is not None else 0,
        "n_items": len(vocabulary), "workers": cluster[0] if cluster else 1,
        "replicas": strategy.num_replicas_in_sync, "replica_weight_digests": digests,
        "steps_per_epoch": history["steps"], "events_per_epoch": history["events"],
    }
    if test_log is not None:
        from tf_gru4rec.evaluation import evaluate

        metrics.update(evaluate(trainer.model, test_log, config.cutoffs, config.tie_mode,
                                config.eval_batch_size))
    from tf_gru4rec.paths import atomic_directory
    from tf_gru4rec.training import save_model_dir

    with atomic_directory(args.out) as staging:
        save_model_dir(staging, trainer.model, vocabulary, config)
        with open(os.path.join(staging, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
    if backup is not None:
        backup.delete()
    _json_out(metrics)
    return 0
