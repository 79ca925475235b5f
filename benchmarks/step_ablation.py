"""What each part of the training step costs: variants of the step, alternating in one process.

    python benchmarks/step_ablation.py [--preset rsc15-xe] [--isa native|avx2] [--rounds 5] \
        [--variants NAME ...] [--data ../shared/data/rsc15_100k] \
        [--out benchmarks/results/step_ablation.json]

One fresh process (capped at `--isa`, `benchmarks/isa.py`) builds one model per variant, trains
each one epoch to compile it, then runs one `fit` epoch of each variant in turn, `--rounds`
times, and reports the median microseconds per step of each. Alternating in one process keeps
the machine's drift out of the comparison (separate processes on this VM differ by up to 1.5x).
Variants:
  - "as trained": the real step;
  - "item table not updated": the item table's gradient rows are still computed and summed
    into a table, but AdagradM's three passes over the item table (accumulator, momentum,
    weights) are skipped. A diagnostic, not a training mode (the maths is wrong): the step time
    a free item-table update would give, the bound on what a faster update can save;
  - "no momentum": `momentum=0`, one of those passes fewer (other maths: for scale only);
  - "input in memory": the real step fed from the epoch's blocks held in memory instead of the
    live `tf.data` pipeline (session-parallel steps and negative sampling): what the input costs;
  - "table gradient scattered whole": the step before the item table's gradient was scattered
    part by part (`concatenated_parts`): its concatenation of the inputs' and the scored
    columns' rows is scattered in one piece. Same maths, the same weights to the last bit;
  - "traced gradients": the step before the reset-after GRU cell and the sampled losses
    (cross-entropy, BPR-max) had written-out gradients: TensorFlow traces them (the same
    maths; other rounding in the last bits);
  - "slots-major sampled product": the step before the sampled scores' products took the
    items as their rows (`item_scores.sampled_product`): [B, H] x [H, C] forward and its
    traced gradients (the same maths; other rounding in the last bits);
  - "draws uncompiled": the input pipeline before each block's negatives were drawn by an XLA
    program: TensorFlow's own kernels (other random numbers, the same distribution).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import isa as isa_cap  # noqa: E402  (benchmarks/isa.py)
from run import (  # noqa: E402  (benchmarks/run.py; no TensorFlow)
    TRAIN_FILE,
    capped_child_parser,
    read_rsc15,
    run_capped_child,
)

VARIANTS = ("as trained", "item table not updated", "no momentum", "input in memory",
            "table gradient scattered whole", "traced gradients", "slots-major sampled product",
            "draws uncompiled")


def _skipping_optimizer(config):
    """AdagradM that sums the item tables' gradient rows (the item embedding and the item
    bias) but skips their three passes."""
    import tensorflow as tf

    from tf_gru4rec.nn.optimizers import AdagradM

    class ItemTableNotUpdated(AdagradM):
        def _masked_dense_update(self, gradient, variable, acc, mom, lr):
            grad = tf.math.unsorted_segment_sum(gradient.values, gradient.indices,
                                                variable.shape[0])
            # Keep the summed gradient alive (else XLA drops its computation) at the cost of
            # one row: the first row gets 0 * its gradient.
            padding = [[0, variable.shape[0] - 1]] + [[0, 0]] * (len(variable.shape) - 1)
            self.assign_add(variable, tf.pad(grad[:1] * 0.0, padding))

    return ItemTableNotUpdated(learning_rate=config.learning_rate, momentum=config.momentum)


def _whole_scatter_optimizer(config):
    """AdagradM as before `concatenated_parts`: an identity hides the concatenation."""
    import tensorflow as tf

    from tf_gru4rec.nn.optimizers import AdagradM

    class ScatteredWhole(AdagradM):
        def _masked_dense_update(self, gradient, *args):
            whole = tf.IndexedSlices(tf.identity(gradient.values), tf.identity(gradient.indices),
                                     gradient.dense_shape)
            return super()._masked_dense_update(whole, *args)

    return ScatteredWhole(learning_rate=config.learning_rate, momentum=config.momentum)


def _swapped_while_traced(model, swaps):
    """Make `model` trace its training block with `swaps` [(module, name, function)] set."""
    import types

    run_block = type(model)._run_block

    def _run_block(self, *args):
        saved = [getattr(module, name) for module, name, _ in swaps]
        for module, name, function in swaps:
            setattr(module, name, function)
        try:
            return run_block(self, *args)
        finally:
            for (module, name, _), function in zip(swaps, saved, strict=True):
                setattr(module, name, function)

    object.__setattr__(model, "_run_block", types.MethodType(_run_block, model))


def _slots_major_product(model):
    """Make `model` score the sampled items slots-major, as before `sampled_product`."""
    from tf_gru4rec.nn.layers import item_scores

    _swapped_while_traced(model, [(item_scores, "items_major", lambda slots, columns: False)])


def _traced_gradients(model):
    """Make `model` trace the gradients of its reset-after cell and its cross-entropy or
    BPR-max, as before they were written out: the traced forms (and the slots-major sampled
    product of that time) are swapped in while its training block is traced."""
    import tensorflow as tf

    from tf_gru4rec.nn import losses
    from tf_gru4rec.nn.layers import gru_stack, item_scores

    def traced_cell(projected, hidden, state):
        return gru_stack._reset_after_gates(projected, hidden, state, state.shape[-1])[0]

    def traced_cross_entropy(scores, column_valid):
        batch = tf.shape(scores)[0]
        valid = column_valid[None, :] > 0
        x = tf.where(valid, scores, tf.fill(tf.shape(scores), -1e30))
        positive = tf.linalg.diag_part(scores[:, :batch])
        return -losses._log_softmax_target(x, positive, tf.cast(valid, scores.dtype))

    def traced_bpr_max(scores, column_valid, bpreg=0.0):
        batch = tf.shape(scores)[0]
        mask = column_valid[None, :] * (1.0 - tf.eye(batch, tf.shape(scores)[1]))
        return losses.bpr_max(tf.linalg.diag_part(scores[:, :batch]), scores, mask, bpreg=bpreg)

    _swapped_while_traced(model, [(gru_stack, "_reset_after_gates_trained", traced_cell),
                                  (losses, "cross_entropy_over_columns", traced_cross_entropy),
                                  (losses, "bpr_max_over_columns", traced_bpr_max),
                                  (item_scores, "items_major", lambda slots, columns: False)])


def _variant(name: str, config, log):
    """(model, input source, dataset) of variant `name`."""
    import keras
    import tensorflow as tf

    from tf_gru4rec.data.input_pipeline import SessionParallelInput
    from tf_gru4rec.training import build_model

    keras.utils.set_random_seed(0)
    if name == "no momentum":
        config = config.with_overrides({"momentum": 0.0})
    source = SessionParallelInput(log, config.batch_size, n_sample=config.n_sample,
                                  sample_alpha=config.sample_alpha,
                                  steps_per_block=config.steps_per_execution)
    model = build_model(config, log.n_items, log.item_support())
    if name in ("item table not updated", "table gradient scattered whole"):
        optimizer = (_skipping_optimizer if name == "item table not updated"
                     else _whole_scatter_optimizer)(config)
        model.compile(optimizer=optimizer,
                      step_compilation="full" if config.jit_compile else None)
    if name == "traced gradients":
        _traced_gradients(model)
    if name == "slots-major sampled product":
        _slots_major_product(model)
    if name == "draws uncompiled":
        source.sampler.draw_block = source.sampler._draw
    dataset = source.dataset(blocks=True)
    if name == "input in memory":
        blocks = list(dataset)  # epoch 0's blocks
        spec = {key: tf.TensorSpec([None, *value.shape[1:]], value.dtype)
                for key, value in blocks[0].items()}
        dataset = tf.data.Dataset.from_generator(lambda: iter(blocks),
                                                 output_signature=spec).prefetch(2)
    return model, source, dataset


def child(args) -> dict:
    import tensorflow as tf  # noqa: F401  (before capping YNNPACK)

    isa_info = isa_cap.apply_in_child()
    import keras

    from tf_gru4rec.config import load_preset

    config = load_preset(args.preset)
    log, _ = read_rsc15(args.data)

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    names = ["as trained", *(v for v in args.variants or VARIANTS if v != "as trained")]
    variants = {name: _variant(name, config, log) for name in names}
    for model, source, dataset in variants.values():  # compile; epoch 0 for every variant
        model.fit(dataset, epochs=1, verbose=0, callbacks=[source.callback()])
    steps = variants["as trained"][1].steps_per_epoch(0)
    timer, us = EpochTimer(), {name: [] for name in names}
    for _ in range(args.rounds):
        for name, (model, _, dataset) in variants.items():
            model.fit(dataset, epochs=1, verbose=0, callbacks=[timer])
            us[name].append(timer.seconds * 1e6 / steps)
    return {"preset": args.preset, "isa": args.isa, **isa_info, "steps_per_epoch": steps,
            "us_per_step": us,
            "median_us_per_step": {name: statistics.median(v) for name, v in us.items()}}


def main() -> None:
    parser = capped_child_parser(__doc__, "step_ablation.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                        help="variants to alternate (default: all); 'as trained' is always one")
    args = parser.parse_args()
    if args.child:
        sys.stdout.write("RESULT " + json.dumps(child(args)) + "\n")
        return
    if not os.path.exists(os.path.join(args.data, TRAIN_FILE)):
        sys.exit(f"{os.path.join(args.data, TRAIN_FILE)} not found: give --data")
    result = run_capped_child(__file__, args.isa, args.out)
    base = result["median_us_per_step"]["as trained"]
    print(f"{args.preset} ({args.isa}, cores {result['affinity']}), median of "
          f"{args.rounds} alternating epochs:")
    for name, us in result["median_us_per_step"].items():
        print(f"  {name:24s} {us:7.0f} us/step ({us / base:.2f}x), "
              f"epochs: {' / '.join(f'{v:.0f}' for v in result['us_per_step'][name])}")


if __name__ == "__main__":
    main()
