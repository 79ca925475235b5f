"""Where the milliseconds of one click go, on TF Serving's loading path.

Exports a model with random weights (50k items, 100 units by default), loads it with the
session-based loader (`SessionBundle`) and:
  - times each signature at batch 1 (p50 over a bounded number of calls): `lookup` (string
    hashing only), `step` (stateless: lookups, GRU step, scoring, top-k), `serving_default`
    and `click` (stateful: plus the session tables);
  - runs `serving_default` with TensorFlow's step tracing (RunOptions FULL_TRACE) and sums the
    kernel time of each op type over the traced calls: hash-table lookups and inserts, string
    ops, the GRU's products, the scoring product, top-k, control flow of the duplicate rounds,
    the sweep check;
  - the same for each scoring table (`--tables`: precision and number of row blocks).

  PYTHONPATH=. python benchmarks/serving_breakdown.py [--items 50000] [--units 100]

Writes benchmarks/results/serving_breakdown.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from tensorflow.core.protobuf import config_pb2  # noqa: E402

from tf_gru4rec.config import TrainConfig  # noqa: E402
from tf_gru4rec.data.vocabulary import ItemVocabulary  # noqa: E402
from tf_gru4rec.serving.bundle import SessionBundle  # noqa: E402
from tf_gru4rec.serving.export import export_model  # noqa: E402
from tf_gru4rec.training import build_model  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results", "serving_breakdown.json")
# Op types grouped into the parts of a click.
GROUPS = {
    "hash tables (item ids, session state)": ("LookupTableFindV2", "LookupTableInsertV2",
                                              "LookupTableRemoveV2", "LookupTableSizeV2",
                                              "LookupTableExportV2"),
    "scoring product and bias": ("MatMul", "_MklMatMul", "BatchMatMulV3", "BiasAdd",
                                 "_MklNativeMatMul", "_MklNativeBatchMatMulV2",
                                 "_MklNativeFusedMatMul", "_FusedMatMul"),
    "top-k": ("TopKV2",),
    "string ops": ("StringLength", "Unique", "UniqueV2"),
}


def export_random(base: str, n_items: int, units: int, precision: str, shards: int) -> str:
    config = TrainConfig(layers=[units], batch_size=32, n_sample=0, jit_compile=False, seed=0)
    model = build_model(config, n_items, item_support=np.random.default_rng(0).integers(
        1, 1000, n_items))
    rng = np.random.default_rng(1)
    for variable in model.weights:
        if variable.trainable:
            variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
    vocabulary = ItemVocabulary(np.arange(n_items, dtype=np.int64) + 100_000_000)
    return export_model(model, vocabulary, base, k=20, score_precision=precision,
                        score_shards=shards)


def p50_ms(call, calls: int, seconds: float) -> float:
    for i in range(20):
        call(i)
    times, deadline = [], time.perf_counter() + seconds
    for i in range(calls):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
        if start > deadline:
            break
    return float(np.percentile(np.asarray(times) * 1e3, 50))


def signature_times(bundle: SessionBundle, n_items: int, units: int, calls: int,
                    seconds: float) -> dict:
    items = (np.arange(n_items) + 100_000_000).astype(str).astype(object)
    state = np.zeros((1, units), np.float32)

    def item(i):
        return items[(i * 7919) % n_items: (i * 7919) % n_items + 1]

    def sid(i):
        return np.asarray([f"s{i % 200}"], dtype=object)

    return {
        "lookup": p50_ms(lambda i: bundle.run("lookup", {"item_id": item(i)}), calls, seconds),
        "step": p50_ms(lambda i: bundle.run("step", {"item_id": item(i), "state": state}),
                       calls, seconds),
        "serving_default": p50_ms(lambda i: bundle.run(
            "serving_default", {"session_id": sid(i), "item_id": item(i)}), calls, seconds),
        "click": p50_ms(lambda i: bundle.run("click", {
            "session_id": np.asarray([f"c{i % 200}"], dtype=object), "item_id": item(i),
            "position": np.asarray([i // 200], np.int64)}), calls, seconds),
    }


def traced_breakdown(bundle: SessionBundle, n_items: int, calls: int) -> dict:
    """Kernel microseconds per call of `serving_default`, by group and by op type."""
    sig = bundle.signature_defs["serving_default"]
    fetches = {k: v.name for k, v in sig.outputs.items()}
    per_type: collections.Counter = collections.Counter()
    wall = []
    for i in range(calls):
        options = config_pb2.RunOptions(trace_level=config_pb2.RunOptions.FULL_TRACE)
        metadata = config_pb2.RunMetadata()
        feed = {sig.inputs["session_id"].name: np.asarray([f"t{i % 50}"], dtype=object),
                sig.inputs["item_id"].name: np.asarray([str(100_000_000 + i * 31 % n_items)],
                                                       dtype=object)}
        start = time.perf_counter()
        bundle.session.run(fetches, feed, options=options, run_metadata=metadata)
        wall.append(time.perf_counter() - start)
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                op = node.timeline_label.split("(")[0].split(" = ")[-1].strip() or node.node_name
                per_type[op] += node.all_end_rel_micros
    per_call = {op: us / calls for op, us in per_type.most_common()}
    groups = {name: sum(v for op, v in per_call.items() if op in ops)
              for name, ops in GROUPS.items()}
    groups["everything else (GRU step, control flow, gathers, ...)"] = (
        sum(per_call.values()) - sum(groups.values()))
    return {"kernel_us_by_group": groups, "kernel_us_by_op": dict(list(per_call.items())[:25]),
            "kernel_us_total": sum(per_call.values()),
            "traced_wall_ms_p50": float(np.median(wall) * 1e3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--tables", nargs="+",
                        default=["float32:1", "float32:2", "bfloat16:2", "int8:2"],
                        help="scoring tables to measure, as PRECISION:SHARDS")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    report = {"benchmark": "serving_breakdown", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
              "command": "PYTHONPATH=. python benchmarks/serving_breakdown.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              "items": args.items, "units": args.units, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for table in args.tables:
            precision, shards = table.split(":")
            path = export_random(os.path.join(tmp, table.replace(":", "-")), args.items,
                                 args.units, precision, int(shards))
            with SessionBundle(path) as bundle:
                result = {"p50_ms": signature_times(bundle, args.items, args.units, args.calls,
                                                    args.seconds),
                          "trace": traced_breakdown(bundle, args.items, 200)}
            report["results"][table] = result
            print(table, json.dumps(result["p50_ms"]), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("\n| scoring table:shards | lookup | step | serving_default | click |\n"
          "|---|---|---|---|---|")
    for table, result in report["results"].items():
        p = result["p50_ms"]
        print(f"| {table} | {p['lookup']:.3f} | {p['step']:.3f} | "
              f"{p['serving_default']:.3f} | {p['click']:.3f} |")
    print("\nserving_default, kernel time per call (us):")
    for table, result in report["results"].items():
        print(table, {k: round(v) for k, v in result["trace"]["kernel_us_by_group"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
