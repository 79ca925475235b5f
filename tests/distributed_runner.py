"""Distributed scenarios that need two logical CPU devices, set before TensorFlow starts, so
they run in a process of their own (used by test_distributed.py). Prints one JSON object.

  python distributed_runner.py adagradm         AdagradM under MirroredStrategy vs. one device
  python distributed_runner.py reference DIR    2 replicas vs. a by-hand replay of their steps
  python distributed_runner.py cli ARGS...      `tf-gru4rec ARGS` with two local devices
  python distributed_runner.py block-on-devices sync="block" on two devices: its error
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

DEVICES = ["/cpu:0", "/cpu:1"]


def adagradm() -> dict:
    """Random row-sparse and dense gradients on two replicas: the mirrored update must equal
    one device applying the summed gradients, for both row-sum paths; the first-entry scratch
    must be back to "no entry" on each replica's copy."""
    from tf_gru4rec.nn.optimizers import NO_ENTRY, AdagradM

    rng = np.random.default_rng(0)
    table0 = rng.normal(size=(40, 3)).astype(np.float32)
    dense0 = rng.normal(size=(3,)).astype(np.float32)
    steps = []
    for _ in range(4):  # per step and replica: rows with duplicates, their values, a dense grad
        steps.append([(rng.integers(0, 40, 6).astype(np.int32),
                       rng.normal(size=(6, 3)).astype(np.float32),
                       rng.normal(size=(3,)).astype(np.float32)) for _ in range(2)])
    out = {}
    for static in (False, True):
        reference = [tf.Variable(table0), tf.Variable(dense0)]
        optimizer = AdagradM(0.1, 0.5, static_shapes=static)
        for step in steps:
            rows = np.concatenate([s[0] for s in step])
            values = np.concatenate([s[1] for s in step])
            optimizer.apply([tf.IndexedSlices(tf.constant(values), tf.constant(rows), [40, 3]),
                             tf.constant(step[0][2] + step[1][2])], reference)
        strategy = tf.distribute.MirroredStrategy(DEVICES)
        with strategy.scope():
            variables = [tf.Variable(table0), tf.Variable(dense0)]
            mirrored = AdagradM(0.1, 0.5, static_shapes=static)
            mirrored.build(variables)

        @tf.function
        def run(rows, values, dense, variables=variables, mirrored=mirrored,
                strategy=strategy):
            def replica(rows, values, dense):
                grads = [tf.IndexedSlices(values, rows, tf.constant([40, 3])), dense]
                mirrored.apply(grads, variables)
            strategy.run(replica, args=(rows, values, dense))

        for step in steps:
            per_replica = [strategy.experimental_distribute_values_from_function(
                lambda ctx, k=k, step=step: tf.constant(step[ctx.replica_id_in_sync_group][k]))
                for k in range(3)]
            run(*per_replica)
        name = "static" if static else "unique"
        out[name] = {
            "max_diff": max(float(np.max(np.abs(local.numpy() - ref.numpy())))
                            for var, ref in zip(variables, reference, strict=True)
                            for local in strategy.experimental_local_results(var)),
            "moved": float(np.max(np.abs(reference[0].numpy() - table0))),
            "scratch_clean": [bool(np.all(local.numpy() == NO_ENTRY))
                              for scratch in mirrored._first_entry if scratch is not None
                              for local in strategy.experimental_local_results(scratch)],
        }
    return out


def reference(workdir: str) -> dict:
    """Two replicas train one epoch; a plain model replays both replicas' steps by hand (the
    sum of their gradients, the loss over the global batch) from the same initial weights."""
    from replay_setup import replay_log_and_config

    from tf_gru4rec.data.distributed_input import TrainingSource
    from tf_gru4rec.nn.layers.dropout import HashDropout
    from tf_gru4rec.training import build_model
    from tf_gru4rec.training.distributed import DistributedTrainer, replica_streams

    log, config = replay_log_and_config()
    strategy = tf.distribute.MirroredStrategy(DEVICES)
    source = TrainingSource(log=log)
    trainer = DistributedTrainer(config, source, strategy)
    initial = [np.asarray(v.value) for v in trainer.model.trainable_variables]
    history = trainer.fit()

    model = build_model(config, log.n_items, log.item_support())
    model.optimizer.static_shapes = False
    for variable, value in zip(model.trainable_variables, initial, strict=True):
        variable.assign(value)
    streams = replica_streams(source, config, [0, 1], 2)
    iterators = [iter(stream.dataset(0)) for stream in streams]
    states = [[tf.zeros((4, 12))], [tf.zeros((4, 12))]]
    steps = 0
    while True:
        blocks = [next(it) for it in iterators]
        n_real = max(int(b["n_real"]) for b in blocks)
        for i in range(n_real):
            grads_sum = None
            for r in range(2):
                step = {k: blocks[r][k][i] for k in ("inputs", "targets", "reset", "valid",
                                                       "negatives")}
                grads, _, _, states[r] = model.forward_backward(step, states[r])
                grads_sum = grads if grads_sum is None else [
                    _add(a, b) for a, b in zip(grads_sum, grads, strict=True)]
            model.optimizer.apply(grads_sum, model.trainable_variables)
            steps += 1
        if not any(bool(b["more"]) for b in blocks):
            break
    diffs = {v.path: float(np.max(np.abs(np.asarray(v.value) - np.asarray(w.value))))
             for v, w in zip(trainer.model.trainable_variables, model.trainable_variables,
                             strict=True)}
    # Each replica draws its own dropout masks.
    with strategy.scope():  # as the model's layers are: a mirrored seed state
        dropout = HashDropout(0.5, seed=3)
    masks = tf.function(lambda: strategy.run(  # in a graph, as training runs it
        lambda: dropout(tf.ones((4, 64)), training=True)))()
    masks = [m.numpy() for m in strategy.experimental_local_results(masks)]
    return {"steps": steps, "trainer_steps": history["steps"][0], "diffs": diffs,
            "moved": float(np.max(np.abs(np.asarray(model.trainable_variables[0].value)
                                         - initial[0]))),
            "digests": trainer.gathered_digests(),
            "masks_differ": bool(np.any(masks[0] != masks[1]))}


def _add(a, b):
    """The sum of two gradients; row-sparse ones stay row-sparse (their rows concatenated)."""
    if isinstance(a, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0),
                                tf.concat([a.indices, b.indices], 0), a.dense_shape)
    return a + b


def block_on_devices() -> dict:
    """sync="block" under a MirroredStrategy of two devices: the error it raises."""
    from replay_setup import replay_log_and_config

    from tf_gru4rec.data.distributed_input import TrainingSource
    from tf_gru4rec.training.distributed import DistributedTrainer

    log, config = replay_log_and_config(sync="block")
    try:
        DistributedTrainer(config, TrainingSource(log=log),
                           tf.distribute.MirroredStrategy(DEVICES))
    except ValueError as error:
        return {"error": str(error)}
    return {"error": None}


def cli(argv: list[str]) -> dict:
    from tf_gru4rec.cli import main

    return {"exit": main(argv)}


if __name__ == "__main__":
    scenario, args = sys.argv[1], sys.argv[2:]
    result = {"adagradm": lambda: adagradm(), "reference": lambda: reference(*args),
              "cli": lambda: cli(args),
              "block-on-devices": block_on_devices}[scenario]()
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
