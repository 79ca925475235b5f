"""What the progress display costs in the command users run: `tf-gru4rec train`, alternating.

    python benchmarks/cli_display.py [--data ../shared/data/rsc15_100k] [--preset rsc15-xe] \
        [--epochs 4] [--repeats 3] [--out benchmarks/results/cli_display.json]

Three ways to run the same training, one after another in each round (fresh processes):
  - `--verbose 0`: no progress at all;
  - the default written to a log file (stderr redirected: one line per epoch);
  - the default on a terminal (a pseudo-terminal from `script`: the redrawn bar).
Reported: the command's own `train_events_per_second` (all epochs, the first one's XLA
compilation included, the same for the three), medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import TRAIN_FILE, machine  # noqa: E402  (no TensorFlow)

MODES = ("verbose 0", "default, to a log file", "default, on a terminal")


def run_once(mode: str, train: str, preset: str, epochs: int, tmp: str) -> float:
    command = os.path.join(os.path.dirname(sys.executable), "tf-gru4rec")
    out = os.path.join(tmp, "model")
    args = [command, "train", "--train", train, "--preset", preset,
            "--set", f"n_epochs={epochs}", "--out", out]
    if mode == "verbose 0":
        args += ["--verbose", "0"]
    metrics = os.path.join(tmp, "metrics.json")
    log = os.path.join(tmp, "progress.log")
    if mode == "default, on a terminal":
        # `script` gives the command a pseudo-terminal on stdout and stderr (the bar is
        # drawn); the metrics JSON is read from the model directory instead.
        inner = " ".join(shlex.quote(a) for a in args) + " > /dev/null"
        subprocess.run(["script", "-qec", inner, log], check=True, stdout=subprocess.DEVNULL)
    else:
        with open(log, "w") as err, open(metrics, "w") as res:
            subprocess.run(args, stdout=res, stderr=err, check=True)
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)["train_events_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get(
        "TF_GRU4REC_DATA", os.path.join(REPO, "..", "shared", "data", "rsc15_100k")))
    parser.add_argument("--preset", default="rsc15-xe")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "cli_display.json"))
    args = parser.parse_args()
    train = os.path.join(args.data, TRAIN_FILE)
    if not os.path.exists(train):
        sys.exit(f"{train} not found: give --data")
    runs = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for mode in MODES:
                runs[mode].append(run_once(mode, train, args.preset, args.epochs, tmp))
                print(f"{mode}: {runs[mode][-1]:,.0f} events/s", flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "affinity": sorted(os.sched_getaffinity(0)), "command": " ".join(sys.argv),
              "preset": args.preset, "epochs": args.epochs,
              "runs": runs, "medians": {m: statistics.median(v) for m, v in runs.items()}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for mode, value in result["medians"].items():
        print(f"| {mode} | {value:,.0f} | {' / '.join(f'{v:,.0f}' for v in runs[mode])} |")


if __name__ == "__main__":
    main()
