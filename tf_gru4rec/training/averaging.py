"""Block-synchronised training across workers (`sync="block"`, local SGD with model averaging).

With `sync="step"` (the default) the replicas sum their gradients at every step: the maths of
one process holding all B slots, but one exchange per step, which on CPU hosts costs more than
the step itself (BENCHMARKS.md: "Synchronisation alone costs more than `fit`'s whole step").
With `sync="block"` each worker trains a block of `steps_per_execution` steps on its own B / R
slots with `fit`'s program (`GRU4Rec.train_block`: with XLA the whole block, forward, backward
and optimizer update, is one compiled program) on a model of its own, then the workers average
their weights and optimizer state in one all-reduce, each weighted by the real steps it ran in
the block (a worker whose sessions have run out contributes nothing); the same all-reduce
carries the loss totals, the GRU states and the steps, so a block costs one collective. One
block of one step with plain SGD is exactly the step-synchronised update; longer blocks are
local SGD (the replicas drift apart within a block), with its own accuracy (BENCHMARKS.md).
With `sync="overlap"` (`OverlappedAveraging`) the all-reduce runs in a thread while the worker
trains its next block, and the average arrives one block late, together with the worker's own
progress since ("overlap local SGD"): the exchange is hidden behind the training.

The run's model (`BlockAveraging.model`, B slots: what the callbacks, the backups and the export
see) holds the averaged weights and optimizer state after every block and the replicas' GRU
states side by side (replica r's slots are rows r B/R ... (r + 1) B/R), as under `sync="step"`,
so backups, resume, validation and early stopping work unchanged (under "overlap": at epoch
ends, where every replica holds the average; mid-epoch backups are refused).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)
SEED_STRIDE = 7919  # replica r's dropout seed: the run model's, plus r * SEED_STRIDE
BLOCK_DRAWS = 1 << 20  # the run model's dropout counter advances this much per block


class BlockAveraging:
    """The per-worker model and the block exchange of `sync="block"` (module docstring).

    Args:
      strategy: a `MultiWorkerMirroredStrategy` with one replica per worker (the collectives).
      model: the run's built and compiled GRU4Rec (B slots), created outside the strategy.
      local: this worker's built and compiled copy of it with B / R slots, optimizer built.
    """

    mode = "block"

    def __init__(self, strategy: tf.distribute.Strategy, model, local):
        if len(strategy.extended.worker_devices) != 1:
            raise ValueError(
                f"sync={self.mode!r} keeps one model copy per process, but this strategy has "
                f"{len(strategy.extended.worker_devices)} replicas in one process (--mirrored "
                "on several devices); expected one device per worker: use --workers N or "
                "TF_CONFIG, or sync='step'")
        self.strategy, self.model, self.local = strategy, model, local
        self.n_replicas = strategy.num_replicas_in_sync
        self.replica = int(strategy.experimental_local_results(tf.function(
            lambda: strategy.run(
                lambda: tf.distribute.get_replica_context().replica_id_in_sync_group))())[0])
        self.local_slots = local.batch_size
        self.pairs = list(zip(averaged_variables(self.local), averaged_variables(model),
                              strict=True))
        for mine, theirs in self.pairs:
            if tuple(mine.shape) != tuple(theirs.shape):
                raise ValueError(f"{mine.path}: shape {tuple(mine.shape)} against the run "
                                 f"model's {tuple(theirs.shape)}")
        # Dropout: replica r draws the masks of seed state (the run model's) + [r stride, 0];
        # the run model's counter moves BLOCK_DRAWS per block, so a resumed run draws alike.
        self.seeds = list(zip(seed_states(self.local), seed_states(model), strict=True))

    def start_epoch(self) -> None:
        """The local model from the run's model: weights, optimizer state, this replica's
        slots of the GRU states (zeros, or a restored backup's)."""
        for mine, theirs in self.pairs:
            mine.assign(theirs.value)
        self.local.optimizer.iterations.assign(self.model.optimizer.iterations.value)
        rows = slice(self.replica * self.local_slots, (self.replica + 1) * self.local_slots)
        for mine, theirs in zip(self.local.train_states, self.model.train_states, strict=True):
            mine.assign(np.asarray(theirs.value)[rows])
        self._replica_seeds()

    def _replica_seeds(self) -> None:
        for mine, theirs in self.seeds:
            offset = tf.constant([SEED_STRIDE * self.replica, 0], theirs.dtype)
            mine.assign(theirs.value + offset)

    def train_epoch(self, dataset):
        """Trains this worker's blocks of an epoch (`dataset`: its stream's, from the first
        block to train); yields (steps, loss sum, events) of each block once averaged (the most
        real steps on any replica; loss and events of all replicas together)."""
        seconds = []
        for block, totals, training in self._local_blocks(dataset):
            trained = time.perf_counter()
            flat = self._local_flat()
            summed = self._all_reduce(flat, self._local_states(), block["n_real"],
                                      block["more"], totals)
            totals, extent = self._apply(summed, flat)
            seconds.append((training, time.perf_counter() - trained))
            n_steps, more = _extent(extent)
            yield n_steps, float(totals[0]), float(totals[1])
            if not more:
                break
        self._log_timing(seconds, "averaging")

    def _local_blocks(self, dataset):
        """Starts the epoch, then trains this worker's blocks (`dataset`: endless, empty blocks
        after the real ones) on its own model, one per step of the iteration: yields (the
        block, its loss sum and events [2] on this replica, seconds of training)."""
        self.start_epoch()
        for block in dataset:
            start = time.perf_counter()
            totals = np.asarray(self.local.train_block(block, block["n_real"]))
            training = time.perf_counter() - start
            self._next_block_seeds()
            yield block, totals, training

    def _log_timing(self, seconds: list, what: str) -> None:
        train, exchange = np.median(np.asarray(seconds), axis=0) * 1e3
        logger.info("sync=%s: %d blocks, median %.1f ms training and %.1f ms %s per block",
                    self.mode, len(seconds), train, exchange, what)

    @tf.function(jit_compile=True)
    def _local_flat(self):
        """[n]: this replica's averaged variables, flattened and concatenated (a copy)."""
        return tf.concat([tf.reshape(mine.value, [-1]) for mine, _ in self.pairs], 0)

    @tf.function
    def _local_states(self):
        return tf.concat([s.value for s in self.local.train_states], axis=1)

    @tf.function
    def _all_reduce(self, flat, states, n_real, more, totals):
        """One all-reduce (sum) of [steps-weighted values, steps, totals, GRU states, extents]:
        each replica puts its GRU states [B/R, sum H] in its own rows of a zero [B, sum H] and
        its (steps, more) in its own pair of a zero [R, 2], so the sums are every replica's
        (one collective: each costs a round trip)."""
        n_replicas, local = self.n_replicas, self.local_slots

        def exchange(*args):
            # On the replica's device (a collective takes its destination from its input).
            flat, states, n_real, more, totals = (tf.identity(a) for a in args)
            context = tf.distribute.get_replica_context()
            replica = context.replica_id_in_sync_group
            weight = tf.cast(n_real, tf.float32)
            rows = tf.pad(states, [[replica * local, (n_replicas - 1 - replica) * local],
                                   [0, 0]])
            mine = tf.one_hot(replica, n_replicas)[:, None] * tf.cast(
                tf.stack([n_real, tf.cast(more, tf.int32)]), tf.float32)
            return context.all_reduce("sum", tf.concat(
                [flat * weight, [weight], totals, tf.reshape(rows, [-1]),
                 tf.reshape(mine, [-1])], 0))

        return self.strategy.experimental_local_results(
            self.strategy.run(exchange, args=(flat, states, n_real, more, totals)))[0]

    @tf.function(jit_compile=True)
    def _apply(self, summed, sent):
        """Assigns the average of an all-reduce of `sent` (this replica's `_local_flat()` when
        it was sent): the run model gets the mean and the gathered GRU states, the local model
        the mean plus its own progress since `sent` (none under sync="block"). Returns the
        (loss sum, events) of all replicas and the extent [2] (most steps, any more)."""
        size = int(sent.shape[0])
        n_states = self.n_replicas * self.local_slots * sum(self.model.layer_sizes)
        weight = summed[size]
        # No replica ran a step (all had run out): every copy still holds the last average.
        mean = tf.where(weight > 0, summed[:size] / tf.maximum(weight, 1.0), sent)
        sizes = [int(np.prod(mine.shape)) for mine, _ in self.pairs]
        for (mine, theirs), value, old in zip(self.pairs, tf.split(mean, sizes),
                                              tf.split(sent, sizes), strict=True):
            value = tf.reshape(value, mine.shape)
            theirs.assign(value)
            mine.assign(value + (mine.value - tf.reshape(old, mine.shape)))
        gathered = tf.reshape(summed[size + 3:size + 3 + n_states],
                              [self.n_replicas * self.local_slots, -1])
        for variable, value in zip(self.model.train_states,
                                   tf.split(gathered, self.model.layer_sizes, axis=1),
                                   strict=True):
            variable.assign(value)
        extent = tf.cast(tf.reduce_max(tf.reshape(summed[size + 3 + n_states:], [-1, 2]),
                                       axis=0), tf.int32)
        iterations = self.model.optimizer.iterations
        iterations.assign_add(tf.cast(extent[0], iterations.dtype))
        self.local.optimizer.iterations.assign(iterations)
        return summed[size + 1:size + 3], extent

    @tf.function
    def _next_block_seeds(self) -> None:
        """The run model's dropout counter moves one block on; the replica's seeds follow."""
        for _, theirs in self.seeds:
            theirs.assign_add(tf.constant([0, BLOCK_DRAWS], theirs.dtype))
        self._replica_seeds()


class OverlappedAveraging(BlockAveraging):
    """`sync="overlap"`: block averaging whose exchange runs while the next block trains.

    After block k the worker sends its model and trains block k + 1 from it at once, without
    waiting; then the average M_k of the replicas' block-k models arrives, and the worker's
    model becomes M_k plus its own progress since it sent (block k + 1's): each replica
    applies the average one block late ("overlap local SGD"). The run model holds M_k. The
    epoch ends with a block that is empty on every replica (the one after the last real
    block), whose arrival leaves every replica holding the same average, so epoch ends
    (validation, backups, the export) see one model, as under `sync="block"`. Between epoch
    ends the replicas hold their own progress, which a backup of the run model does not carry:
    mid-epoch backups are refused (`tf_gru4rec.config_checks.check_backup_every`).
    """

    mode = "overlap"

    def train_epoch(self, dataset):
        sender = concurrent.futures.ThreadPoolExecutor(1, "tf_gru4rec_averaging")
        try:
            yield from self._train_epoch(dataset, sender)
        finally:  # no thread left behind; a pending all-reduce that failed is not waited for
            sender.shutdown(wait=False, cancel_futures=True)

    def _train_epoch(self, dataset, sender):
        pending, more, seconds = None, True, []
        for block, totals, training in self._local_blocks(dataset):
            trained = time.perf_counter()
            done = None
            if pending is not None:  # the previous block's average, applied one block late
                future, sent = pending
                done, extent = self._apply(future.result(), sent)
                n_steps, more = _extent(extent)
            if more:  # sent now: it travels during the callbacks and the next block
                flat = self._local_flat()
                pending = (sender.submit(self._all_reduce, flat, self._local_states(),
                                         block["n_real"], block["more"], totals), flat)
            seconds.append((training, time.perf_counter() - trained))
            if done is not None:
                yield n_steps, float(done[0]), float(done[1])
            if not more:
                break
        self._log_timing(seconds, "waiting for the average")


def _extent(extent) -> tuple[int, bool]:
    extent = np.asarray(extent)
    return int(extent[0]), bool(extent[1])


def averaged_variables(model) -> list:
    """The variables that the replicas average: the trainable weights, then the optimizer's
    float state (accumulators, momentums...; not its step counter and learning rate)."""
    state = [v for v in model.optimizer.variables
             if v.name not in ("iteration", "iterations", "learning_rate")
             and "float" in str(v.dtype)]
    return list(model.trainable_variables) + state


def seed_states(model) -> list:
    """The model's dropout seed-generator states (int [2] each), in layer order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]
