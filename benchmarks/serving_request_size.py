"""Time and memory of ONE stateful request as its rows grow, on TF Serving's loading path.

A model with random weights is exported once; then, for each request size, a fresh process
loads the version with the session-based loader (`SessionBundle`, as TF Serving does), sends a
small request to warm up, and times one `serving_default` request of N rows (repeated with new
session ids; the median is reported). Memory is the growth of the process's peak RSS
(ru_maxrss) over that request. Two shapes of request per size:
  - distinct: N different session ids (one round);
  - duplicates: N rows over N / 10 session ids (ten clicks per session, in order: ten rounds).
A request's cost should grow linearly with N (the catalogue is small, so scoring all items,
which is linear in N anyway, does not hide the ordering of duplicate ids).

  PYTHONPATH=. python benchmarks/serving_request_size.py [--rows 1000 5000 20000]

Writes benchmarks/results/serving_request_size.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results", "serving_request_size.json")


def export(path: str, n_items: int, units: int, max_rows: int) -> str:
    import numpy as np

    from tf_gru4rec.config import TrainConfig
    from tf_gru4rec.data.vocabulary import ItemVocabulary
    from tf_gru4rec.serving.export import export_model
    from tf_gru4rec.serving.graph.limits import ServingLimits
    from tf_gru4rec.training import build_model

    config = TrainConfig(layers=[units], batch_size=32, n_sample=0, jit_compile=False, seed=0)
    model = build_model(config, n_items, item_support=np.arange(n_items) + 1)
    vocabulary = ItemVocabulary(np.arange(n_items, dtype=np.int64) + 100_000_000)
    return export_model(model, vocabulary, path, k=20, session_capacity=10_000_000,
                        limits=ServingLimits(max_request_rows=max_rows))


def measure(path: str, rows: int, per_session: int, repeats: int) -> dict:
    """In this (fresh) process: median seconds and peak-RSS growth of one request."""
    import numpy as np

    from tf_gru4rec.serving.bundle import SessionBundle

    bundle = SessionBundle(path)
    rng = np.random.default_rng(0)
    items = (rng.integers(0, 1000, rows) + 100_000_000).astype(str).astype(object)

    def request(tag: str):
        sessions = np.arange(rows) // per_session
        sids = np.char.add(f"{tag}-", sessions.astype(str)).astype(object)
        rng.shuffle(sids)  # duplicates interleaved, as concurrent clients would send them
        return bundle.run("serving_default", {"session_id": sids, "item_id": items})

    bundle.run("serving_default", {"session_id": np.asarray(["warm"], object),
                                   "item_id": items[:1]})
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = []
    for r in range(repeats):
        start = time.perf_counter()
        request(f"r{r}")
        seconds.append(time.perf_counter() - start)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rows": rows, "sessions": rows // per_session, "rounds": per_session,
            "seconds_median": float(np.median(seconds)), "seconds": seconds,
            "peak_rss_growth_mb": (rss_after - rss_before) / 1024.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--measure", nargs=4, metavar=("PATH", "ROWS", "PER_SESSION", "REPEATS"),
                        help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = parser.parse_args(argv)
    if args.measure:
        path, rows, per_session, repeats = args.measure
        print(json.dumps(measure(path, int(rows), int(per_session), int(repeats))))
        return 0

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export(os.path.join(tmp, "gru4rec"), args.items, args.units, max(args.rows))
        for shape, per_session in (("distinct", 1), ("duplicates", 10)):
            for rows in args.rows:
                done = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--measure", path, str(rows),
                     str(per_session), str(args.repeats)],
                    capture_output=True, text=True, check=True, timeout=1800,
                    env=dict(os.environ, PYTHONPATH=REPO))
                result = dict(json.loads(done.stdout.strip().splitlines()[-1]), shape=shape)
                results.append(result)
                print(f"{shape:10s} {rows:6d} rows: {result['seconds_median'] * 1e3:8.1f} ms, "
                      f"peak RSS +{result['peak_rss_growth_mb']:.0f} MB", flush=True)
    report = {"benchmark": "serving_request_size", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
              "command": "PYTHONPATH=. python benchmarks/serving_request_size.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              "items": args.items, "units": args.units, "results": results}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("\n| request | rows | sessions | ms (median) | ms per 1k rows | peak RSS growth |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['shape']} | {r['rows']} | {r['sessions']} | {r['seconds_median'] * 1e3:.0f} "
              f"| {r['seconds_median'] * 1e6 / r['rows']:.1f} | "
              f"{r['peak_rss_growth_mb']:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
