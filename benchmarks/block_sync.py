"""`--sync block` and `--sync overlap` (local SGD) against one process: accuracy on real logs,
and speed per worker.

    PYTHONPATH=. python benchmarks/block_sync.py [--datasets rsc15 trivago bundled] \
        [--seeds 0 1 2] [--out benchmarks/results/block_sync.json]

For every dataset and seed, `tf-gru4rec train` (as a user runs it, each run a fresh process,
the runs of one seed one after another) in these settings, same preset, files and seed:
  - "1 process":          one process, B slots (the training loop's one-replica path: the
                          program Keras `fit` runs);
  - "2 workers, step":    `--workers 2`, B slots in all (B / 2 per worker), gradients summed
                          at every step (one process's maths); with --with-step only (it runs
                          at ~0.1x: BENCHMARKS.md);
  - "2 workers, block":   `--workers 2 --sync block`, B slots in all: each worker trains
                          blocks of steps_per_execution steps on its B / 2 slots, then the two
                          average their models;
  - "2 workers, block, B each": the same with 2 B slots in all, B per worker, so each worker
                          runs exactly `fit`'s program of one process; also with
                          steps_per_execution 200 (one average per 200 steps);
  - "2 workers, overlap, B each": `--sync overlap`, B per worker: the average travels while
                          the next block trains and is applied one block late;
  - "2 processes at once": two independent one-process runs started together, each with
                          cores / 2 intra-op threads as a local worker has: what one process
                          gets while another shares the host, no exchange (the ceiling of a
                          worker here; with --control).
With --cores-each N every process is pinned to N cores of its own (`taskset`) with N
intra-op threads, as on a cluster of N-core machines: "1 process" is `fit`'s program on N cores
(one device), the 2 workers are started as a cluster is (`TF_CONFIG`, worker r on cores
r N ... (r + 1) N - 1, not `--workers 2`), and the control's two runs take N cores each. It
needs 2 N cores (this 2-core VM runs N = 1; `--one-core-each` is `--cores-each 1`).
Reported: Recall@20 and MRR@20 on the test file, training events/s (all workers together, as
the chief reports it: training time, tracing and the first epoch included), per worker
against the one process of the same seed; the steady events/s (the median over the epochs
after the first of what the chief's loop logs per epoch: training only, no tracing) and per
worker against the one process's steady rate; under sync=block and overlap the chief's median
time per block of its last epoch in training and in averaging (overlap: waiting for the
average) (from its log).

Datasets (from --shared-data, default ../shared/data, prepared as benchmarks/parity.py does):
rsc15 (rsc15-xe, 10 epochs), trivago (rsc15-xe with n_sample=512, 3 epochs); bundled: the
generated default log (rsc15-xe, 4 epochs).
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
from parity import dataset_files, train_command  # noqa: E402  (benchmarks/parity.py)
from run import machine  # noqa: E402  (benchmarks/run.py; imports no TensorFlow)

from tf_gru4rec.config import load_preset  # noqa: E402  (no TensorFlow)

RESULTS = os.path.join(HERE, "results", "block_sync.json")
DATASETS = {"rsc15": ("rsc15-xe", {}, 10), "trivago": ("rsc15-xe", {"n_sample": "512"}, 3),
            "bundled": ("rsc15-xe", {}, 4)}


def settings(batch_size: int, with_step: bool) -> list[tuple[str, list[str]]]:
    """(label, extra `train` arguments) of each setting."""
    block = ["--workers", "2", "--sync", "block"]
    runs = [("1 process", [])]
    if with_step:
        runs.append(("2 workers, step", ["--workers", "2"]))
    return runs + [
        ("2 workers, block", block),
        ("2 workers, block, B each", [*block, "--set", f"batch_size={2 * batch_size}"]),
        ("2 workers, block, B each, 200 steps", [*block, "--set", f"batch_size={2 * batch_size}",
                                                 "--set", "steps_per_execution=200"]),
        ("2 workers, overlap, B each", ["--workers", "2", "--sync", "overlap", "--set",
                                        f"batch_size={2 * batch_size}"]),
    ]


def run_pair(train: str, test: str, preset: str, overrides: dict, epochs: int,
             seed: int, cores_each: int = 0) -> dict:
    """Two one-process runs at once (threads wait on their processes; with `cores_each`
    run r on cores of its own, `cores(r, cores_each)`); their events/s summed, the first's
    accuracy."""
    from concurrent.futures import ThreadPoolExecutor

    threads = {"TF_NUM_INTRAOP_THREADS": str(max(1, len(os.sched_getaffinity(0)) // 2))}
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda r: run_train(
            train, test, preset, overrides, epochs, seed, [], threads,
            core=cores(r, cores_each) if cores_each else None), range(2)))
    return {**rows[0], "replicas": 2, "train_events_per_second":
            sum(r["train_events_per_second"] for r in rows),
            "each_events_per_second": [r["train_events_per_second"] for r in rows],
            "steady_events_per_second": sum(r["steady_events_per_second"] for r in rows)}


def cores(index: int, cores_each: int) -> list[int]:
    """The cores of process `index` when every process has `cores_each` of its own."""
    return list(range(index * cores_each, (index + 1) * cores_each))


def pinned(core: list[int] | None) -> tuple[list[str], dict]:
    """(command prefix, environment) of a process on the cores `core` alone, with as many
    intra-op threads (nothing for None)."""
    if core is None:
        return [], {}
    return (["taskset", "-c", ",".join(map(str, core))],
            {"TF_NUM_INTRAOP_THREADS": str(len(core))})


def run_train(train: str, test: str, preset: str, overrides: dict, epochs: int, seed: int,
              extra: list[str], env: dict | None = None, core: list[int] | None = None,
              cluster: int = 0) -> dict:
    """`tf-gru4rec train` in a fresh process (on the cores `core` alone when given), or with
    `cluster` > 0 as that many workers started as on a cluster (`TF_CONFIG`, worker r on
    `cores(r, len(core))`); the fields of the (chief's) metrics.json used here."""
    from tf_gru4rec.training.workers import local_cluster

    with tempfile.TemporaryDirectory() as tmp:
        cmd = train_command(train, test, os.path.join(tmp, "model"), preset, overrides, epochs,
                            seed, log_level="INFO")  # INFO: the sync=block split per block
        base = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
        start = time.perf_counter()
        if cluster:
            processes = []
            for index, config in enumerate(local_cluster(cluster)):
                prefix, pin = pinned(cores(index, len(core)))
                processes.append(subprocess.Popen(
                    [*prefix, *cmd, *extra], cwd=REPO, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True,
                    env={**base, **pin, "TF_CONFIG": json.dumps(config)}))
            outputs = [p.communicate() for p in processes]
            code = max(abs(p.returncode) for p in processes)
            done = subprocess.CompletedProcess(cmd, code, outputs[0][0],
                                               "".join(err for _, err in outputs))
        else:
            prefix, pin = pinned(core)
            done = subprocess.run([*prefix, *cmd, *extra], cwd=REPO, capture_output=True,
                                  text=True, env={**base, **pin})
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd + extra)}:\n{done.stderr[-3000:]}")
        with open(os.path.join(tmp, "model", "metrics.json")) as f:
            metrics = json.load(f)
    # The chief's split of its last epoch's blocks (logged under sync=block and overlap).
    split = re.findall(r"worker 0 \S+: sync=\w+: \d+ blocks, median ([\d.]+) ms training and "
                       r"([\d.]+) ms", done.stderr)
    timing = ({"block_train_ms": float(split[-1][0]), "block_average_ms": float(split[-1][1])}
              if split else {})
    # The chief's (or the one process's) events/s per epoch, as its training loop logs them.
    epochs = [float(rate) for rate in re.findall(
        r"^(?:(?!worker [1-9]).)*training\.loop: epoch \d+/\d+: .* ([\d.]+) events/s",
        done.stderr, re.M)]
    timing["epoch_events_per_second"] = epochs
    timing["steady_events_per_second"] = statistics.median(epochs[1:] or epochs)
    return timing | {key: metrics.get(key) for key in (
        "recall@20", "mrr@20", "train_events_per_second", "train_seconds", "replicas", "sync",
        "steps_per_epoch")} | {"wall_seconds": time.perf_counter() - start}


def log_files(dataset: str, shared_data: str, work: str) -> tuple[str, str] | None:
    """(train, test) files of `dataset` (prepared as benchmarks/parity.py does, or the bundled
    log generated), or None, said on stderr, when the shared data is absent."""
    if dataset == "bundled":
        return bundled_files(work)
    train, test = dataset_files(dataset, shared_data, work)
    if not os.path.exists(train):
        print(f"{dataset}: {train} not found; skipped", file=sys.stderr)
        return None
    return train, test


def bundled_files(work: str) -> tuple[str, str]:
    out = os.path.join(work, "bundled")
    if not os.path.exists(os.path.join(out, "train.tsv")):
        subprocess.run([sys.executable, "-m", "tf_gru4rec.cli", "-v", "WARNING", "generate",
                        "--out", out], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": REPO})
    return os.path.join(out, "train.tsv"), os.path.join(out, "test.tsv")


def table(records: list[dict]) -> str:
    """Markdown: one row per dataset and setting, the seeds' medians and each seed's values."""
    lines = ["| dataset | setting | Recall@20 | MRR@20 | events/s (all) | per worker x 1 process "
             "| steady per worker x 1 process | seeds |", "|---|---|---|---|---|---|---|---|"]
    keys = []
    for r in records:
        if (r["dataset"], r["setting"]) not in keys:
            keys.append((r["dataset"], r["setting"]))
    for dataset, setting in keys:
        rows = [r for r in records if r["dataset"] == dataset and r["setting"] == setting]
        recall = statistics.median(r["recall@20"] for r in rows)
        mrr = statistics.median(r["mrr@20"] for r in rows)
        speed = statistics.median(r["train_events_per_second"] for r in rows)
        ratio = statistics.median(r["per_worker_vs_one_process"] for r in rows)
        steady = statistics.median(r["steady_per_worker_vs_one_process"] for r in rows)
        split = [r for r in rows if "block_train_ms" in r]
        if split:
            train = statistics.median(r["block_train_ms"] for r in split)
            average = statistics.median(r["block_average_ms"] for r in split)
            setting += f" (block: {train:.0f} ms training, {average:.0f} ms averaging)"
        seeds = "; ".join(f"{r['seed']}: {r['recall@20']:.4f}/{r['mrr@20']:.4f}, "
                          f"{r['per_worker_vs_one_process']:.2f}x" for r in rows)
        lines.append(f"| {dataset} | {setting} | {recall:.4f} | {mrr:.4f} | {speed:,.0f} | "
                     f"{ratio:.2f} | {steady:.2f} | {seeds} |")
    return "\n".join(lines)


def _setting(text: str) -> tuple[str, str]:
    """`--set KEY=VALUE` as (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", default=os.path.join(REPO, "..", "shared", "data"))
    parser.add_argument("--datasets", nargs="+", default=["rsc15", "trivago", "bundled"],
                        choices=sorted(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--with-step", action="store_true",
                        help="also run `--workers 2` with sync=step (slow: ~0.1x)")
    parser.add_argument("--control", action="store_true",
                        help="also run two one-process trainings at once (no exchange)")
    parser.add_argument("--cores-each", type=int, default=0, metavar="N",
                        help="every process on N cores of its own, N intra-op threads; the "
                             "workers started as a cluster (TF_CONFIG), not --workers 2 "
                             "(needs 2 N cores)")
    parser.add_argument("--one-core-each", action="store_const", const=1, dest="cores_each",
                        help="--cores-each 1")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        type=_setting,
                        help="a training setting for every run (as `train --set`), e.g. "
                             "replica_split=balanced")
    parser.add_argument("--only", nargs="+", metavar="SETTING",
                        help="only these settings (by label; '1 process' always runs)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                       "tf_gru4rec_parity"))
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    available = len(os.sched_getaffinity(0))
    if args.cores_each and 2 * args.cores_each > available:
        parser.error(f"--cores-each {args.cores_each} needs {2 * args.cores_each} cores (two "
                     f"workers, or the control's two runs); this process may use {available}")
    records = []
    for dataset in args.datasets:
        preset, overrides, epochs = DATASETS[dataset]
        overrides = {**overrides, **dict(args.set)}
        files = log_files(dataset, args.shared_data, args.work)
        if files is None:
            continue
        train, test = files
        batch_size = load_preset(preset).with_overrides(overrides).batch_size
        for seed in args.seeds:
            base = None
            runs = settings(batch_size, args.with_step)
            if args.control:
                runs.append(("2 processes at once", None))
            if args.only:  # the one process always runs: the ratios' base
                runs = [r for r in runs if r[0] == "1 process" or r[0] in args.only]
            for label, extra in runs:
                if extra is None:
                    row = run_pair(train, test, preset, overrides, epochs, seed,
                                   args.cores_each)
                elif args.cores_each:
                    workers = extra[:2] == ["--workers", "2"]
                    row = run_train(train, test, preset, overrides, epochs, seed,
                                    extra[2:] if workers else extra,
                                    core=cores(0, args.cores_each),
                                    cluster=2 if workers else 0)
                else:
                    row = run_train(train, test, preset, overrides, epochs, seed, extra)
                base = base or row
                per_worker = row["train_events_per_second"] / (row["replicas"] or 1)
                steady = row["steady_events_per_second"] / (row["replicas"] or 1)
                row.update(dataset=dataset, setting=label, seed=seed, preset=preset,
                           overrides=overrides, epochs=epochs, args=extra,
                           per_worker_vs_one_process=per_worker
                           / base["train_events_per_second"],
                           steady_per_worker_vs_one_process=steady
                           / base["steady_events_per_second"])
                records.append(row)
                print(f"{dataset} seed {seed} {label}: {row['recall@20']:.4f} / "
                      f"{row['mrr@20']:.4f}, {row['train_events_per_second']:,.0f} events/s "
                      f"({row['per_worker_vs_one_process']:.2f}x per worker; steady "
                      f"{row['steady_per_worker_vs_one_process']:.2f}x)", file=sys.stderr,
                      flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": "PYTHONPATH=. python benchmarks/block_sync.py " + " ".join(sys.argv[1:]),
              "records": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(table(records))


if __name__ == "__main__":
    main()
