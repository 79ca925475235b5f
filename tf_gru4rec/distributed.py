"""Training on several devices or machines with `tf.distribute`: a custom loop over
`strategy.run`.

Keras 3 `model.fit` fails under `MultiWorkerMirroredStrategy` in TF 2.21 (per-replica values in
the input build step and in the metric reduction, keras-team/keras#20329), so distributed
training runs its own loop; one process on one device keeps `fit` (`tf_gru4rec.training`).

Each replica trains on its own sessions with B / R of the B slots (`tf_gru4rec.distributed_input`)
and its own negatives; the loss is divided by the global B, the gradients (the item tables'
row-sparse ones included, as `IndexedSlices`) are summed over the replicas by Keras' optimizer,
and every replica applies the same `AdagradM` update to its copy of the variables. A block of K
steps is one `tf.function` call: an all-gather first tells how many of its steps hold events on
any replica (all run that many) and whether any replica has a block after it, then a loop in
cross-replica context runs one `strategy.run` per step (each step's forward and backward pass
is one XLA program). The epoch's events, loss and steps are summed over the replicas.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import tensorflow as tf

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.distributed_input import ReplicaStream, TrainingSource

logger = logging.getLogger(__name__)


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """"multi-worker" (`TF_CONFIG` describes the cluster) or "mirrored" (this host's devices).

    Create it before any other TensorFlow op of the process. A worker that dies is noticed by
    the cluster's coordination service (it stops sending heartbeats): the others' collectives
    abort with UNAVAILABLE. No per-collective `timeout_seconds` is set: in TF 2.21 each
    collective with a timeout leaves a "collective_ops" thread behind (measured: ~14 threads
    per training step, the process dies of EAGAIN after ~13k), and without it the steps run
    about 15% faster.
    """
    if kind == "multi-worker":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise ValueError(f"`kind` should be 'multi-worker' or 'mirrored'. Received: {kind!r}")


def replica_streams(source: TrainingSource, config: TrainConfig, replicas: list[int],
                    n_replicas: int) -> list[ReplicaStream]:
    """The input streams of the given (global) replica ids."""
    if config.batch_size % n_replicas:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {n_replicas} "
                         "replicas; expected a multiple of the number of workers (each replica "
                         "holds batch_size / replicas slots)")
    support = source.item_support()
    return [ReplicaStream(source.parts(r, n_replicas), config.batch_size // n_replicas, support,
                          n_sample=config.n_sample, sample_alpha=config.sample_alpha,
                          shuffle_sessions=config.shuffle_sessions, seed=config.seed,
                          steps_per_block=config.steps_per_execution, replica=r)
            for r in replicas]


def _thread_count() -> int | None:
    """Threads of this process (Linux), logged per epoch: collectives must not leak them."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    except (OSError, StopIteration, ValueError):
        return None


class DistributedTrainer:
    """Builds the model under `strategy` and trains it on `source` (module docstring)."""

    def __init__(self, config: TrainConfig, source: TrainingSource,
                 strategy: tf.distribute.Strategy):
        from tf_gru4rec.training import build_model

        self.config = config
        self.source = source
        self.strategy = strategy
        self.n_replicas = strategy.num_replicas_in_sync
        with strategy.scope():
            self.model = build_model(config, source.n_items, source.item_support())
            optimizer = self.model.optimizer
            if hasattr(optimizer, "static_shapes"):
                optimizer.static_shapes = False  # no XLA here: `tf.unique` row sums
            optimizer.build(self.model.trainable_variables)
        self._stream_cache: dict[tuple[int, ...], list[ReplicaStream]] = {}
        self._run_block = tf.function(self._block_on_replicas)
        # One step's forward and backward pass as one XLA program (no collective inside).
        self._forward_backward = tf.function(self.model.forward_backward,
                                             jit_compile=config.jit_compile)

    # ------------------------------------------------------------------ one block
    def _replica_extent(self, block):
        """[2]: the most real steps of this block on any replica, and 1 if any replica has a
        block after it (ReduceOp has no MAX: an all-gather, then the max)."""
        mine = tf.stack([block["n_real"], tf.cast(block["more"], tf.int32)])[None]
        gathered = tf.distribute.get_replica_context().all_gather(mine, axis=0)
        return tf.reduce_max(gathered, axis=0)

    def _replica_step(self, block, i, states, totals):
        """Step i of a block on one replica: (new states, `totals` [2] plus this step's loss
        sum and events)."""
        step = {key: block[key][i] for key in ("inputs", "targets", "reset", "valid",
                                                "negatives") if key in block}
        grads, per_event, valid, new_states = self._forward_backward(step, states)
        self.model.optimizer.apply(grads, self.model.trainable_variables)
        return new_states, totals + tf.stack([tf.reduce_sum(per_event), tf.reduce_sum(valid)])

    def _block_on_replicas(self, block, states):
        """A block of steps. The loop runs in cross-replica context around `strategy.run` (a
        synchronisation point, the gradient all-reduce, may not sit in a replica's loop)."""
        strategy = self.strategy
        extent = strategy.experimental_local_results(
            strategy.run(self._replica_extent, args=(block,)))[0]
        totals = strategy.run(tf.zeros, args=([2],))  # this replica's loss sum and events
        for i in tf.range(extent[0]):
            states, totals = strategy.run(self._replica_step, args=(block, i, states, totals))
        totals = strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)
        return states, totals, extent[0], extent[1] > 0

    # ------------------------------------------------------------------ the loop
    def _zero_states(self):
        local = self.config.batch_size // self.n_replicas
        states = self.strategy.experimental_distribute_values_from_function(
            lambda _: [tf.zeros((local, h)) for h in self.model.layer_sizes])
        if len(self.strategy.extended.worker_devices) == 1:
            # `strategy.run` returns plain tensors for one local replica: start alike.
            states = [self.strategy.experimental_local_results(s)[0] for s in states]
        return states

    def _dataset(self, epoch: int):
        def dataset_fn(context: tf.distribute.InputContext):
            local = self.n_replicas // context.num_input_pipelines
            replicas = [context.input_pipeline_id * local + i for i in range(local)]
            datasets = [stream.dataset(epoch) for stream in self._streams(tuple(replicas))]
            if len(datasets) == 1:
                return datasets[0]
            # The local replicas take the elements in turn.
            turn = tf.data.Dataset.range(local).repeat()
            return tf.data.Dataset.choose_from_datasets(datasets, turn)

        options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
        return self.strategy.distribute_datasets_from_function(dataset_fn, options)

    def _streams(self, replicas: tuple[int, ...]) -> list[ReplicaStream]:
        """The streams of these replicas, built once (each holds its negatives' alias table)."""
        if replicas not in self._stream_cache:
            self._stream_cache[replicas] = replica_streams(self.source, self.config,
                                                           list(replicas), self.n_replicas)
        return self._stream_cache[replicas]

    def run_epoch(self, epoch: int) -> tuple[float, int, int]:
        """Trains one epoch; returns (mean loss over the events, steps run, events trained on
        by all replicas together)."""
        iterator = iter(self._dataset(epoch))
        states, loss_sum, n_events, steps = self._zero_states(), 0.0, 0.0, 0
        more = True
        while more:
            states, totals, n_steps, more = self._run_block(next(iterator), states)
            loss_sum += float(totals[0])
            n_events += float(totals[1])
            steps += int(n_steps)
            more = bool(more)
        return loss_sum / max(n_events, 1.0), steps, int(round(n_events))

    def fit(self, epoch_end=None, backup=None, write_backups: bool = True) -> dict:
        """Trains `config.n_epochs` epochs; `epoch_end(epoch, logs)` is called after each one.
        Returns the history {"loss": [...], "steps": [...], "events": [...]} (events: trained
        on by all replicas together; each epoch covers every event with a successor once).

        backup: a `TrainingBackup` (`tf_gru4rec.resume`): every worker restores it before the
          first step (a collective check then makes sure all hold the same state: the backup
          directory must be on storage they share); with `write_backups` (the chief) the state
          is backed up at each epoch end.
        """
        history, first_epoch = {"loss": [], "steps": [], "events": []}, 0
        if backup is not None:
            point = backup.restore(self.model)
            if point is not None:
                first_epoch = point.epoch
                history = {key: list(point.history.get(key, [])) for key in history}
            digests = self.gathered_digests()
            if len(set(digests)) != 1:
                raise ValueError(f"--backup-dir {backup.backup_dir!r}: the workers restored "
                                 "different states (some found no backup, or another one); "
                                 "expected a backup directory on storage every worker shares")
        for epoch in range(first_epoch, self.config.n_epochs):
            start = time.perf_counter()
            loss, steps, events = self.run_epoch(epoch)
            history["loss"].append(loss)
            history["steps"].append(steps)
            history["events"].append(events)
            seconds = time.perf_counter() - start
            logger.info("epoch %d/%d: loss %.4f, %d steps of %d replicas, %.0f events/s, "
                        "%s threads", epoch + 1, self.config.n_epochs, loss, steps,
                        self.n_replicas, self.source.n_predictions / max(seconds, 1e-9),
                        _thread_count())
            if epoch_end is not None:
                epoch_end(epoch, {"loss": loss})
            if backup is not None and write_backups:
                backup.on_epoch_end(epoch, {"loss": loss, "steps": steps, "events": events})
        return history

    def weight_digests(self) -> list[str]:
        """sha256 of every variable (weights and optimizer state) on each local replica."""
        variables = list(self.model.weights) + list(self.model.optimizer.variables)
        digests = None
        for variable in variables:
            values = self.strategy.experimental_local_results(
                getattr(variable, "value", variable))
            if digests is None:
                digests = [hashlib.sha256() for _ in values]
            for digest, value in zip(digests, values, strict=True):
                digest.update(np.ascontiguousarray(value.numpy()).tobytes())
        return [digest.hexdigest() for digest in digests or []]

    def gathered_digests(self) -> list[str]:
        """`weight_digests` of every replica of the cluster, in replica order (a collective:
        every worker calls it; it is also the end-of-training barrier)."""
        local = [np.frombuffer(bytes.fromhex(d), dtype=np.int32) for d in self.weight_digests()]
        words = self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(local[context.replica_id_in_sync_group % len(local)]))
        gathered = tf.function(lambda words: self.strategy.run(
            lambda w: tf.distribute.get_replica_context().all_gather(w[None], axis=0),
            args=(words,)))(words)
        rows = self.strategy.experimental_local_results(gathered)[0].numpy()
        return [row.astype(np.int32).tobytes().hex() for row in rows]
