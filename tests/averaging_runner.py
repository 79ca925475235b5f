"""One worker of a 2-worker cluster (TF_CONFIG set by test_distributed.py) training with
sync="block" or "overlap"; the chief then replays both replicas by hand. Prints one JSON object.

  TF_CONFIG=... python averaging_runner.py [block] [overlap]   (default: both, one after the other)

The replay: two plain models of B / 2 slots each train their replica's blocks with
`train_block` (fit's program). "block": after every block their weights and optimizer
accumulators and momentums are replaced by the mean of both, weighted by the real steps each
ran. "overlap": each replica keeps training, and after the next block becomes that mean (of
the values both had after the block before) plus its own change since. Dropout is on: replica
r draws block k's masks (k counted over the whole run) from the run model's initial seed
state + [r SEED_STRIDE, k BLOCK_DRAWS], so consecutive blocks and the two replicas draw
different masks.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main() -> dict:
    from tf_gru4rec.training.distributed import make_strategy

    strategy = make_strategy("multi-worker")  # before any other TensorFlow op
    return {mode: train_and_replay(strategy, mode)
            for mode in (sys.argv[1:] or ["block", "overlap"])}


def train_and_replay(strategy, mode: str) -> dict:
    import keras
    from replay_setup import replay_log_and_config

    from tf_gru4rec.data.distributed_input import TrainingSource
    from tf_gru4rec.training import build_model
    from tf_gru4rec.training.averaging import BLOCK_DRAWS, SEED_STRIDE, seed_states
    from tf_gru4rec.training.distributed import DistributedTrainer, replica_streams

    log, config = replay_log_and_config(n_epochs=2, sync=mode, dropout_p_hidden=0.25,
                                        dropout_p_embed=0.1)
    keras.utils.set_random_seed(config.seed)
    source = TrainingSource(log=log)
    trainer = DistributedTrainer(config, source, strategy)
    initial = [np.asarray(v.value) for v in trainer.model.trainable_variables]
    initial_seeds = [np.asarray(v.value) for v in seed_states(trainer.model)]
    assert initial_seeds, "the replay needs dropout"
    history = trainer.fit()
    digests = trainer.gathered_digests()
    if strategy.cluster_resolver.task_id != 0:
        return {"digests": digests}

    replicas = [build_model(config.replace(batch_size=4), log.n_items, log.item_support())
                for _ in range(2)]
    for model in replicas:
        model.optimizer.build(model.trainable_variables)
        for variable, value in zip(model.trainable_variables, initial, strict=True):
            variable.assign(value)

    def averaged(model):
        state = [v for v in model.optimizer.variables
                 if v.name.endswith("_accumulator") or v.name.endswith("_momentum")]
        return list(model.trainable_variables) + state

    def weighted_mean(values, weights):
        if not sum(weights):
            return None
        return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)

    def block_seeds(block_index):
        for replica, model in enumerate(replicas):
            for variable, seed in zip(seed_states(model), initial_seeds, strict=True):
                offset = np.array([replica * SEED_STRIDE, block_index * BLOCK_DRAWS])
                variable.assign((seed + offset).astype(seed.dtype))

    streams = replica_streams(source, config, [0, 1], 2)
    losses, steps, drift, block_index = [], [], 0.0, 0
    for epoch in range(config.n_epochs):
        iterators = [iter(stream.dataset(epoch)) for stream in streams]
        loss_sum = n_events = n_steps = 0.0
        sent = None  # overlap: (each variable's values on both replicas, weights, more)
        while True:
            blocks = [next(it) for it in iterators]
            weights = [int(b["n_real"]) for b in blocks]
            more = any(bool(b["more"]) for b in blocks)
            block_seeds(block_index)
            block_index += 1
            for model, block in zip(replicas, blocks, strict=True):
                totals = np.asarray(model.train_block(block, block["n_real"]))
                loss_sum, n_events = loss_sum + totals[0], n_events + totals[1]
            pairs = list(zip(*(averaged(m) for m in replicas), strict=True))
            now = [[np.asarray(v.value, np.float64) for v in pair] for pair in pairs]
            drift = max([drift] + [float(np.max(np.abs(a - b))) for a, b in now])
            if mode == "block":
                n_steps += max(weights)
                for pair, values in zip(pairs, now, strict=True):
                    mean = weighted_mean(values, weights)
                    for variable in pair if mean is not None else ():
                        variable.assign(mean.astype(np.float32))
                if not more:
                    break
                continue
            if sent is not None:  # the previous block's mean, applied one block late
                before, sent_weights, sent_more = sent
                n_steps += max(sent_weights)
                for pair, values, old in zip(pairs, now, before, strict=True):
                    mean = weighted_mean(old, sent_weights)
                    for variable, value, value_then in zip(pair, values, old, strict=True):
                        variable.assign((mean + (value - value_then)).astype(np.float32))
                if not sent_more:
                    break
            sent = ([[np.asarray(v.value, np.float64) for v in pair] for pair in pairs],
                    weights, more)
        losses.append(float(loss_sum / n_events))
        steps.append(int(n_steps))
    diffs = {v.path: float(np.max(np.abs(np.asarray(v.value) - np.asarray(w.value))))
             for v, w in zip(averaged(trainer.model), averaged(replicas[0]), strict=True)}
    return {"digests": digests, "diffs": diffs, "drift": drift, "sync": trainer.sync,
            "moved": float(np.max(np.abs(np.asarray(replicas[0].trainable_variables[0].value)
                                         - initial[0]))),
            "loss": history["loss"], "replay_loss": losses,
            "steps": history["steps"], "replay_steps": steps}


if __name__ == "__main__":
    sys.stdout.write("RESULT " + json.dumps(main()) + "\n")
