"""The block engine of the training loop (`tf_gru4rec.training.loop`) at every scale: one replica
(one process on one device, the default strategy) or several (`tf.distribute`: `MirroredStrategy`,
`MultiWorkerMirroredStrategy`).

Keras 3 `model.fit` fails under the strategies in TF 2.21 (checked again for this loop: under a
one-device `MirroredStrategy` it cannot build the model, under two devices its input step
all-reduces a bool tensor; under `MultiWorkerMirroredStrategy` per-replica values break the
input build step and the metric reduction, keras-team/keras#20329), so every scale runs this
engine, driven by the same Keras callbacks (`tf_gru4rec.training.loop`).

One replica: a block of K steps is `GRU4Rec.train_block`, the program `fit` runs (with XLA the
loop over the steps, forward, backward and optimizer update, is one XLA program). A strategy of
one replica (a one-worker `TF_CONFIG`, `--mirrored` on a host of one device) has nothing to
synchronise and runs this path, without the strategy.

Several replicas: each trains on its own sessions with B / R of the B slots
(`tf_gru4rec.data.distributed_input`) and its own negatives; the loss is divided by the global
B, the gradients (the item tables' row-sparse ones included, as `IndexedSlices`) are summed over
the replicas by Keras' optimizer, and every replica applies the same `AdagradM` update to its
copy of the variables. A block is one `tf.function` call: an all-gather first tells how many of
its steps hold events on any replica (all run that many) and whether any replica has a block
after it, then a loop in cross-replica context runs one `strategy.run` per step (each step's
forward and backward pass is one XLA program; collectives cannot run inside XLA on CPU). At the
end of the block the replicas' GRU states are gathered into the model's `train_states` [B, H]
(replica r's slots are rows r B/R ... (r + 1) B/R), so a backup taken there holds the whole
state. This is `sync="step"`, the default; with `sync="block"` (one replica per worker) each
worker instead trains whole blocks as one replica does and the workers average their models
after each block (`tf_gru4rec.training.averaging`).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import tensorflow as tf

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.config_checks import check_replica_split
from tf_gru4rec.data.distributed_input import ReplicaStream, TrainingSource
from tf_gru4rec.training.averaging import BlockAveraging, OverlappedAveraging
from tf_gru4rec.training.workers import thread_count  # noqa: F401  (its former home)

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
    check_replica_split(config, n_replicas)
    support = source.item_support()
    slots = config.batch_size // n_replicas
    deal = slots if config.replica_split == "balanced" else None  # None: s % R
    return [ReplicaStream(source.parts(r, n_replicas, deal), slots, support,
                          n_sample=config.n_sample, sample_alpha=config.sample_alpha,
                          shuffle_sessions=config.shuffle_sessions, seed=config.seed,
                          steps_per_block=config.steps_per_execution, replica=r)
            for r in replicas]


def _copy_model(model, config: TrainConfig):
    """A built GRU4Rec of `model`'s architecture (with the config's batch size) holding its
    weights, created in the current strategy scope."""
    from tf_gru4rec.nn.model import GRU4Rec

    copy = GRU4Rec.from_config({**model.get_config(), "batch_size": config.batch_size})
    copy.build()
    values = {w.path: w for w in model.weights}
    for weight in copy.weights:
        if not weight.path.split("/")[-1].startswith("train_state"):
            weight.assign(np.asarray(values[weight.path].value))
    return copy


def run_model(config: TrainConfig, source: TrainingSource, model=None, copy: bool = False):
    """The run's compiled model, in the current strategy scope: a new one (`model` None),
    `model` itself (compiled if it is not, its optimizer state kept), or with `copy` a model of
    its architecture holding its weights, with a new optimizer."""
    from tf_gru4rec.training.build import build_model, compile_model

    if model is None:
        return build_model(config, source.n_items, source.item_support())
    if not copy:
        return model if model.optimizer is not None else compile_model(model, config)
    model = _copy_model(model, config)
    model.set_item_support(source.item_support())
    return compile_model(model, config)


def model_averaging(config: TrainConfig, source: TrainingSource, strategy, model=None):
    """`BlockAveraging` (sync="block") or `OverlappedAveraging` ("overlap") of a new run model
    (or a copy of `model`) and this worker's local copy of it with B / R slots."""
    model = run_model(config, source, model, copy=model is not None)
    model.optimizer.build(model.trainable_variables)
    local = run_model(config.replace(batch_size=config.batch_size // strategy.num_replicas_in_sync),
                      source, model, copy=True)
    local.optimizer.build(local.trainable_variables)
    averaging = OverlappedAveraging if config.sync == "overlap" else BlockAveraging
    return averaging(strategy, model, local)


class DistributedTrainer:
    """Builds the model under `strategy` and trains it on `source`, block by block (module
    docstring); `tf_gru4rec.training.loop.TrainingLoop` runs the epochs and the callbacks.

    Args:
      config: the run's settings.
      source: the training sessions (`TrainingSource`).
      strategy: a `tf.distribute` strategy, None (or one of one replica): the default one.
      model: a built GRU4Rec to continue training (warm start): trained as it is on one
        replica; on several, its weights are copied into a model of its architecture built
        under the strategy.
    """

    def __init__(self, config: TrainConfig, source: TrainingSource,
                 strategy: tf.distribute.Strategy | None = None, model=None):
        self.config = config
        self.source = source
        if strategy is None or strategy.num_replicas_in_sync == 1:
            strategy = tf.distribute.get_strategy()
        self.strategy = strategy
        self.n_replicas = strategy.num_replicas_in_sync
        self.averaging = None
        if self.n_replicas == 1 and config.sync != "step":
            logger.info("sync=%r changes nothing on one replica (nothing to average)",
                        config.sync)
        if self.n_replicas > 1 and config.sync != "step":  # one model per worker, no scope
            self.averaging = model_averaging(config, source, strategy, model)
            self.model = self.averaging.model
        else:
            with strategy.scope():
                self.model = run_model(config, source, model, copy=self.n_replicas > 1)
                if self.n_replicas > 1 and hasattr(self.model.optimizer, "static_shapes"):
                    self.model.optimizer.static_shapes = False  # no XLA: `tf.unique` row sums
                self.model.optimizer.build(self.model.trainable_variables)
        self._stream_cache: dict[tuple[int, ...], list[ReplicaStream]] = {}
        self._steps_cache: dict[int, int | None] = {}
        if self.n_replicas > 1 and self.averaging is None:
            self._run_block = tf.function(self._block_on_replicas)
            # One step's forward and backward pass as one XLA program (no collective inside).
            self._forward_backward = tf.function(self.model.forward_backward,
                                                 jit_compile=config.jit_compile)

    @property
    def sync(self) -> str:
        """As run: "step" (one replica too), "block" or "overlap"."""
        return "step" if self.averaging is None else self.averaging.mode

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
        gathered = strategy.experimental_local_results(
            strategy.run(self._gather_states, args=(states,)))[0]
        for variable, value in zip(self.model.train_states,
                                   tf.split(gathered, self.model.layer_sizes, axis=1),
                                   strict=True):
            variable.assign(value)
        return states, totals, extent[0], extent[1] > 0

    @staticmethod
    def _gather_states(states):
        """[B, sum H]: every replica's states, its layers side by side, replicas in order."""
        return tf.distribute.get_replica_context().all_gather(tf.concat(states, axis=1), axis=0)

    # ------------------------------------------------------------------ the epoch
    def _initial_states(self):
        """Each replica's slots of the model's `train_states` (zeros, or a restored backup's)."""
        local = self.config.batch_size // self.n_replicas
        values = [np.asarray(v.value) for v in self.model.train_states]
        states = self.strategy.experimental_distribute_values_from_function(
            lambda context: [tf.constant(v[context.replica_id_in_sync_group * local:][:local])
                             for v in values])
        if len(self.strategy.extended.worker_devices) == 1:
            # `strategy.run` returns plain tensors for one local replica: start alike.
            states = [self.strategy.experimental_local_results(s)[0] for s in states]
        return states

    def _dataset(self, epoch: int, skip_blocks: int):
        if self.n_replicas == 1:
            return self._streams((0,))[0].dataset(epoch, skip_blocks)

        def dataset_fn(context: tf.distribute.InputContext):
            local = self.n_replicas // context.num_input_pipelines
            replicas = [context.input_pipeline_id * local + i for i in range(local)]
            datasets = [stream.dataset(epoch, skip_blocks)
                        for stream in self._streams(tuple(replicas))]
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

    def steps_per_epoch(self, epoch: int) -> int | None:
        """Steps of epoch `epoch` (all replicas run the busiest one's); None for Parquet
        shards (counting them would read every shard)."""
        if self.source.log is None:
            return None
        if epoch not in self._steps_cache:
            streams = self._streams(tuple(range(self.n_replicas)))
            self._steps_cache = {epoch: max(s.steps_per_epoch(epoch) for s in streams)}
        return self._steps_cache[epoch]

    def train_epoch(self, epoch: int, skip_blocks: int = 0):
        """Trains epoch `epoch` from block `skip_blocks` on; yields (steps, loss sum, events)
        of each block once it is trained (events: of all replicas together)."""
        if self.averaging is not None:  # sync="block" or "overlap": this worker's stream
            stream = self._streams((self.averaging.replica,))[0]
            yield from self.averaging.train_epoch(stream.dataset(epoch, skip_blocks))
            return
        iterator = iter(self._dataset(epoch, skip_blocks))
        if self.n_replicas > 1:
            states = self._initial_states()
        more = True
        while more:
            block = next(iterator)
            if self.n_replicas == 1:
                totals = self.model.train_block(block, block["n_real"])
                n_steps, more = int(block["n_real"]), bool(block["more"])
            else:
                states, totals, n_steps, more = self._run_block(block, states)
                n_steps, more = int(n_steps), bool(more)
            totals = np.asarray(totals)
            yield n_steps, float(totals[0]), float(totals[1])

    def run_epoch(self, epoch: int) -> tuple[float, int, int]:
        """Trains one epoch without callbacks; returns (mean loss over the events, steps run,
        events trained on by all replicas together)."""
        loss_sum = n_events = steps = 0
        for n_steps, block_loss, block_events in self.train_epoch(epoch):
            loss_sum, n_events, steps = loss_sum + block_loss, n_events + block_events, \
                steps + n_steps
        return loss_sum / max(n_events, 1.0), steps, int(round(n_events))

    def fit(self, callbacks=(), backup=None, verbose=0) -> dict:
        """Trains `config.n_epochs` epochs with `tf_gru4rec.training.loop.TrainingLoop` (callbacks,
        `backup`: a `TrainingBackup` restored first); returns the history ("loss", the
        callbacks' logs, "steps" and "events" per epoch)."""
        from tf_gru4rec.training.loop import TrainingLoop

        return TrainingLoop(self, callbacks, backup=backup, verbose=verbose).run()

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
        if self.n_replicas == 1:
            return self.weight_digests()
        local = [np.frombuffer(bytes.fromhex(d), dtype=np.int32) for d in self.weight_digests()]
        words = self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(local[context.replica_id_in_sync_group % len(local)]))
        gathered = tf.function(lambda words: self.strategy.run(
            lambda w: tf.distribute.get_replica_context().all_gather(w[None], axis=0),
            args=(words,)))(words)
        rows = self.strategy.experimental_local_results(gathered)[0].numpy()
        return [row.astype(np.int32).tobytes().hex() for row in rows]
