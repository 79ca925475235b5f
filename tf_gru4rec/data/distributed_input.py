"""Session-parallel input for distributed training: one stream per replica, sharded by session.

Replica r of R trains on its own share of the sessions, each session whole and in order (the
default auto-sharding of a dataset would deal rows out and break sessions):
  - an in-memory log: the sessions s with s % R == r (sessions in start-time order), or with
    `replica_split="balanced"` (`parts(..., slots)`), when that leaves one replica's pass with
    a long tail, a deal that ends the passes together (`tf_gru4rec.data.replica_split`);
  - Parquet shards (`prepare log --shards`): the shards k with k % R == r when there are at
    least R shards, else the sessions of every shard dealt as an in-memory log's.
Each part (the log, or one shard) is one session-parallel pass with B / R slots, so slots start
empty at the beginning of a shard; the replica's negatives come from its own seed, drawn from
the whole training log's item support. Only one shard is in memory at a time.

`ReplicaStream.dataset(epoch)` yields blocks of exactly `steps_per_block` steps (entries
[K, B/R]; the last real block is padded with empty steps), then empty blocks forever. Each
block carries `n_real` (its leading steps with any event) and `more` (a real block follows):
the training loop all-reduces both, so every replica runs the same number of steps and stops
together (`tf_gru4rec.training.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from tf_gru4rec.data.input_pipeline import PREFETCH_BLOCKS
from tf_gru4rec.data.replica_split import replica_of_sessions
from tf_gru4rec.data.sampling import NegativeSampler
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.session_parallel import StepArrays, session_order, session_parallel_steps

# Replica r > 0 seeds its negatives with seed + r * REPLICA_SEED_STRIDE (replica 0 draws what a
# single-process run draws).
REPLICA_SEED_STRIDE = 1_000_003


class TrainingSource:
    """The training sessions, in memory (`SessionLog`) or as Parquet shards (`ShardSet`).

    `n_items`, `n_events`, `n_sessions` and `n_predictions` are those of the whole log (both
    kinds have them); `item_support` [n_items] int64 is counted once, over the whole log.
    """

    def __init__(self, log: SessionLog | None = None, shards=None):
        if (log is None) == (shards is None):
            raise ValueError("give exactly one of `log` and `shards`")
        self.log = log
        self.shards = shards
        whole = log if log is not None else shards
        self.n_items, self.n_events = whole.n_items, whole.n_events
        self.n_sessions, self.n_predictions = whole.n_sessions, whole.n_predictions
        self._support = None
        self._owners = {}  # (shard index or None, replicas, slots) -> replica of each session

    def item_support(self) -> np.ndarray:
        """int64 [n_items] training events per item (the whole log, every replica alike)."""
        if self._support is None:
            self._support = np.asarray(self.log.item_support() if self.log is not None
                                       else self.shards.item_support, dtype=np.int64)
        return self._support

    def parts(self, replica: int, n_replicas: int,
              slots: int | None = None) -> list[Callable[[], SessionLog]]:
        """Loaders of the parts replica `replica` of `n_replicas` trains on, in order.

        slots: each replica's slots, for a deal whose passes end together
        (`replica_split.replica_of_sessions`); None deals session s to replica s % R.
        """
        if not 0 <= replica < n_replicas:
            raise ValueError(f"`replica` should be in [0, {n_replicas}). Received: {replica}")
        if self.log is not None:
            return [lambda: self._replica_sessions(self.log, None, replica, n_replicas, slots)]
        n_shards = len(self.shards.shards)
        if n_shards >= n_replicas:
            return [lambda k=k: self.shards.read(k) for k in range(replica, n_shards, n_replicas)]
        return [lambda k=k: self._replica_sessions(self.shards.read(k), k, replica, n_replicas,
                                                   slots)
                for k in range(n_shards)]

    def _replica_sessions(self, log: SessionLog, shard: int | None, replica: int,
                          n_replicas: int, slots: int | None) -> SessionLog:
        """The sessions of `log` (the log, or shard `shard`) that replica `replica` trains;
        the deal is computed once per (shard, replicas, slots)."""
        if n_replicas == 1:
            return log
        if slots is None:
            return log.subset(np.arange(replica, log.n_sessions, n_replicas))
        key = (shard, n_replicas, slots)
        if key not in self._owners:
            self._owners[key] = replica_of_sessions(log.lengths - 1, n_replicas, slots)
        return log.subset(np.flatnonzero(self._owners[key] == replica))


class ReplicaStream:
    """The training blocks of one replica (see the module docstring).

    Args:
      parts: loaders of the replica's parts (`TrainingSource.parts`).
      batch_size: the replica's slots (the global batch size / number of replicas).
      item_support: int [n_items] training events per item (sampling distribution).
      n_sample, sample_alpha, shuffle_sessions, seed, steps_per_block: as
        `SessionParallelInput`; `seed` is the run's seed, `replica` offsets it.
    """

    def __init__(self, parts: Sequence[Callable[[], SessionLog]], batch_size: int,
                 item_support: np.ndarray, n_sample: int = 0, sample_alpha: float = 0.5,
                 shuffle_sessions: bool = False, seed: int = 0, steps_per_block: int = 50,
                 replica: int = 0):
        self.parts = list(parts)
        self.batch_size = int(batch_size)
        self.shuffle_sessions = bool(shuffle_sessions)
        self.seed = int(seed)
        self.steps_per_block = int(steps_per_block)
        self.sampler = (
            NegativeSampler(item_support, sample_alpha, n_sample,
                            seed=self.seed + replica * REPLICA_SEED_STRIDE,
                            steps_per_block=self.steps_per_block)
            if n_sample > 0 else None)
        self._dataset = None  # built once (`dataset`): its map functions are traced once
        self._pending = (0, 0)  # (epoch, skip_blocks) of the next iterator of `_dataset`

    def steps(self, epoch: int) -> Iterator[StepArrays]:
        """The session-parallel steps of each part in turn (each part loaded when reached)."""
        for index, load in enumerate(self.parts):
            log = load()
            seed = self.seed * 7919 + epoch + 104_729 * index
            yield session_parallel_steps(log, self.batch_size,
                                         session_order(log, self.shuffle_sessions, seed))

    def steps_per_epoch(self, epoch: int) -> int:
        """Real steps of the epoch (loads every part: for a log in memory)."""
        return sum(arrays.n_steps for arrays in self.steps(epoch))

    def real_blocks(self, epoch: int, skip_blocks: int = 0) -> Iterator[dict]:
        """The epoch's blocks of K steps (numpy; the last one of a part padded), part after
        part, without the first `skip_blocks` (a resumed epoch; their steps keep counting)."""
        k, step, index = self.steps_per_block, 0, 0
        for arrays in self.steps(epoch):
            for start in range(0, arrays.n_steps, k):
                block = {name: getattr(arrays, name)[start:start + k]
                         for name in ("inputs", "targets", "reset", "valid")}
                n_real = len(block["inputs"])
                if index >= skip_blocks:
                    yield {**_pad(block, k), "n_real": np.int32(n_real),
                           "epoch": np.full(k, epoch, np.int64),
                           "step": np.arange(step, step + k, dtype=np.int64)}
                step += n_real
                index += 1

    def blocks(self, epoch: int, skip_blocks: int = 0) -> Iterator[dict]:
        """`real_blocks` with `more` set, then empty blocks (n_real 0) forever."""
        previous = None
        for block in self.real_blocks(epoch, skip_blocks):
            if previous is not None:
                yield {**previous, "more": np.bool_(True)}
            previous = block
        if previous is not None:
            yield {**previous, "more": np.bool_(False)}
        empty = _pad({name: np.zeros((0, self.batch_size), dtype) for name, dtype in
                      (("inputs", np.int32), ("targets", np.int32), ("reset", bool),
                       ("valid", bool))}, self.steps_per_block)
        step = 0 if previous is None else int(previous["step"][0]) + int(previous["n_real"])
        while True:
            yield {**empty, "n_real": np.int32(0), "more": np.bool_(False),
                   "epoch": np.full(self.steps_per_block, epoch, np.int64),
                   "step": np.arange(step, step + self.steps_per_block, dtype=np.int64)}

    def dataset(self, epoch: int, skip_blocks: int = 0) -> tf.data.Dataset:
        """`blocks(epoch, skip_blocks)` as a dataset, with negatives [K, n_sample] added.

        The dataset object is built on the first call and returned again by the next ones
        (building it, its map functions traced, took ~60 ms per epoch, 4-9% of a worker's
        epoch on the RSC15 and trivago samples): each call sets what the next iterator made
        from it yields, so iterate an epoch's dataset before asking for the next epoch's.
        """
        self._pending = (int(epoch), int(skip_blocks))
        if self._dataset is None:
            self._dataset = self._build_dataset()
        return self._dataset

    def _build_dataset(self) -> tf.data.Dataset:
        k, b = self.steps_per_block, self.batch_size
        signature = {
            "inputs": tf.TensorSpec([k, b], tf.int32), "targets": tf.TensorSpec([k, b], tf.int32),
            "reset": tf.TensorSpec([k, b], tf.bool), "valid": tf.TensorSpec([k, b], tf.bool),
            "n_real": tf.TensorSpec([], tf.int32), "more": tf.TensorSpec([], tf.bool),
            "epoch": tf.TensorSpec([k], tf.int64), "step": tf.TensorSpec([k], tf.int64)}
        # The generator is called when an iterator starts: it reads the epoch then.
        dataset = tf.data.Dataset.from_generator(lambda: self.blocks(*self._pending),
                                                 output_signature=signature)
        if self.sampler is not None:
            dataset = dataset.map(self.sampler.add_to_block)
        dataset = dataset.map(lambda block: {key: value for key, value in block.items()
                                             if key not in ("epoch", "step")})
        # As `SessionParallelInput.dataset`: no autotuning (tearing an epoch's iterator down
        # waited for its optimisation thread, GIL held), a fixed prefetch of two blocks.
        options = tf.data.Options()
        options.deterministic = True
        options.autotune.enabled = False
        return dataset.prefetch(PREFETCH_BLOCKS).with_options(options)


def _pad(block: dict, k: int) -> dict:
    """Pads the [n, B] entries of a block to [k, B] with empty steps (no event, no reset)."""
    n = len(block["inputs"])
    if n == k:
        return block
    return {name: np.concatenate([value, np.zeros((k - n,) + value.shape[1:], value.dtype)])
            for name, value in block.items()}
