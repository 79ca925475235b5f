"""Serving latency and throughput of an exported GRU4Rec (random weights; 50k items).

For each GRU size (100 and 1000 units by default) the model is exported once, then:
  - in-process: the `serving_default` (stateful step) and `step` (stateless) signatures run
    on TF Serving's loading path (`SessionBundle`) at batch 1, p50/p99 over a bounded number
    of calls;
  - gRPC: the same stateful step through the development server on loopback (127.0.0.1),
    one client, batch 1;
  - throughput: 8 client threads, each with its own channel and sessions, batch 1, for a fixed
    time; requests per second and latency percentiles under that load.
Every loop is bounded both in calls and in seconds.

  PYTHONPATH=. python benchmarks/serving_latency.py [--units 100 1000] [--items 50000]

Writes benchmarks/results/serving_latency.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_gru4rec.config import TrainConfig  # noqa: E402
from tf_gru4rec.data.vocabulary import ItemVocabulary  # noqa: E402
from tf_gru4rec.serving.bundle import SessionBundle  # noqa: E402
from tf_gru4rec.serving.client import PredictionClient  # noqa: E402
from tf_gru4rec.serving.dev_server import DevServer  # noqa: E402
from tf_gru4rec.serving.export import export_model  # noqa: E402
from tf_gru4rec.training import build_model  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "serving_latency.json")
N_SESSIONS = 200  # sessions cycled through by each measuring loop


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "calls": int(len(ms))}


def timed_loop(call, max_calls: int, max_seconds: float, warmup: int = 20) -> dict:
    """Time `call(i)` for i = 0, 1, ... until `max_calls` calls or `max_seconds` pass."""
    for i in range(warmup):
        call(i)
    times, deadline = [], time.perf_counter() + max_seconds
    for i in range(max_calls):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
        if start > deadline:
            break
    return percentiles(times)


def export_random(units: int, n_items: int, base: str) -> str:
    config = TrainConfig(layers=[units], batch_size=32, n_sample=0, jit_compile=False, seed=0)
    support = np.random.default_rng(0).integers(1, 1000, n_items)
    model = build_model(config, n_items, item_support=support)
    vocabulary = ItemVocabulary(np.arange(n_items, dtype=np.int64) + 100_000_000)
    return export_model(model, vocabulary, base, k=20)


def in_process(path: str, n_items: int, units: int, max_calls: int, max_seconds: float) -> dict:
    """Batch-1 signatures on TF Serving's loading path (`SessionBundle`)."""
    bundle = SessionBundle(path)
    rng = np.random.default_rng(1)
    items = (rng.integers(0, n_items, 4096) + 100_000_000).astype(str).astype(object)

    def stateful(i):
        bundle.run("serving_default", {"session_id": np.asarray([f"s{i % N_SESSIONS}"], object),
                                       "item_id": items[i % len(items): i % len(items) + 1]})

    state = np.zeros((1, units), np.float32)

    def stateless(i):
        bundle.run("step", {"item_id": items[i % len(items): i % len(items) + 1],
                            "state": state})

    return {"stateful": timed_loop(stateful, max_calls, max_seconds),
            "stateless": timed_loop(stateless, max_calls, max_seconds)}


def over_grpc(target: str, n_items: int, max_calls: int, max_seconds: float) -> dict:
    rng = np.random.default_rng(2)
    items = [str(x) for x in rng.integers(0, n_items, 4096) + 100_000_000]
    with PredictionClient(target, "gru4rec", timeout=5.0) as client:
        return timed_loop(lambda i: client.click([f"g{i % N_SESSIONS}"],
                                                 [items[i % len(items)]]),
                          max_calls, max_seconds)


def throughput(target: str, n_items: int, n_clients: int, seconds: float,
               max_calls_per_client: int) -> dict:
    """n_clients threads sending batch-1 stateful clicks for `seconds`."""
    barrier = threading.Barrier(n_clients + 1)
    times: list[list[float]] = [[] for _ in range(n_clients)]
    errors: list[str] = []

    def worker(w):
        rng = np.random.default_rng(100 + w)
        items = [str(x) for x in rng.integers(0, n_items, 1024) + 100_000_000]
        with PredictionClient(target, "gru4rec", timeout=5.0) as client:
            client.click([f"warm-{w}"], [items[0]])
            barrier.wait()
            deadline = time.perf_counter() + seconds
            for i in range(max_calls_per_client):
                start = time.perf_counter()
                try:
                    client.click([f"t{w}-{i % N_SESSIONS}"], [items[i % len(items)]])
                except Exception as error:  # report, do not hang the benchmark
                    errors.append(str(error))
                    return
                times[w].append(time.perf_counter() - start)
                if time.perf_counter() > deadline:
                    break

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(n_clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join(seconds + 30)
    elapsed = time.perf_counter() - start
    flat = [t for per in times for t in per]
    return {"clients": n_clients, "seconds": elapsed, "requests": len(flat),
            "requests_per_second": len(flat) / elapsed, "errors": errors[:3],
            **percentiles(flat)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--calls", type=int, default=2000, help="max timed calls per loop")
    parser.add_argument("--seconds", type=float, default=20.0, help="max seconds per loop")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--throughput-seconds", type=float, default=10.0)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level="WARNING")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for units in args.units:
            path = export_random(units, args.items, os.path.join(tmp, f"u{units}"))
            local = in_process(path, args.items, units, args.calls, args.seconds)
            with DevServer(os.path.dirname(path), port=0, max_workers=max(8, args.clients),
                           warmup=True) as server:
                remote = over_grpc(server.target, args.items, args.calls, args.seconds)
                load = throughput(server.target, args.items, args.clients,
                                  args.throughput_seconds, max_calls_per_client=100_000)
            rows.append({"units": units, "items": args.items, "k": 20,
                         "in_process_stateful": local["stateful"],
                         "in_process_stateless": local["stateless"], "grpc": remote,
                         "throughput": load})
    result = {
        "benchmark": "serving_latency", "tensorflow": tf.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor(),
                    "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]},
        "goals": {"in_process_p50_ms": 1.0, "grpc_p50_ms": 3.0}, "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [
        f"Serving latency, batch 1, {result['rows'][0]['items']:,} items, top-20 "
        f"(TensorFlow {result['tensorflow']}, {result['machine']['cpus']} CPUs"
        f"{', GPU' if result['machine']['gpus'] else ''}):",
        "",
        "| units | in-process stateful p50 / p99 ms | in-process stateless p50 / p99 ms | "
        "gRPC (dev server) p50 / p99 ms | 8 clients: req/s, p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        a, b, g, t = (row["in_process_stateful"], row["in_process_stateless"], row["grpc"],
                      row["throughput"])
        lines.append(f"| {row['units']} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} | "
                     f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {g['p50_ms']:.2f} / "
                     f"{g['p99_ms']:.2f} | {t['requests_per_second']:.0f}, {t['p50_ms']:.2f} / "
                     f"{t['p99_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
