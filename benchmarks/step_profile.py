"""Where one training step's time goes, and the matrix-product ceiling at the model's shapes.

    python benchmarks/step_profile.py [--preset rsc15-xe] [--isa native|avx2] \
        [--data ../shared/data/rsc15_100k] [--out benchmarks/results/step_profile.json]

In one fresh process per call (run it under `taskset -c 0` for a one-core profile):
  1. the ceiling: the step's matrix products at the model's own shapes (the scores of the
     sampled items forward, their two backward products, and the GRU's products forward and
     backward), each alone in an XLA loop of 200 iterations, with the same XLA flags and dot
     library as training; the sum of their times is the least a step could take;
  2. a steady epoch of training (after one epoch of compilation) under the TensorFlow
     profiler with XLA's per-thunk trace (`--xla_cpu_enable_xprof_traceme`); the thunks'
     times per step, grouped by what they compute (from the optimised HLO's shapes);
  3. the fraction of the ceiling reached: ceiling time / steady step time;
  4. one steady step's schedule (from the middle of the profiled epoch): each thread's thunks
     in order with start and duration, and how busy each thread was (its own thunks plus the
     parallel regions of other thunks it helped with), which shows where a core waits.
`--isa avx2` runs it as on a CPU without AVX-512 (`benchmarks/isa.py`).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import isa as isa_cap  # noqa: E402  (benchmarks/isa.py)
from run import (  # noqa: E402  (benchmarks/run.py; no TensorFlow)
    TRAIN_FILE,
    capped_child_parser,
    fit_setup,
    read_rsc15,
    run_capped_child,
)

INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* [\w\-]+\(([^)]*)\)")


def product_shapes(config, n_items: int) -> dict[str, tuple[int, int, int]]:
    """The step's matrix products as (m, k, n): out[m, n] = a[m, k] @ b[k, n]. The sampled
    scores' forward product takes the form training uses (`item_scores.items_major`)."""
    from tf_gru4rec.nn.layers.item_scores import items_major

    b, h = config.batch_size, config.layers[-1]
    columns = b + config.n_sample
    if items_major(b, columns):
        forward, forward_shape = "scores forward, items-major [C,H]x[H,B]", (columns, h, b)
    else:
        forward, forward_shape = "scores forward [B,H]x[H,C]", (b, h, columns)
    shapes = {
        forward: forward_shape,
        "scores backward to hidden [B,C]x[C,H]": (b, columns, h),
        "scores backward to items [C,B]x[B,H]": (columns, b, h),
    }
    in_dim = h if config.constrained_embedding else (config.embedding or 0)
    for i, units in enumerate(config.layers):
        inputs = in_dim if i == 0 else config.layers[i - 1]
        if inputs:  # a one-hot first layer gathers rows instead
            shapes[f"GRU {i} input forward"] = (b, inputs, 3 * units)
            shapes[f"GRU {i} input backward (x2)"] = (2 * b, inputs, 3 * units)
        shapes[f"GRU {i} recurrent forward"] = (b, units, 3 * units)
        shapes[f"GRU {i} recurrent backward (x2)"] = (2 * b, units, 3 * units)
    return shapes


def ceiling(shapes: dict, iterations: int = 200, repeats: int = 11) -> dict:
    """Microseconds of each product alone in an XLA loop (median of `repeats` calls)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    result = {}
    for name, (m, k, n) in shapes.items():
        a = tf.constant(rng.normal(size=(m, k)).astype("float32"))
        b = tf.constant(rng.normal(size=(k, n)).astype("float32"))

        @tf.function(jit_compile=True)
        def loop(a, b):
            def body(i, acc):  # each product depends on the last: no hoisting out of the loop
                out = tf.matmul(a + acc * 1e-30, b)
                return i + 1, acc + out[0, 0]
            return tf.while_loop(lambda i, acc: i < iterations, body, (0, 0.0))[1]

        loop(a, b).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            loop(a, b).numpy()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times) / iterations
        result[name] = {"shape": [m, k, n], "us": seconds * 1e6,
                        "gflops": 2 * m * k * n / seconds / 1e9}
    return result


def hlo_shapes(dump_dir: str) -> dict[str, tuple[list[int], list[str]]]:
    """(output shape, operand names) of the instructions of the largest optimised module (the
    training block)."""
    files = glob.glob(os.path.join(dump_dir, "*cpu_after_optimizations.txt"))
    shapes = {}
    with open(max(files, key=os.path.getsize)) as f:
        for line in f:
            match = INSTRUCTION.match(line)
            if match:
                dims = match.group(3)
                operands = re.findall(r"%([\w.\-]+)", match.group(4))
                shapes[match.group(1)] = ([int(d) for d in dims.split(",")] if dims else [],
                                          operands)
    return shapes


def category(name: str, shapes: dict, n_items: int, columns: int, batch: int) -> str:
    shape, operands = shapes[name]
    if name.startswith(("MatMul", "ynn_fusion", "dot", "xnn_fusion", "onednn")):
        operand_dims = [d for op in operands for d in shapes.get(op, ([], []))[0]]
        return ("products: sampled scores" if columns in shape or columns in operand_dims
                else "products: GRU")
    if shape[:1] in ([n_items], [columns + batch]):  # the table, its gradient rows
        return "item table: gradient rows and update"
    if columns in shape:
        return "sampled scores: softmax / loss / logQ"
    if "gather" in name or "scatter" in name:
        return "gathers and scatters (other)"
    return "GRU elementwise, small optimizer updates, other"


def profile(config, data: str, isa_info: dict) -> dict:
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    log, _ = read_rsc15(data)
    source, model, dataset = fit_setup(config, log)

    def epoch():
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[source.callback()])
        return time.perf_counter() - start

    epoch()  # compilation
    plain = [epoch() for _ in range(3)]
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        profiled = epoch()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    steps = source.steps_per_epoch()
    thunk_us = collections.Counter()
    events = []  # (start us, duration us, thread, name)
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if "Eigen" not in line.name and "Compute" not in line.name:
                continue  # XLA's thunks run on TensorFlow's compute and intra-op threads
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                thunk_us[name] += event.duration_ps / 1e6 / steps
                events.append(((line.timestamp_ns * 1000 + event.offset_ps) / 1e6,
                               event.duration_ps / 1e6, f"{line.name}/{line.id}", name))
    return {"steps_per_epoch": steps, "epoch_seconds": plain, "profiled_epoch_seconds": profiled,
            "step_us": statistics.median(plain) / steps * 1e6, "thunk_us": dict(thunk_us),
            "n_items": log.n_items, "events": sorted(events)}


def one_step(events: list, marker: str, skip: tuple) -> dict:
    """The schedule of the steady step that starts at the middle occurrence of thunk `marker`:
    per thread, its thunks [(start us, duration us, name)] and its busy microseconds: the time
    covered by its own thunks or by the parallel regions of other thunks it ran
    (`ThreadpoolListener` marks), less the time it waited for helpers (`...::Await`)."""
    import numpy as np

    starts = [e[0] for e in events if e[3] == marker]
    begin, end = starts[len(starts) // 2], starts[len(starts) // 2 + 1]
    thread_of = {line: f"thread {i}" for i, line in enumerate(sorted({e[2] for e in events}))}
    schedule = {thread: [] for thread in thread_of.values()}
    bins = int((end - begin) * 10) + 1  # 0.1 us resolution
    work = {thread: np.zeros(bins, bool) for thread in schedule}
    wait = {thread: np.zeros(bins, bool) for thread in schedule}
    region = {}

    def span(start, duration):
        return slice(int((start - begin) * 10), int((start + duration - begin) * 10) + 1)

    for start, duration, line, name in events:
        if not begin <= start < end:
            continue
        thread = thread_of[line]
        if name == "ThreadpoolListener::StartRegion":
            region[thread] = start
        elif name == "ThreadpoolListener::StopRegion" and thread in region:
            opened = region.pop(thread)
            work[thread][span(opened, start - opened)] = True
        elif name.endswith("::Await"):
            wait[thread][span(start, duration)] = True
        elif not name.startswith(("end: ", "ThreadpoolListener", *skip)):
            schedule[thread].append((round(start - begin, 1), round(duration, 1), name))
            work[thread][span(start, duration)] = True
    busy = {thread: float((work[thread] & ~wait[thread]).sum() / 10) for thread in schedule}
    return {"marker": marker, "step_us": end - begin, "busy_us": busy, "thunks": schedule}


def child(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    dump = tempfile.mkdtemp()
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                               f"--xla_cpu_enable_xprof_traceme=true --xla_dump_to={dump} "
                               "--xla_dump_hlo_as_text").strip()
    import tensorflow as tf  # noqa: F401  (before capping YNNPACK)

    isa_info = isa_cap.apply_in_child()
    from tf_gru4rec.config import load_preset

    config = load_preset(args.preset)
    result = profile(config, args.data, isa_info)
    shapes = hlo_shapes(dump)
    subprocess.run(["rm", "-rf", dump], check=False)
    columns = config.batch_size + config.n_sample
    skip = ("ThunkExecutor", "while", "CpuExecutable", "BlockUntilReady", "Execute", "Process")
    groups = collections.Counter()
    top = []
    for name, us in sorted(result["thunk_us"].items(), key=lambda kv: -kv[1]):
        if name.startswith(skip) or name not in shapes:
            continue
        group = category(name, shapes, result["n_items"], columns, config.batch_size)
        groups[group] += us
        top.append({"thunk": name, "shape": shapes[name][0], "us_per_step": us,
                    "group": group})
    marker = max((t for t in top if t["group"] == "products: sampled scores"
                  and t["shape"] in ([columns, config.batch_size], [config.batch_size, columns])),
                 key=lambda t: t["us_per_step"], default=top[0])["thunk"]  # the forward scores
    step = one_step(result.pop("events"), marker, skip)
    products = ceiling(product_shapes(config, result["n_items"]))
    ceiling_us = sum(p["us"] for p in products.values())
    return {"preset": args.preset, "isa": args.isa, **isa_info,
            "step_us": result["step_us"], "epoch_seconds": result["epoch_seconds"],
            "events_per_second": 0 if not result["step_us"] else
            1e6 / result["step_us"] * config.batch_size,
            "groups_us_per_step": dict(groups.most_common()), "top_thunks": top[:25],
            "ceiling_products": products, "ceiling_us": ceiling_us,
            "fraction_of_ceiling": ceiling_us / result["step_us"], "one_step": step}


def main() -> None:
    parser = capped_child_parser(__doc__, "step_profile.json")
    args = parser.parse_args()
    if args.child:
        sys.stdout.write("RESULT " + json.dumps(child(args)) + "\n")
        return
    if not os.path.exists(os.path.join(args.data, TRAIN_FILE)):
        sys.exit(f"{os.path.join(args.data, TRAIN_FILE)} not found: give --data")
    result = run_capped_child(__file__, args.isa, args.out)
    print(f"{args.preset} ({args.isa}, cores {result['affinity']}): "
          f"{result['step_us']:.0f} us/step, {result['events_per_second']:,.0f} events/s; "
          f"products alone at the model's shapes {result['ceiling_us']:.0f} us "
          f"({100 * result['fraction_of_ceiling']:.0f}% of the step)")
    for group, us in result["groups_us_per_step"].items():
        print(f"  {us:7.1f} us  {group}")
    for name, p in result["ceiling_products"].items():
        print(f"  ceiling {name}: {p['us']:.1f} us ({p['gflops']:.0f} GFLOP/s)")
    step = result["one_step"]
    print(f"one steady step under the profiler ({step['step_us']:.0f} us, from the forward "
          f"scores product {step['marker']}); thunks of 5 us and more, per thread:")
    for thread, thunks in step["thunks"].items():
        if not thunks:
            continue  # TensorFlow's inter-op threads: the input pipeline, between blocks
        print(f"  {thread}: busy {step['busy_us'][thread]:.0f} us")
        for start, duration, name in thunks:
            if duration >= 5:
                print(f"    {start:7.1f} +{duration:6.1f} us  {name}")


if __name__ == "__main__":
    main()
