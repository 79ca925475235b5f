"""Accuracy and training speed of presets on the RSC15 sample, several seeds.

    python benchmarks/accuracy.py --data ../shared/data/rsc15_100k \
        --presets rsc15-xe paper2016-top1 --seeds 0 1 2 --out benchmarks/results/accuracy.json

Writes one JSON record per (preset, seed) with Recall@K / MRR@K (conservative ties), training
seconds and events per second, and prints a Markdown summary (means over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_one(preset: str, seed: int, train_path: str, test_path: str, overrides: dict) -> dict:
    from tf_gru4rec.config import load_preset
    from tf_gru4rec.data.io import read_events
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.vocabulary import ItemVocabulary
    from tf_gru4rec.evaluation import evaluate
    from tf_gru4rec.training import train

    config = load_preset(preset).with_overrides({"seed": str(seed), **overrides})
    events = read_events(train_path)
    vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    log = SessionLog.from_events(events, vocabulary)
    test_log = SessionLog.from_events(read_events(test_path), vocabulary)
    result = train(config, log, verbose=0)
    metrics = evaluate(result.model, test_log, config.cutoffs, config.tie_mode)
    return {"preset": preset, "seed": seed, "overrides": overrides,
            "train_seconds": result.train_seconds,
            "train_events_per_second": result.events_per_second, **metrics}


def summarise(records: list[dict]) -> str:
    lines = ["| preset | seeds | Recall@20 mean (min-max) | MRR@20 mean (min-max) "
             "| train events/s |", "|---|---|---|---|---|"]
    for preset in dict.fromkeys(r["preset"] for r in records):
        rs = [r for r in records if r["preset"] == preset]
        rec = [r["recall@20"] for r in rs]
        mrr = [r["mrr@20"] for r in rs]
        eps = statistics.median(r["train_events_per_second"] for r in rs)
        lines.append(f"| {preset} | {len(rs)} | {statistics.mean(rec):.4f} "
                     f"({min(rec):.4f}-{max(rec):.4f}) | {statistics.mean(mrr):.4f} "
                     f"({min(mrr):.4f}-{max(mrr):.4f}) | {eps:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("TF_GRU4REC_DATA",
                                                         "../shared/data/rsc15_100k"))
    parser.add_argument("--presets", nargs="+", default=["rsc15-xe", "paper2016-top1"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="benchmarks/results/accuracy.json")
    args = parser.parse_args()
    train_path = os.path.join(args.data, "yoochoose-clicks-100k_train_full.txt.gz")
    test_path = os.path.join(args.data, "yoochoose-clicks-100k_test.txt.gz")
    overrides = dict(kv.split("=", 1) for kv in args.set)
    records = []
    for preset in args.presets:
        for seed in args.seeds:
            record = run_one(preset, seed, train_path, test_path, overrides)
            records.append(record)
            print(json.dumps({k: record[k] for k in ("preset", "seed", "recall@20", "mrr@20",
                                                     "train_events_per_second")}), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": f"{platform.machine()} {os.cpu_count()} cpus",
                   "date": time.strftime("%Y-%m-%d"), "records": records}, f, indent=2)
    print(summarise(records))


if __name__ == "__main__":
    main()
