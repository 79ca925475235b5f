"""Multi-worker training: events/s with 1 and 2 workers here, and the bytes all-reduced per step.

1. Speed, side by side, on the same data and preset, each in a fresh process, the runs of
   each repeat alternating (`--repeats`), events/s as the chief reports them (training time,
   tracing and the first epoch included):
     - keras fit:        `model.fit` on `SessionParallelInput.dataset(blocks=True)` (the
                         notebook path; XLA blocks of steps);
     - loop, 1 process:  `tf-gru4rec train`, the training loop of every scale on one device;
     - loop, 1 worker:   the same with TF_CONFIG of one worker (MultiWorkerMirroredStrategy
                         of one replica: nothing to synchronise, the one-replica path);
     - loop, 2 workers:  `--workers 2` on 127.0.0.1.
   Run it under `taskset` to pin every process (the 2 workers then share the given cores).
2. Bytes per training step, per replica, at 10k / 100k / 1M items: a replica's real gradients
   (rsc15-xe preset: 100 units, B = 32, 2048 extra negatives, constrained embedding) are
   computed for one step and measured: dense tensors are all-reduced (ring: each worker sends
   and receives 2 (N-1)/N of them), the item table's row-sparse gradients (`IndexedSlices`)
   are all-gathered (each worker receives the N-1 other replicas' rows). For comparison: the
   item table all-reduced densely.
3. Projection for N workers on a 10 Gbit/s network: the transfer time per step of those bytes
   (bandwidth only; latency per collective and overlap ignored), against the compute time of
   one step measured here (one replica: forward and backward pass as one XLA program, then the
   AdagradM update, as in the distributed loop).

  PYTHONPATH=. python benchmarks/distributed.py [--data DIR] [--epochs 2] [--mirrored]

Writes benchmarks/results/distributed.json (or --out) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results", "distributed.json")
GBIT = 1e9 / 8  # bytes per second of 1 Gbit/s
WORKERS = (2, 4, 8, 16, 32)


def train_speed(train_path: str, test_path: str, preset: str, epochs: int, workdir: str,
                label: str, extra_args=(), env_extra=None) -> dict:
    out = os.path.join(workdir, label.replace(" ", "-").replace(",", ""))
    command = [sys.executable, "-m", "tf_gru4rec.cli", "-v", "WARNING", "train", "--train",
               train_path, "--test", test_path, "--out", out, "--preset", preset, "--set",
               f"n_epochs={epochs}", *extra_args]
    env = {**os.environ, "PYTHONPATH": REPO, **(env_extra or {})}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: {done.stderr[-3000:]}")
    metrics = json.loads(done.stdout)
    return {"label": label, "events_per_second": metrics["train_events_per_second"],
            "train_seconds": metrics["train_seconds"], "wall_seconds":
            time.perf_counter() - start, "recall@20": metrics["recall@20"],
            "mrr@20": metrics["mrr@20"], "replicas": metrics.get("replicas", 1)}


FIT_SNIPPET = """
import json, sys, time
from tf_gru4rec.config import load_preset
from tf_gru4rec.data.io import read_events
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.data.input_pipeline import SessionParallelInput
from tf_gru4rec.training import build_model
import keras
train_path, preset, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = load_preset(preset).replace(n_epochs=epochs)
events = read_events(train_path)
log = SessionLog.from_events(events, ItemVocabulary.from_events(events["ItemId"].to_numpy()))
keras.utils.set_random_seed(config.seed)
source = SessionParallelInput(log, config.batch_size, n_sample=config.n_sample,
                              sample_alpha=config.sample_alpha, seed=config.seed,
                              steps_per_block=config.steps_per_execution)
model = build_model(config, log.n_items, log.item_support())
start = time.perf_counter()
model.fit(source.dataset(blocks=True), epochs=epochs, callbacks=[source.callback()], verbose=0)
seconds = time.perf_counter() - start
print(json.dumps({"train_seconds": seconds,
                  "train_events_per_second": log.n_predictions * epochs / seconds}))
"""


def fit_speed(train_path: str, preset: str, epochs: int) -> dict:
    """Keras `model.fit` in a fresh process (no evaluation)."""
    env = {**os.environ, "PYTHONPATH": REPO}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", FIT_SNIPPET, train_path, preset, str(epochs)],
                          capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"keras fit: {done.stderr[-3000:]}")
    metrics = json.loads(done.stdout.splitlines()[-1])
    return {"label": "keras fit", "events_per_second": metrics["train_events_per_second"],
            "train_seconds": metrics["train_seconds"],
            "wall_seconds": time.perf_counter() - start, "recall@20": None, "mrr@20": None,
            "replicas": 1}


def step_bytes(n_items: int, preset: str, n_replicas: int = 2) -> dict:
    """One replica's gradients for one step (B / n_replicas slots), measured; and the time of
    that step's compute here."""
    import numpy as np
    import tensorflow as tf

    from tf_gru4rec.config import load_preset
    from tf_gru4rec.training import build_model

    config = load_preset(preset)
    local = config.batch_size // n_replicas
    model = build_model(config.replace(batch_size=local), n_items, np.ones(n_items))
    model.optimizer.static_shapes = False
    rng = np.random.default_rng(0)
    step = {"inputs": tf.constant(rng.integers(0, n_items, local), tf.int32),
            "targets": tf.constant(rng.integers(0, n_items, local), tf.int32),
            "reset": tf.zeros(local, tf.bool), "valid": tf.ones(local, tf.bool),
            "negatives": tf.constant(rng.integers(0, n_items, config.n_sample), tf.int32)}
    states = [tf.zeros((local, h)) for h in model.layer_sizes]
    grads = model.forward_backward(step, states)[0]
    dense = sparse = dense_equivalent = 0
    for grad, variable in zip(grads, model.trainable_variables, strict=True):
        if isinstance(grad, tf.IndexedSlices):
            sparse += grad.values.numpy().nbytes + grad.indices.numpy().nbytes
            dense_equivalent += int(np.prod(variable.shape)) * 4
        else:
            dense += grad.numpy().nbytes
            dense_equivalent += grad.numpy().nbytes

    forward_backward = tf.function(model.forward_backward, jit_compile=config.jit_compile)

    @tf.function
    def train_step():  # as a replica's step of the distributed loop
        g = forward_backward(step, states)[0]
        model.optimizer.apply(g, model.trainable_variables)

    train_step()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            train_step()
        times.append((time.perf_counter() - start) / 20)
    return {"n_items": n_items, "replica_slots": local, "n_sample": config.n_sample,
            "units": config.layers[-1], "dense_bytes": dense, "sparse_bytes": sparse,
            "dense_table_bytes": dense_equivalent, "step_compute_ms": 1e3 * min(times)}


def projection(row: dict, gbit: float = 10.0) -> dict:
    """Bytes each worker receives per step, and their transfer time at `gbit`, for N workers
    (global batch fixed: each of N replicas holds B/N slots and its own negatives; the
    replica's sparse rows are measured at N = 2 and scaled by its rows: 2 B/N + S)."""
    out = {}
    b_global = row["replica_slots"] * 2
    rows_at_2 = 2 * row["replica_slots"] + row["n_sample"]
    for n in WORKERS:
        rows = 2 * (b_global // n) + row["n_sample"]
        sparse = row["sparse_bytes"] * rows / rows_at_2 * (n - 1)
        dense = row["dense_bytes"] * 2 * (n - 1) / n
        table = row["dense_table_bytes"] * 2 * (n - 1) / n
        out[n] = {"sparse_all_gather_bytes": sparse + dense,
                  "ms": 1e3 * (sparse + dense) / (gbit * GBIT),
                  "dense_table_ms": 1e3 * table / (gbit * GBIT)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="directory with train.tsv / test.tsv (default: the "
                                       "bundled synthetic log, generated)")
    parser.add_argument("--preset", default="rsc15-xe")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeat the speed runs, alternating them, this many times")
    parser.add_argument("--speed-only", action="store_true", help="skip the bytes per step")
    parser.add_argument("--mirrored", action="store_true",
                        help="also time `train --mirrored` (all of this host's GPUs)")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        data = args.data
        if not data:
            data = os.path.join(workdir, "data")
            subprocess.run([sys.executable, "-m", "tf_gru4rec.cli", "-v", "WARNING", "generate",
                            "--out", data], check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": REPO})
        train_path, test_path = (os.path.join(data, f"{n}.tsv") for n in ("train", "test"))
        from tf_gru4rec.training.workers import local_cluster

        one_worker = json.dumps(local_cluster(1)[0])
        speed = []
        for repeat in range(args.repeats):  # alternating: a slow spell hits every run
            runs = [
                fit_speed(train_path, args.preset, args.epochs),
                train_speed(train_path, test_path, args.preset, args.epochs, workdir,
                            "loop, 1 process"),
                train_speed(train_path, test_path, args.preset, args.epochs, workdir,
                            "loop, 1 worker", env_extra={"TF_CONFIG": one_worker}),
                train_speed(train_path, test_path, args.preset, args.epochs, workdir,
                            "loop, 2 workers", ["--workers", "2"]),
            ]
            if args.mirrored:
                runs.append(train_speed(train_path, test_path, args.preset, args.epochs,
                                        workdir, "loop, --mirrored", ["--mirrored"]))
            for run in runs:
                run["repeat"] = repeat
                run["vs_fit"] = run["events_per_second"] / runs[0]["events_per_second"]
                print(f"repeat {repeat}: {run['label']}: {run['events_per_second']:.0f} "
                      f"events/s ({run['vs_fit']:.2f} x fit)", file=sys.stderr)
            speed += runs
    sizes = [] if args.speed_only else [step_bytes(n, args.preset) for n in args.items]
    for row in sizes:
        row["projection_10gbit"] = projection(row)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import machine  # benchmarks/run.py; imports no TensorFlow

    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "cpu_affinity": sorted(os.sched_getaffinity(0)), "command": "PYTHONPATH=. python "
              "benchmarks/distributed.py " + " ".join(sys.argv[1:]), "preset": args.preset,
              "epochs": args.epochs, "data": args.data or "bundled synthetic (generate)",
              "speed": speed, "bytes": sizes}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print("| repeat | run | events/s | x fit | train s | Recall@20 | MRR@20 |\n"
          "|---|---|---|---|---|---|---|")
    for row in speed:
        accuracy = ("| - | - |" if row["recall@20"] is None else
                    f"| {row['recall@20']:.4f} | {row['mrr@20']:.4f} |")
        print(f"| {row['repeat']} | {row['label']} | {row['events_per_second']:.0f} | "
              f"{row['vs_fit']:.2f} | {row['train_seconds']:.1f} " + accuracy)
    print("\n| items | dense grads | sparse rows (1 replica) | item table dense | step compute |"
          "\n|---|---|---|---|---|")
    for row in sizes:
        print(f"| {row['n_items']:,} | {row['dense_bytes'] / 1e3:.0f} kB | "
              f"{row['sparse_bytes'] / 1e3:.0f} kB | {row['dense_table_bytes'] / 1e6:.1f} MB | "
              f"{row['step_compute_ms']:.1f} ms |")
    print("\nProjection, 10 Gbit/s, bytes each worker receives per step (ms):\n")
    print("| items | " + " | ".join(f"N={n}" for n in WORKERS) + " |\n|---|"
          + "---|" * len(WORKERS))
    for row in sizes:
        cells = [f"{p['sparse_all_gather_bytes'] / 1e6:.2f} MB ({p['ms']:.2f} ms; dense table "
                 f"{p['dense_table_ms']:.0f} ms)" for p in row["projection_10gbit"].values()]
        print(f"| {row['n_items']:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
