"""Accuracy parity with the official GRU4Rec PyTorch port, side by side on the same files.

    python benchmarks/parity.py --original /work/official \
        --original-python /work/official-venv/bin/python \
        --datasets trivago rsc15 --seeds 0 1 2 --out benchmarks/results/parity.json
    python benchmarks/parity.py --summarise benchmarks/results/parity_*.json   # one table

For every dataset, preset, epoch count and seed it runs tf-gru4rec (the `tf-gru4rec train`
command, as a user runs it) and the port (`parity_original.py` in the port's venv) on the same
prepared files with the same parameters, the two alternating run by run, and writes one JSON
record per run plus a Markdown table (Recall@20, MRR@20, training events/s, each seed; ties
counted against the target). Without --original only tf-gru4rec runs.

Datasets (from --shared-data, default ../shared/data):
  - rsc15: `rsc15_100k/` as split by session-rec (train_full -> test), used as it is.
  - trivago: `trivago_100k/trivago_val_100k.parquet.snappy`, prepared here with
    `tf-gru4rec prepare log --keep action_type=...`: the rows whose `action_type` names an
    item (interaction item image/info/rating/deals, search for item, clickout item) with
    `reference` as the item, then the usual protocol (sessions >= 2 events, items >= 5
    events, the last day as test), as in README's trivago walk-through. The port reads
    session ids as int32, so the hex session ids are mapped to integers (one map over train
    and test) and both systems read those same files.
Default settings: `rsc15-xe` with n_sample=512 at 1 and 3 epochs on trivago (the issue's
setting); `rsc15-xe` and `rsc15-bprmax` at 10 epochs on rsc15.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from run import machine  # noqa: E402  (benchmarks/run.py; imports no TensorFlow)

from tf_gru4rec.config import load_preset  # noqa: E402  (no TensorFlow)

ITEM_ACTIONS = ["interaction item image", "interaction item info", "interaction item rating",
                "interaction item deals", "search for item", "clickout item"]
RSC15_FILES = ("rsc15_100k/yoochoose-clicks-100k_train_full.txt.gz",
               "rsc15_100k/yoochoose-clicks-100k_test.txt.gz")
TRIVAGO_FILE = "trivago_100k/trivago_val_100k.parquet.snappy"
DEFAULT_RUNS = {  # dataset: [(preset, overrides, epoch counts)]
    "trivago": [("rsc15-xe", {"n_sample": "512"}, [1, 3])],
    "rsc15": [("rsc15-xe", {}, [10]), ("rsc15-bprmax", {}, [10])],
}
PORT_PARAMS = ("loss", "layers", "batch_size", "dropout_p_embed", "dropout_p_hidden",
               "learning_rate", "momentum", "n_sample", "sample_alpha", "bpreg", "logq",
               "elu_param", "constrained_embedding", "embedding", "n_epochs")


def port_parameter_string(preset: str, overrides: dict, epochs: int) -> str:
    """The port's `-ps` string for a preset: the same values under the same names."""
    config = load_preset(preset).with_overrides({**overrides, "n_epochs": str(epochs)})
    values = []
    for name in PORT_PARAMS:
        value = getattr(config, name)
        if isinstance(value, list):
            value = "/".join(str(v) for v in value)
        values.append(f"{name}={value}")
    return ",".join(values)


def prepare_trivago(shared: str, work: str) -> tuple[str, str]:
    """trivago sample -> `prepare log --keep action_type=<item actions>` -> the same files
    with integer session ids (one map over train and test)."""
    import pandas as pd

    out = os.path.join(work, "trivago")
    train, test = os.path.join(out, "train_int.tsv"), os.path.join(out, "test_int.tsv")
    if os.path.exists(train) and os.path.exists(test):
        return train, test
    os.makedirs(out, exist_ok=True)
    subprocess.run([sys.executable, "-m", "tf_gru4rec.cli", "-v", "WARNING", "prepare", "log",
                    "--input", os.path.join(shared, TRIVAGO_FILE),
                    "--out", os.path.join(out, "prepared"), "--session-col", "session_id",
                    "--item-col", "reference", "--time-col", "timestamp",
                    "--keep", "action_type=" + ",".join(ITEM_ACTIONS)],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    frames = [pd.read_csv(os.path.join(out, "prepared", f"{name}.tsv"), sep="\t",
                          dtype={"SessionId": str, "ItemId": str})
              for name in ("train", "test")]
    codes = {s: i for i, s in enumerate(pd.concat(frames)["SessionId"].unique())}
    for frame, path in zip(frames, (train, test), strict=True):
        frame["SessionId"] = frame["SessionId"].map(codes).astype("int64")
        frame[["SessionId", "ItemId", "Time"]].to_csv(path, sep="\t", index=False)
    return train, test


def dataset_files(name: str, shared: str, work: str) -> tuple[str, str]:
    if name == "trivago":
        return prepare_trivago(shared, work)
    return tuple(os.path.join(shared, f) for f in RSC15_FILES)


def train_command(train: str, test: str, out: str, preset: str, overrides: dict, epochs: int,
                  seed: int, log_level: str = "WARNING") -> list[str]:
    """The `tf-gru4rec train` command line of one run (no progress bar)."""
    cmd = [sys.executable, "-m", "tf_gru4rec.cli", "-v", log_level, "train", "--train", train,
           "--test", test, "--out", out, "--preset", preset, "--seed", str(seed), "--verbose",
           "0", "--set", f"n_epochs={epochs}"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def run_ours(train: str, test: str, preset: str, overrides: dict, epochs: int,
             seed: int) -> dict:
    """`tf-gru4rec train` in a fresh process; its metrics.json."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = train_command(train, test, os.path.join(tmp, "model"), preset, overrides, epochs,
                            seed)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(tmp, "model", "metrics.json")) as f:
            metrics = json.load(f)
    return {"recall@20": metrics["recall@20"], "mrr@20": metrics["mrr@20"],
            "train_events_per_second": metrics["train_events_per_second"],
            "train_seconds": metrics["train_seconds"], "wall_seconds": wall}


def run_original(python: str, original: str, train: str, test: str, preset: str,
                 overrides: dict, epochs: int, seed: int) -> dict:
    cmd = [python, os.path.join(HERE, "parity_original.py"), "--original", original,
           "--train", train, "--test", test, "--seed", str(seed),
           "--params", port_parameter_string(preset, overrides, epochs)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the original failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["train_events_per_second"] = (result["train_events"] * epochs
                                         / result["train_seconds"])
    result["wall_seconds"] = wall
    return result


def summarise(records: list[dict]) -> str:
    """Markdown: one row per (dataset, preset, epochs) and system, each seed listed."""
    lines = ["| dataset | preset | epochs | system | Recall@20 mean (each seed) "
             "| MRR@20 mean (each seed) | train events/s (median) |",
             "|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["dataset"], r["preset"], r["epochs"], r["system"]) for r in records)
    for dataset, preset, epochs, system in keys:
        rs = [r for r in records if (r["dataset"], r["preset"], r["epochs"], r["system"])
              == (dataset, preset, epochs, system)]
        rec = [r["recall@20"] for r in rs]
        mrr = [r["mrr@20"] for r in rs]
        eps = statistics.median(r["train_events_per_second"] for r in rs)
        lines.append(
            f"| {dataset} | {preset} | {epochs} | {system} | {statistics.mean(rec):.4f} "
            f"({', '.join(f'{x:.4f}' for x in rec)}) | {statistics.mean(mrr):.4f} "
            f"({', '.join(f'{x:.4f}' for x in mrr)}) | {eps:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", default=os.path.join(REPO, "..", "shared", "data"))
    parser.add_argument("--original", help="checkout of GRU4Rec_PyTorch_Official")
    parser.add_argument("--original-python", default="python3", help="the port venv's python")
    parser.add_argument("--datasets", nargs="+", default=["trivago", "rsc15"],
                        choices=sorted(DEFAULT_RUNS))
    parser.add_argument("--presets", nargs="+", help="only these presets")
    parser.add_argument("--epochs", type=int, nargs="+", help="instead of the defaults")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra parameter for both systems")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "tf_gru4rec_parity"),
                        help="prepared files are kept here between runs")
    parser.add_argument("--out", help="JSON results (a .md table beside it)")
    parser.add_argument("--summarise", nargs="+", metavar="JSON",
                        help="only print the table of earlier results files, together")
    args = parser.parse_args()
    if args.summarise:
        records = []
        for path in args.summarise:
            with open(path) as f:
                records += json.load(f)["records"]
        records.sort(key=lambda r: (r["dataset"], r["preset"], r["epochs"], r["system"]))
        print(summarise(records))
        return
    if not args.out:
        parser.error("--out is required (or --summarise)")
    extra = dict(item.split("=", 1) for item in args.set)

    records = []
    header = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(sys.argv), "original": args.original}
    for dataset in args.datasets:
        train, test = dataset_files(dataset, args.shared_data, args.work)
        for preset, overrides, epoch_counts in DEFAULT_RUNS[dataset]:
            if args.presets and preset not in args.presets:
                continue
            overrides = {**overrides, **extra}
            for epochs in args.epochs or epoch_counts:
                for seed in args.seeds:
                    # Alternate the systems, so that a slow spell of the machine hits both.
                    systems = ["tf-gru4rec"] + (["original"] if args.original else [])
                    for system in systems:
                        if system == "tf-gru4rec":
                            result = run_ours(train, test, preset, overrides, epochs, seed)
                        else:
                            result = run_original(args.original_python, args.original, train,
                                                  test, preset, overrides, epochs, seed)
                        record = {"dataset": dataset, "preset": preset, "overrides": overrides,
                                  "epochs": epochs, "seed": seed, "system": system, **result}
                        records.append(record)
                        print(json.dumps({k: record[k] for k in (
                            "dataset", "preset", "epochs", "seed", "system", "recall@20",
                            "mrr@20", "train_events_per_second")}), flush=True)
                        with open(args.out, "w") as f:
                            json.dump({**header, "records": records}, f, indent=1)
    table = summarise(records)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(f"{header['machine']}, {header['date']}\n\n    {header['command']}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
