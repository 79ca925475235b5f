"""Serving throughput on TF Serving's loading path, with and without TF Serving's batching.

For each catalogue size and GRU size, a fresh process exports a model with random weights,
loads it with the session-based loader (`SessionBundle`, as TF Serving does) and runs 1, 8
and 32 client threads that each send batch-1 stateful clicks (`serving_default`) for a fixed
time:
  - unbatched: every request is its own `Session.run`, concurrently (TF Serving without
    `--enable_batching`);
  - batched: requests go through an emulation of TF Serving's batching scheduler with the
    parameters of `serving/batching_parameters.txt` (a batch closes at `max_batch_size` rows
    or `batch_timeout_micros` after its first request; `num_batch_threads` batches run at
    once; rows are concatenated in arrival order and the outputs split back).
Reports requests/s and p50/p99 latency, the export's size on disk and the process's resident
memory after loading. Every loop is bounded in time.

  PYTHONPATH=. python benchmarks/serving_throughput.py [--items 50000 1000000] [--units 100 1000]

Writes benchmarks/results/serving_throughput.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results", "serving_throughput.json")
BATCHING = os.path.join(REPO, "serving", "batching_parameters.txt")


def batching_parameters(path: str = BATCHING) -> dict:
    """The scalar fields of a BatchingParameters text proto (`name { value: N }`)."""
    with open(path) as f:
        text = f.read()
    return {name: int(value) for name, value in
            re.findall(r"^(\w+)\s*\{\s*value:\s*(\d+)\s*\}", text, flags=re.M)}


class BatchingScheduler:
    """TF Serving's basic batching scheduler, emulated in front of one signature.

    `submit(inputs)` (numpy arrays with rows first) returns a future of the outputs for
    those rows. A batch takes queued requests in arrival order until adding the next would
    pass `max_batch_size` rows, or until `batch_timeout_micros` after its first request;
    `num_batch_threads` batches run at once.
    """

    def __init__(self, bundle, signature: str, max_batch_size: int, batch_timeout_micros: int,
                 num_batch_threads: int, **_):
        self.bundle, self.signature = bundle, signature
        self.max_rows = max_batch_size
        self.timeout = batch_timeout_micros / 1e6
        self.pool = concurrent.futures.ThreadPoolExecutor(num_batch_threads)
        self.slots = threading.Semaphore(num_batch_threads)
        self.queue: list = []
        self.cond = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._form_batches, daemon=True)
        self.thread.start()

    def submit(self, inputs: dict) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        with self.cond:
            self.queue.append((inputs, future, time.perf_counter()))
            self.cond.notify()
        return future

    def _form_batches(self):
        while True:
            with self.cond:
                while not self.queue and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    return
                deadline = self.queue[0][2] + self.timeout
                while (sum(len(next(iter(t[0].values()))) for t in self.queue) < self.max_rows
                       and time.perf_counter() < deadline and not self.stopped):
                    self.cond.wait(max(0.0, deadline - time.perf_counter()))
                batch, rows = [], 0
                while self.queue:
                    n = len(next(iter(self.queue[0][0].values())))
                    if batch and rows + n > self.max_rows:
                        break
                    batch.append(self.queue.pop(0))
                    rows += n
            self.slots.acquire()
            self.pool.submit(self._run, batch)

    def _run(self, batch):
        try:
            import numpy as np

            sizes = [len(next(iter(inputs.values()))) for inputs, _, _ in batch]
            merged = {key: np.concatenate([inputs[key] for inputs, _, _ in batch])
                      for key in batch[0][0]}
            outputs = self.bundle.run(self.signature, merged)
            start = 0
            for (_, future, _), n in zip(batch, sizes, strict=True):
                future.set_result({k: v[start:start + n] for k, v in outputs.items()})
                start += n
        except Exception as error:  # hand the error to every waiting client
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
        finally:
            self.slots.release()

    def close(self):
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join(5)
        self.pool.shutdown(wait=True)


def run_clients(call, n_clients: int, seconds: float, n_items: int) -> dict:
    """n_clients threads each sending batch-1 stateful clicks through `call` for `seconds`."""
    import numpy as np

    barrier = threading.Barrier(n_clients + 1)
    times: list[list[float]] = [[] for _ in range(n_clients)]
    errors: list[str] = []

    def worker(w):
        rng = np.random.default_rng(w)
        items = (rng.integers(0, n_items, 512) + 100_000_000).astype(str).astype(object)
        barrier.wait()
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                call({"session_id": np.asarray([f"c{w}-{i % 100}"], dtype=object),
                      "item_id": items[i % len(items): i % len(items) + 1]})
            except Exception as error:  # report, do not hang the benchmark
                errors.append(str(error)[:200])
                return
            times[w].append(time.perf_counter() - start)
            i += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True)
               for w in range(n_clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - start
    flat = np.asarray([t for per in times for t in per]) * 1e3
    return {"clients": n_clients, "requests": int(len(flat)),
            "requests_per_second": len(flat) / elapsed,
            "p50_ms": float(np.percentile(flat, 50)) if len(flat) else None,
            "p99_ms": float(np.percentile(flat, 99)) if len(flat) else None,
            "errors": errors[:3]}


def measure(n_items: int, units: int, clients: list[int], seconds: float) -> dict:
    """In this (fresh) process: export, load, and run the client loads."""
    import numpy as np

    from tf_gru4rec.config import TrainConfig
    from tf_gru4rec.data.vocabulary import ItemVocabulary
    from tf_gru4rec.serving.bundle import SessionBundle
    from tf_gru4rec.serving.export import export_model
    from tf_gru4rec.training import build_model

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(layers=[units], batch_size=32, n_sample=0, jit_compile=False,
                             seed=0)
        model = build_model(config, n_items, item_support=np.arange(n_items) + 1)
        path = export_model(model, ItemVocabulary(np.arange(n_items, dtype=np.int64)
                                                  + 100_000_000), os.path.join(tmp, "m"),
                            k=20, session_capacity=1_000_000)
        del model
        export_bytes = sum(os.path.getsize(os.path.join(root, name))
                           for root, _, names in os.walk(path) for name in names)
        bundle = SessionBundle(path)
        bundle.warmup()
        rss_mb = _rss_mb()
        result = {"items": n_items, "units": units, "export_mb": export_bytes / 1e6,
                  "rss_after_load_mb": rss_mb, "unbatched": [], "batched": []}
        for n in clients:
            result["unbatched"].append(run_clients(
                lambda inputs: bundle.run("serving_default", inputs), n, seconds, n_items))
        scheduler = BatchingScheduler(bundle, "serving_default", **batching_parameters())
        for n in clients:
            result["batched"].append(run_clients(
                lambda inputs: scheduler.submit(inputs).result(timeout=60), n, seconds,
                n_items))
        scheduler.close()
        bundle.close()
    return result


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[50_000, 1_000_000])
    parser.add_argument("--units", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=8.0, help="per client load")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--measure", nargs=2, type=int, metavar=("ITEMS", "UNITS"),
                        help=argparse.SUPPRESS)  # internal: one configuration, JSON on stdout
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure, args.clients, args.seconds)))
        return 0
    rows = []
    for n_items in args.items:
        for units in args.units:
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--measure", str(n_items),
                 str(units), "--seconds", str(args.seconds), "--clients",
                 *map(str, args.clients)],
                capture_output=True, text=True, timeout=3600,
                env=dict(os.environ, PYTHONPATH=REPO))
            if done.returncode != 0:
                rows.append({"items": n_items, "units": units,
                             "error": done.stderr.strip().splitlines()[-1:]})
                print(n_items, units, "failed:", rows[-1]["error"], flush=True)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    report = {"benchmark": "serving_throughput", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
              "command": "PYTHONPATH=. python benchmarks/serving_throughput.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              "batching": batching_parameters(), "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("\n| items | units | export | RSS | clients | unbatched req/s, p50 / p99 ms | "
          "batched req/s, p50 / p99 ms |\n|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['items']:,} | {row['units']} | failed: {row['error']} |||||")
            continue
        for plain, batched in zip(row["unbatched"], row["batched"], strict=True):
            print(f"| {row['items']:,} | {row['units']} | {row['export_mb']:.0f} MB | "
                  f"{row['rss_after_load_mb']:.0f} MB | {plain['clients']} | "
                  f"{plain['requests_per_second']:.0f}, {plain['p50_ms']:.1f} / "
                  f"{plain['p99_ms']:.1f} | {batched['requests_per_second']:.0f}, "
                  f"{batched['p50_ms']:.1f} / {batched['p99_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
