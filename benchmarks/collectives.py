"""What one training step's synchronisation costs with 2 workers here, against the step itself.

    PYTHONPATH=. python benchmarks/collectives.py [--preset rsc15-xe] [--items 2933] \
        [--repeats 3] [--out benchmarks/results/collectives.json]

Two worker processes on 127.0.0.1 (`MultiWorkerMirroredStrategy`, ring collectives over gRPC,
as `tf-gru4rec train --workers 2` runs) exchange, for each of 50 steps in a `tf.function`, the
tensors the distributed loop exchanges for one step of the preset (B / 2 slots per replica):
  - "rows": the item tables' row-sparse gradients, all-gathered (the rows' values and their
    indices: 2 (B / 2) + n_sample rows of each item table);
  - "dense": the GRU's dense gradients, all-reduced (one collective per variable, as Keras);
  - "both": both, as one step does.
Nothing is computed: the time per step is the synchronisation alone, the least a step of the
distributed loop can take on top of its compute, whatever runs the compute. For comparison the
same processes time one steady step of Keras `fit` (B slots, one process, XLA blocks) with the
same preset and catalogue size, first, before the collectives start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results", "collectives.json")
STEPS = 50
MODES = ("rows", "dense", "both")


def gradient_shapes(preset: str, n_items: int, n_replicas: int = 2):
    """(row-sparse: [(rows, row width)] per item table, dense: [shape] per GRU variable) of one
    replica's step."""
    import numpy as np

    from tf_gru4rec.config import load_preset
    from tf_gru4rec.training import build_model

    config = load_preset(preset)
    local = config.batch_size // n_replicas
    model = build_model(config.replace(batch_size=local), n_items, np.ones(n_items))
    sparse, dense = [], []
    gathered = 2 * local + config.n_sample
    for variable in model.trainable_variables:
        shape = tuple(variable.shape)
        if shape[0] == n_items:
            sparse.append((gathered, int(np.prod(shape[1:], dtype=int))))
        else:
            dense.append(shape)
    return sparse, dense


def fit_step_us(preset: str, n_items: int) -> float:
    """Microseconds of one steady `fit` step (B slots) on a synthetic log of `n_items`."""
    from run import fit_setup  # benchmarks/run.py

    from tf_gru4rec.config import load_preset
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.synthetic import SyntheticConfig, generate_sessions
    from tf_gru4rec.data.vocabulary import ItemVocabulary

    events = generate_sessions(SyntheticConfig(n_items=n_items, n_sessions=8000, seed=0))
    log = SessionLog.from_events(events, ItemVocabulary.from_events(events["ItemId"].to_numpy()))
    source, model, dataset = fit_setup(load_preset(preset), log)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[source.callback()])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / source.steps_per_epoch() * 1e6


def worker(args) -> None:
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    sparse, dense = gradient_shapes(args.preset, args.items)
    rows = [(tf.random.normal([n, width]), tf.range(n)) for n, width in sparse]
    grads = [tf.random.normal(shape) for shape in dense]
    result = {"sparse": sparse, "dense": [list(s) for s in dense]}
    result["bytes_rows"] = sum(4 * n * (width + 1) for n, width in sparse)
    result["bytes_dense"] = sum(4 * int(tf.size(g)) for g in grads)

    def exchange(mode, carry):
        context = tf.distribute.get_replica_context()
        if mode in ("rows", "both"):
            for values, indices in rows:  # depends on the last step: no overlap across steps
                gathered = context.all_gather(values + carry, axis=0)
                gathered_indices = context.all_gather(indices, axis=0)
                carry += gathered[0, 0] * 0 + tf.cast(gathered_indices[0], tf.float32) * 0
        if mode in ("dense", "both"):
            summed = context.all_reduce("sum", [g + carry for g in grads])
            carry += summed[0][(0,) * len(dense[0])] * 0
        return carry

    for mode in MODES:
        @tf.function
        def block(mode=mode):
            carry = strategy.run(lambda: tf.constant(0.0))
            for _ in tf.range(STEPS):
                carry = strategy.run(exchange, args=(mode, carry))
            return carry

        block()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            block()
            times.append(time.perf_counter() - start)
        result[f"{mode}_ms_per_step"] = statistics.median(times) / STEPS * 1e3
        result[f"{mode}_ms_per_step_all"] = [t / STEPS * 1e3 for t in times]
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="rsc15-xe")
    parser.add_argument("--items", type=int, default=2933, help="catalogue size (the RSC15 "
                        "sample's by default; the bytes per step do not depend on it)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from run import machine  # noqa: E402  (benchmarks/run.py)

    step = fit_step_us(args.preset, args.items)
    from tf_gru4rec.training.workers import local_cluster

    processes = []
    for tf_config in local_cluster(2):
        env = {**os.environ, "PYTHONPATH": REPO, "TF_CONFIG": json.dumps(tf_config)}
        processes.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--preset", args.preset,
             "--items", str(args.items), "--repeats", str(args.repeats)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [p.communicate(timeout=1800) for p in processes]
    for p, (_, err) in zip(processes, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(err[-3000:])
    chief = json.loads(outputs[0][0].strip().splitlines()[-1])
    record = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": " ".join(sys.argv), "preset": args.preset, "items": args.items,
              "fit_step_us": step, **chief}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print("| exchange per step | bytes per replica | ms per step |\n|---|---|---|")
    sizes = {"rows": chief["bytes_rows"], "dense": chief["bytes_dense"],
             "both": chief["bytes_rows"] + chief["bytes_dense"]}
    for mode in MODES:
        print(f"| {mode} | {sizes[mode] / 1e3:,.0f} kB | {chief[f'{mode}_ms_per_step']:.2f} |")
    print(f"\none steady `fit` step of {args.preset} (one process, B slots): {step / 1e3:.2f} ms")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
