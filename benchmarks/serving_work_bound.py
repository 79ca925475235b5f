"""Memory and time of the WORST legal request of every signature, and rows/s against request
size, on a large catalogue through TensorFlow's C API (the C++ loader TF Serving runs).

A model with random weights and `--items` items is exported at the default limits (the row cap
derived from the catalogue, `ServingLimits.resolved`; score chunks of
`ServingLimits.score_chunk_rows`). Then, for each signature, a fresh process loads the version
with `TF_LoadSessionFromSavedModel` (`tf_gru4rec.serving.capi`), sends a one-row request of
that signature to warm up, builds the worst legal request (the most rows, session ids of the
most bytes, sessions of the most items, all items known) and runs it once. Memory is the growth
of the process's resident memory over that request (sampled every 0.2 ms by a thread while the
request runs in C++, against the resident memory just before), the request's own tensors
included;
it is compared with the export's stated bound (`request_memory_bytes` in
`assets.extra/tf_gru4rec.json`). The throughput part times `serving_default` and `step`
requests of 1, 64 and 1,000 rows (median of `--repeats`) and reports rows per second.

  PYTHONPATH=. python benchmarks/serving_work_bound.py [--items 50000] [--exclude-seen]
  # main's behaviour for comparison: 10,000 rows, scored in one piece
  PYTHONPATH=. python benchmarks/serving_work_bound.py --max-request-rows 10000 \\
      --scoring-memory-mb 100000 --signatures serving_default rank step --rates \\
      --out benchmarks/results/serving_work_bound_unchunked.json

Writes benchmarks/results/serving_work_bound.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results", "serving_work_bound.json")
SIGNATURES = ("serving_default", "click", "rank", "step", "recommend", "end_session", "lookup",
              "session_count")
ITEM_BASE = 100_000_000  # raw item ids are 9-digit numbers


def export(path: str, args) -> str:
    import numpy as np

    from tf_gru4rec.config import TrainConfig
    from tf_gru4rec.data.vocabulary import ItemVocabulary
    from tf_gru4rec.serving.export import export_model
    from tf_gru4rec.serving.graph.limits import ServingLimits
    from tf_gru4rec.training import build_model

    config = TrainConfig(layers=[args.units], batch_size=32, n_sample=0, jit_compile=False,
                         seed=0)
    model = build_model(config, args.items, item_support=np.arange(args.items) + 1)
    vocabulary = ItemVocabulary(np.arange(args.items, dtype=np.int64) + ITEM_BASE)
    overrides = {}
    if args.max_request_rows:
        overrides["max_request_rows"] = args.max_request_rows
    if args.scoring_memory_mb:
        overrides["scoring_memory_bytes"] = args.scoring_memory_mb << 20
    if args.max_session_length:
        overrides["max_session_length"] = args.max_session_length
    return export_model(model, vocabulary, path, k=20, exclude_seen=args.exclude_seen,
                        limits=ServingLimits(**overrides))


def inputs_for(signature: str, info: dict, rows: int, tag: str, worst: bool, rng) -> dict:
    """Inputs of `rows` rows; with `worst`, the longest session ids and sessions allowed."""
    import numpy as np

    limits = info["limits"]
    items = (rng.integers(0, info["n_items"], rows) + ITEM_BASE).astype(str).astype(object)
    id_bytes = limits["max_id_bytes"] if worst else 12
    sids = np.asarray([f"{tag}-{i}-".ljust(id_bytes, "x")[:id_bytes] for i in range(rows)],
                      dtype=object)
    length = limits["max_session_length"] if worst else 3
    sessions = (rng.integers(0, info["n_items"], (rows, length)) + ITEM_BASE).astype(str) \
        .astype(object)
    values = {
        "session_id": sids, "item_id": items, "target_item_id": items[::-1].copy(),
        "position": np.zeros(rows, np.int64),
        "state": rng.uniform(-1.0, 1.0, (rows, info["state_size"])).astype(np.float32),
        "seen_item_ids": sessions, "session_item_ids": sessions,
        "probe": np.zeros(rows, np.int32),
    }
    return values


def measure_worst(path: str, signature: str) -> dict:
    """In this (fresh) process: peak-RSS growth and seconds of the worst legal request."""
    import numpy as np

    from tf_gru4rec.serving.capi import CApiBundle

    with open(os.path.join(path, "assets.extra", "tf_gru4rec.json")) as f:
        info = json.load(f)
    bundle = CApiBundle(path)
    keys = list(bundle.signature_defs[signature].inputs)
    rng = np.random.default_rng(0)
    warm = inputs_for(signature, info, 1, "warm", False, rng)
    bundle.run(signature, {k: warm[k] for k in keys})
    rows = info["limits"]["max_request_rows"]
    worst = inputs_for(signature, info, rows, "worst", True, rng)
    worst = {k: worst[k] for k in keys}
    rss_before = _rss()
    peak = [rss_before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    out = bundle.run(signature, worst)  # ctypes releases the GIL during the C call
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    assert all(v.shape[0] == rows for v in out.values()), signature
    return {"signature": signature, "rows": rows, "seconds": seconds,
            "peak_rss_growth_mb": (max(peak[0], _rss()) - rss_before) / 2**20,
            "input_shapes": {k: list(np.shape(v)) for k, v in worst.items()}}


def _rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


_PAGE = os.sysconf("SC_PAGE_SIZE")


def measure_rate(path: str, signature: str, rows: int, repeats: int) -> dict:
    """In this (fresh) process: median seconds of a `rows`-row request, new sessions each."""
    import numpy as np

    from tf_gru4rec.serving.capi import CApiBundle

    with open(os.path.join(path, "assets.extra", "tf_gru4rec.json")) as f:
        info = json.load(f)
    bundle = CApiBundle(path)
    keys = list(bundle.signature_defs[signature].inputs)
    rng = np.random.default_rng(1)
    requests = [inputs_for(signature, info, rows, f"r{r}", False, rng)
                for r in range(repeats + 2)]
    seconds = []
    for r, request in enumerate(requests):
        start = time.perf_counter()
        bundle.run(signature, {k: request[k] for k in keys})
        if r >= 2:  # two warm-up requests
            seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    return {"signature": signature, "rows": rows, "seconds_median": median,
            "rows_per_second": rows / median, "seconds": seconds}


def _child(*args) -> dict:
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *map(str, args)],
                          capture_output=True, text=True, timeout=3600,
                          env=dict(os.environ, PYTHONPATH=REPO))
    if done.returncode:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(isa)})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--exclude-seen", action="store_true")
    parser.add_argument("--max-request-rows", type=int, help="override the derived row cap")
    parser.add_argument("--scoring-memory-mb", type=int, help="override the scoring memory")
    parser.add_argument("--max-session-length", type=int, help="override the session length")
    parser.add_argument("--rates", type=int, nargs="*", default=[1, 64, 1000],
                        help="request sizes (rows) of the throughput part")
    parser.add_argument("--signatures", nargs="*", default=list(SIGNATURES),
                        choices=SIGNATURES, help="signatures of the worst-request part")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.child:
        kind, path, signature, *rest = args.child
        result = measure_worst(path, signature) if kind == "worst" else \
            measure_rate(path, signature, int(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        path = export(os.path.join(tmp, "gru4rec"), args)
        with open(os.path.join(path, "assets.extra", "tf_gru4rec.json")) as f:
            info = json.load(f)
        bound_mb = info["request_memory_bytes"] / 2**20
        print(f"{args.items} items: max_request_rows {info['limits']['max_request_rows']}, "
              f"score chunks of {info['score_chunk_rows']} rows, stated bound {bound_mb:.0f} MB",
              flush=True)
        worst = []
        for signature in args.signatures:
            result = _child("worst", path, signature)
            worst.append(result)
            print(f"{signature:16s} {result['rows']} rows: {result['seconds'] * 1e3:8.0f} ms, "
                  f"peak RSS +{result['peak_rss_growth_mb']:.0f} MB", flush=True)
        rates = []
        for signature in ("serving_default", "step"):
            for rows in args.rates:
                if rows > info["limits"]["max_request_rows"]:
                    continue
                result = _child("rate", path, signature, rows, args.repeats)
                rates.append(result)
                print(f"{signature:16s} {rows:5d} rows: {result['rows_per_second']:9.0f} rows/s",
                      flush=True)
    report = {"benchmark": "serving_work_bound", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {_cpu()}",
              "command": "PYTHONPATH=. python benchmarks/serving_work_bound.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              "items": args.items, "units": args.units, "exclude_seen": args.exclude_seen,
              "limits": info["limits"], "score_chunk_rows": info["score_chunk_rows"],
              "request_memory_bytes": info["request_memory_bytes"], "worst": worst,
              "rates": rates}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\n| signature | rows | seconds | peak RSS growth | within {bound_mb:.0f} MB |")
    print("|---|---|---|---|---|")
    for r in worst:
        print(f"| `{r['signature']}` | {r['rows']} | {r['seconds']:.2f} | "
              f"{r['peak_rss_growth_mb']:.0f} MB | "
              f"{'yes' if r['peak_rss_growth_mb'] <= bound_mb else '**no**'} |")
    print("\n| signature | rows per request | ms per request (median) | rows/s |")
    print("|---|---|---|---|")
    for r in rates:
        print(f"| `{r['signature']}` | {r['rows']} | {r['seconds_median'] * 1e3:.2f} | "
              f"{r['rows_per_second']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
