"""Accuracy cost of the reduced-precision scoring tables, measured by replay on real data.

Trains one model on the RSC15 sample (or takes `--model`), exports it once per scoring table
(float32, bfloat16, int8 with a per-row scale), serves each version with the development
server (TF Serving's loading path) and replays the test log through it (`tf-gru4rec replay`,
which equals `tf-gru4rec evaluate` for the float32 export). Reports Recall@20 / MRR@20 of each
and their change relative to float32, plus the size of each export on disk.

  PYTHONPATH=. python benchmarks/serving_precision_replay.py --data ../shared/data/rsc15_100k

Writes benchmarks/results/serving_precision_replay.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results", "serving_precision_replay.json")


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get(
        "TF_GRU4REC_DATA", os.path.join(REPO, "..", "shared", "data", "rsc15_100k")))
    parser.add_argument("--model", help="a trained model directory (default: train one)")
    parser.add_argument("--preset", default="rsc15-xe")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "int8"])
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)

    from tf_gru4rec.serving.dev_server import DevServer
    from tf_gru4rec.serving.export import export_model
    from tf_gru4rec.serving.replay import replay
    from tf_gru4rec.training import load_model_dir

    train_file = os.path.join(args.data, "yoochoose-clicks-100k_train_full.txt.gz")
    test_file = os.path.join(args.data, "yoochoose-clicks-100k_test.txt.gz")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if not model_dir:
            model_dir = os.path.join(tmp, "model")
            subprocess.run([sys.executable, "-m", "tf_gru4rec.cli", "-v", "warning", "train",
                            "--train", train_file, "--test", test_file, "--out", model_dir,
                            "--preset", args.preset, "--set", f"n_epochs={args.epochs}"],
                           check=True, env=dict(os.environ, PYTHONPATH=REPO))
        trained = load_model_dir(model_dir)
        model, vocabulary = trained.model, trained.vocabulary
        for precision in args.precisions:
            base = os.path.join(tmp, precision)
            path = export_model(model, vocabulary, base, score_precision=precision)
            with DevServer(base, port=0) as server:
                start = time.perf_counter()
                metrics = replay(server.target, test_file)
                seconds = time.perf_counter() - start
            results[precision] = {"recall@20": metrics["recall@20"], "mrr@20": metrics["mrr@20"],
                                  "export_bytes": directory_bytes(path),
                                  "replay_seconds": seconds}
            print(precision, json.dumps(results[precision]), flush=True)
    exact = results.get("float32")
    if exact:
        for result in results.values():
            for key in ("recall@20", "mrr@20"):
                result[f"{key}_change_%"] = 100.0 * (result[key] / exact[key] - 1.0)
    report = {"benchmark": "serving_precision_replay", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
              "command": "PYTHONPATH=. python benchmarks/serving_precision_replay.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              "preset": args.preset, "epochs": args.epochs, "results": results}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("\n| scoring table | Recall@20 | change | MRR@20 | change | export size |\n"
          "|---|---|---|---|---|---|")
    for precision, r in results.items():
        print(f"| {precision} | {r['recall@20']:.4f} | {r.get('recall@20_change_%', 0):+.2f}% | "
              f"{r['mrr@20']:.4f} | {r.get('mrr@20_change_%', 0):+.2f}% | "
              f"{r['export_bytes'] / 1e6:.1f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
