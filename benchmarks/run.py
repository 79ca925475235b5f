"""Training / evaluation speed, memory and FLOP efficiency, side by side with the original.

    python benchmarks/run.py --data ../shared/data/rsc15_100k \
        [--original /path/to/GRU4Rec_PyTorch_Official --original-python /path/to/venv/bin/python] \
        [--repeats 3] [--out benchmarks/results/speed.json]

Every measurement runs in a fresh subprocess (its own peak RSS); results go to a JSON file and a
Markdown table is printed. Measured:
  - training events/s (steady state: epochs after the first, which includes XLA compilation)
    for rsc15-xe and paper2016-xe on the RSC15 sample, and for rsc15-xe settings on synthetic
    logs with 10k, 100k and 1M items (n_sample fixed at 2048);
  - evaluation events/s (all items ranked);
  - the original GRU4Rec (PyTorch port, CPU) on the same files and settings, when --original is
    given (it reports events/s per epoch; the median of its epochs after the first is used);
  - FLOPs per training event (matrix products, forward + backward) and the machine's measured
    matrix-multiply rate, giving the fraction of that ceiling.
The synthetic runs with 100k items or more use transparent huge pages for large allocations
(glibc's malloc tunable, as the `tf-gru4rec` command sets it; see tf_gru4rec/hugepages.py)
unless --no-hugepages is given; the RSC15 runs (ours and the original) use neither.
With --repeat-log N both sides train on the RSC15 sample's training sessions repeated N times
(new session ids, times shifted by the log's span per copy; the same test file): an epoch N
times as long with the sample's own sessions, items and session lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
import isa  # noqa: E402  (benchmarks/isa.py)

from tf_gru4rec.hugepages import environment as hugepages_environment  # noqa: E402  (no TF)

HUGEPAGES = True  # set from --no-hugepages in main()
ISA = "native"  # set from --isa in main()
# Huge pages pay for large tables (1M items: 2x) and cost ~10% at a few thousand items.
HUGEPAGE_MIN_ITEMS = 100_000
TRAIN_FILE = "yoochoose-clicks-100k_train_full.txt.gz"
TEST_FILE = "yoochoose-clicks-100k_test.txt.gz"
ORIGINAL_PARAMS = {
    "rsc15-xe": "loss=cross-entropy,constrained_embedding=True,embedding=0,elu_param=0,"
                "layers=100,n_epochs={epochs},batch_size=32,dropout_p_embed=0.0,"
                "dropout_p_hidden=0.4,learning_rate=0.2,momentum=0.2,n_sample=2048,"
                "sample_alpha=0.5,bpreg=0.0,logq=1.0",
    "rsc15-bprmax": "loss=bpr-max,constrained_embedding=True,embedding=0,elu_param=0.5,"
                    "layers=100,n_epochs={epochs},batch_size=32,dropout_p_embed=0.0,"
                    "dropout_p_hidden=0.0,learning_rate=0.2,momentum=0.1,n_sample=2048,"
                    "sample_alpha=0.0,bpreg=0.5,logq=0.0",
    "paper2016-xe": "loss=cross-entropy,constrained_embedding=False,embedding=0,elu_param=0,"
                    "layers=100,n_epochs={epochs},batch_size=500,dropout_p_embed=0.0,"
                    "dropout_p_hidden=0.0,learning_rate=0.01,momentum=0.0,n_sample=0,"
                    "sample_alpha=0.0,bpreg=0.0,logq=0.0",
}


# ----------------------------------------------------------------------------- child side
def _child_train(spec: dict) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: F401  (loaded before YNNPACK's CPU flags are capped)

    isa_info = isa.apply_in_child()
    import keras
    import numpy as np

    from tf_gru4rec.config import load_preset
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.synthetic import SyntheticConfig, generate_sessions
    from tf_gru4rec.data.vocabulary import ItemVocabulary
    from tf_gru4rec.evaluation import evaluate

    config = load_preset(spec["preset"]).with_overrides(spec.get("set", {}))
    if spec.get("synthetic_items"):
        events = generate_sessions(SyntheticConfig(
            n_items=spec["synthetic_items"], n_sessions=spec["synthetic_sessions"], seed=0))
        seen = ItemVocabulary.from_events(events["ItemId"].to_numpy()).raw_ids
        # The catalogue is every generated item, clicked in the log or not (ids -1, -2, ...).
        unseen = -np.arange(1, spec["synthetic_items"] - len(seen) + 1)
        vocabulary = ItemVocabulary(np.concatenate([seen, unseen]))
        log = SessionLog.from_events(events, vocabulary)
        test_log = log
    else:
        log, test_log = read_rsc15(spec["data"])
    source, model, dataset = fit_setup(config, log)
    epoch_seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.start)

    steps = spec.get("steps")
    if steps:  # a fixed number of steps per epoch (large synthetic logs), whole blocks
        n_blocks = max(1, steps // config.steps_per_execution)
        steps = n_blocks * config.steps_per_execution
        dataset = dataset.take(n_blocks)
    model.fit(dataset, epochs=spec["epochs"], verbose=0, shuffle=False,
              callbacks=[source.callback(), Timer()])
    events_per_epoch = (source.steps(0).valid[:steps].sum() if steps else log.n_predictions)
    steady = epoch_seconds[1:] or epoch_seconds
    result = {
        "train_events_per_second": float(events_per_epoch / statistics.median(steady)),
        "first_epoch_seconds": epoch_seconds[0],
        "epoch_seconds": epoch_seconds,
        "n_items": log.n_items,
        "events_per_epoch": int(events_per_epoch),
        "flops_per_event": flops_per_training_event(config, log.n_items),
        **isa_info,
    }
    if spec.get("evaluate", True):
        metrics = evaluate(model, test_log)  # first call includes tracing
        metrics = evaluate(model, test_log)
        result["eval_events_per_second"] = metrics["test_events"] / metrics["eval_seconds"]
        result["eval_events"] = metrics["test_events"]
        result["recall@20"] = metrics["recall@20"]
        result["mrr@20"] = metrics["mrr@20"]
    return result


def read_rsc15(data: str):
    """(train log, test log) of the RSC15 sample in `data`, on the training items."""
    from tf_gru4rec.data.io import read_events
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.vocabulary import ItemVocabulary

    events = read_events(os.path.join(data, TRAIN_FILE))
    vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    log = SessionLog.from_events(events, vocabulary)
    test = SessionLog.from_events(read_events(os.path.join(data, TEST_FILE)), vocabulary)
    return log, test


def fit_setup(config, log):
    """(input, model, dataset of blocks) for Keras `fit` on `log`, seeded as every run."""
    import keras

    from tf_gru4rec.data.input_pipeline import SessionParallelInput
    from tf_gru4rec.training import build_model

    keras.utils.set_random_seed(0)
    source = SessionParallelInput(log, config.batch_size, n_sample=config.n_sample,
                                  sample_alpha=config.sample_alpha,
                                  steps_per_block=config.steps_per_execution)
    model = build_model(config, log.n_items, log.item_support())
    return source, model, source.dataset(blocks=True)


def flops_per_training_event(config, n_items: int) -> float:
    """Multiply-adds x 2 of the matrix products of one training step, forward and backward
    (backward = 2 x forward), divided by the batch size. Gathers, scatters and elementwise
    work are not counted."""
    b = config.batch_size
    columns = b + config.n_sample
    flops = 0.0
    in_dim = config.layers[-1] if config.constrained_embedding else (config.embedding or 0)
    for i, h in enumerate(config.layers):
        if i > 0 or in_dim:
            flops += 2 * b * (in_dim if i == 0 else config.layers[i - 1]) * 3 * h
        flops += 2 * b * h * 3 * h  # recurrent products (gates and candidate)
    flops += 2 * b * config.layers[-1] * columns  # scores of the sampled items
    return 3 * flops / b


def _child_matmul_rate() -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    isa.apply_in_child()

    rates = {}
    for n in (512, 1024, 2048):
        a = tf.constant(np.random.default_rng(0).normal(size=(n, n)).astype("float32"))
        f = tf.function(lambda x: tf.matmul(x, x))
        f(a).numpy()
        reps = max(3, int(2e10 / (2 * n ** 3)))
        start = time.perf_counter()
        for _ in range(reps):
            out = f(a)
        out.numpy()
        rates[n] = 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9
    return {"matmul_gflops": max(rates.values()), "matmul_gflops_by_size": rates}


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    result = _child_matmul_rate() if spec["kind"] == "matmul" else _child_train(spec)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")


# ----------------------------------------------------------------------------- parent side
def run_child(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env = isa.environment(ISA, env, "ours")
    if HUGEPAGES and spec.get("synthetic_items", 0) >= HUGEPAGE_MIN_ITEMS:
        env = hugepages_environment(env)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"benchmark child failed: {spec}\n{proc.stderr[-3000:]}")


def run_original(original: str, python: str, data: str, preset: str, epochs: int) -> dict:
    """The official GRU4Rec PyTorch port on CPU; parses its per-epoch events/s."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in (TRAIN_FILE, TEST_FILE):
            out = os.path.join(tmp, name.removesuffix(".gz"))
            subprocess.run(f"zcat {os.path.join(data, name)} > {out}", shell=True, check=True)
            paths.append(out)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        cmd = [python, os.path.join(original, "run.py"), paths[0], "-t", paths[1], "-ps",
               ORIGINAL_PARAMS[preset].format(epochs=epochs), "-d", "cpu", "-m", "20",
               "-e", "conservative"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=original,
                              env=isa.environment(ISA, dict(os.environ), "original"))
        wall = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    text = proc.stdout + proc.stderr
    rates = [float(x) for x in re.findall(r"\|\s*([\d.]+)\s*e/s\]", text)]
    if not rates:
        raise RuntimeError(f"could not parse the original's output:\n{text[-3000:]}")
    eval_seconds = re.findall(r"Evaluation took ([\d.]+)s", text)
    recall = re.findall(r"Recall@20: ([\d.]+)", text)
    mrr = re.findall(r"MRR@20: ([\d.]+)", text)
    return {
        "train_events_per_second": statistics.median(rates[1:] or rates),
        "epoch_rates": rates,
        "wall_seconds": wall,
        "peak_rss_mb": (rss if rss > before else float("nan")) / 1024,
        "eval_seconds": float(eval_seconds[-1]) if eval_seconds else None,
        "recall@20": float(recall[-1]) if recall else None,
        "mrr@20": float(mrr[-1]) if mrr else None,
    }


def repeated_log(data: str, copies: int, out: str) -> str:
    """Writes to `out` the training file of `data` with its sessions repeated `copies` times
    (session ids offset past the last, times shifted by the log's span per copy) and a copy
    of its test file; returns `out`."""
    import pandas as pd

    train = pd.read_csv(os.path.join(data, TRAIN_FILE), sep="\t")
    span = train["Time"].max() - train["Time"].min() + 1
    offset = train["SessionId"].max() + 1
    pd.concat([train.assign(SessionId=train["SessionId"] + k * offset,
                            Time=train["Time"] + k * span) for k in range(copies)]).to_csv(
        os.path.join(out, TRAIN_FILE), sep="\t", index=False)
    shutil.copy(os.path.join(data, TEST_FILE), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", default=os.environ.get(
        "TF_GRU4REC_DATA", os.path.join(REPO, "..", "shared", "data", "rsc15_100k")))
    parser.add_argument("--original", help="checkout of GRU4Rec_PyTorch_Official (optional)")
    parser.add_argument("--original-python", default="python3")
    parser.add_argument("--isa", choices=isa.ISAS, default="native",
                        help="avx2: both sides as on a CPU without AVX-512 (benchmarks/isa.py)")
    parser.add_argument("--presets", nargs="*", default=["rsc15-xe", "paper2016-xe"],
                        help="presets measured on the RSC15 sample (default: both)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--synthetic-items", type=int, nargs="*",
                        default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--synthetic-steps", type=int, default=1500,
                        help="training steps per epoch on the synthetic logs")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "speed.json"))
    parser.add_argument("--no-hugepages", action="store_true",
                        help="run the large synthetic catalogues without huge pages")
    parser.add_argument("--repeat-log", type=int, default=1, metavar="N",
                        help="train on the sample's training sessions repeated N times")
    args = parser.parse_args()
    global HUGEPAGES, ISA
    HUGEPAGES = not args.no_hugepages
    ISA = args.isa
    if args.child:
        child_main(args.child)
        return

    if args.repeat_log > 1 and os.path.exists(os.path.join(args.data, TRAIN_FILE)):
        # removed when the run ends; without the sample the RSC15 runs are skipped as before
        repeated = tempfile.TemporaryDirectory(prefix="tf_gru4rec_repeated_")
        args.data = repeated_log(args.data, args.repeat_log, repeated.name)
    records = []
    rate = run_child({"kind": "matmul"})
    records.append({"name": "matmul", **rate})
    ceiling = rate["matmul_gflops"] * 1e9

    def measure(name, spec, original_preset=None):
        # Ours and the original alternate, so that a slow spell of the machine hits both.
        with_original = bool(original_preset and args.original)
        runs, originals = [], []
        for _ in range(args.repeats):
            runs.append(run_child({"kind": "train", **spec}))
            if with_original:
                originals.append(run_original(args.original, args.original_python, args.data,
                                              original_preset, args.epochs))
        record = {"name": name, "runs": runs, **_medians(runs)}
        record["fraction_of_matmul_ceiling"] = (
            record["train_events_per_second"] * record["flops_per_event"] / ceiling)
        if with_original:
            record["original"] = {"runs": originals, **_medians(originals)}
            if record.get("eval_events") and record["original"].get("eval_seconds"):
                # The original prints its evaluation time (2 decimals) for the same test file.
                record["original"]["eval_events_per_second"] = (
                    record["eval_events"] / record["original"]["eval_seconds"])
            record["speedup_vs_original"] = (record["train_events_per_second"]
                                             / record["original"]["train_events_per_second"])
        records.append(record)
        print(json.dumps({k: v for k, v in record.items() if k not in ("runs", "original")}),
              flush=True)

    if os.path.exists(os.path.join(args.data, TRAIN_FILE)):
        for preset in args.presets:
            copies = f" x{args.repeat_log}" if args.repeat_log > 1 else ""
            measure(f"{preset} rsc15_100k{copies}", {"preset": preset, "data": args.data,
                                             "epochs": args.epochs}, preset)
    for n_items in args.synthetic_items:
        measure(f"rsc15-xe synthetic {n_items:,} items", {
            "preset": "rsc15-xe", "synthetic_items": n_items,
            "synthetic_sessions": max(20_000, n_items // 5), "epochs": args.epochs,
            "steps": args.synthetic_steps, "evaluate": n_items <= 100_000})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "machine": machine(), "isa": ISA,
                   "affinity": sorted(os.sched_getaffinity(0)),
                   "torch_capability": (isa.torch_capability(
                       args.original_python, isa.environment(ISA, dict(os.environ), "original"))
                       if args.original else None),
                   "command": " ".join(sys.argv), "hugepages": HUGEPAGES,
                   "repeat_log": args.repeat_log,
                   "transparent_hugepage": _read_text(
                       "/sys/kernel/mm/transparent_hugepage/enabled"),
                   "records": records}, f, indent=2)
    print(table(records))


def _medians(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and v is not None]
    return {k: statistics.median(r[k] for r in runs if r.get(k) is not None) for k in keys}


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def capped_child_parser(description: str, out_name: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark run as a capped child (`run_capped_child`): --preset,
    --isa, --data (the RSC15 sample), --out (benchmarks/results/`out_name`), --child."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="rsc15-xe")
    parser.add_argument("--isa", choices=isa.ISAS, default="native")
    parser.add_argument("--data", default=os.environ.get(
        "TF_GRU4REC_DATA", os.path.join(REPO, "..", "shared", "data", "rsc15_100k")))
    parser.add_argument("--out", default=os.path.join(HERE, "results", out_name))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def run_capped_child(script: str, isa_name: str, out: str) -> dict:
    """Runs `script --child <this command's arguments>` in a fresh process capped at
    `isa_name` (benchmarks/isa.py), reads the child's `RESULT <json>` line, adds the date, the
    machine, the cores and the command, appends it to the JSON list in `out`, and returns it
    (exits with the child's stderr if it printed no result)."""
    env = isa.environment(isa_name, dict(os.environ, PYTHONPATH=REPO), "ours")
    proc = subprocess.run([sys.executable, script, "--child", *sys.argv[1:]], env=env,
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        sys.exit(proc.stderr[-3000:])
    result = json.loads(lines[-1][len("RESULT "):])
    result.update({"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                   "affinity": sorted(os.sched_getaffinity(0)),
                   "command": " ".join(sys.argv)})
    records = []
    if os.path.exists(out):
        with open(out) as f:
            records = json.load(f)
    records.append(result)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(records, f, indent=2)
    return result


def machine() -> str:
    """The machine in one line: architecture, cores, CPU model, its widest vector ISA, Python."""
    cpu, widest = "unknown CPU", "ISA unknown"
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        cpu = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("model name")), cpu)
        widest = "AVX-512" if "avx512f" in text else ("AVX2" if "avx2" in text else "no AVX2")
    except OSError:
        pass
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu} ({widest}), Python {python}"


def table(records: list[dict]) -> str:
    lines = ["| run | train events/s | original events/s | speed-up | eval events/s | "
             "peak RSS MB | FLOP/event | % of matmul ceiling |", "|---" * 8 + "|"]
    for r in records:
        if r["name"] == "matmul":
            continue
        orig = r.get("original", {}).get("train_events_per_second")
        orig_text = f"{orig:,.0f}" if orig else "-"
        speedup = f"{r['speedup_vs_original']:.2f}x" if orig else "-"
        lines.append(
            f"| {r['name']} ({ISA}) | {r['train_events_per_second']:,.0f} | {orig_text} | "
            f"{speedup} | "
            f"{r.get('eval_events_per_second', float('nan')):,.0f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['flops_per_event'] / 1e6:.2f} M | {100 * r['fraction_of_matmul_ceiling']:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
