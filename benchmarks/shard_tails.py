"""Steps per worker of an epoch under two ways of sharding the sessions: the length of each
worker's session-parallel pass, which is what its epoch takes (no training is run).

    PYTHONPATH=. python benchmarks/shard_tails.py [--datasets rsc15 trivago bundled] \
        [--replicas 2] [--slots 32] [--out benchmarks/results/shard_tails.json]

For each log (prepared as benchmarks/block_sync.py prepares it), with `--slots` slots per
worker (32: "B each" in BENCHMARKS.md):
  - one process's steps with the same slots, and the least a worker could run: its share of
    them (one process / replicas);
  - "interleaved": what `tf_gru4rec.data.distributed_input` does, session s to worker s % R;
  - "balanced": `replica_split.balanced_deal`, whatever the tail. Sessions are dealt in
    start-time order (each worker keeps that order) to the worker furthest below its target
    share of the events, among the workers whose pass would still end by step T (a session
    goes to the slot that frees first, as in a pass). The least T that admits every session
    is found by bisection, for worker 0's share in {1/R, 0.9/R, ..., 0.6/R} (the others
    split the rest evenly), and the best share is kept;
  - "package": what training uses with `--set replica_split=balanced`
    (`replica_split.replica_of_sessions`): interleaved, unless its longest pass exceeds one
    process's share by 5% and the balanced deal is shorter (the default is interleaved).
Per worker the bound on speed against one process, from the tails alone, is
one process's steps / (replicas x the longest worker's steps).
With --shuffled-epochs N, also the longest worker's pass in each of N epochs whose sessions
are shuffled as `shuffle_sessions=True` shuffles them (each worker's own, seed 0), for the
interleaved deal and the balanced one (which is why training refuses the balanced deal with
shuffled sessions), and one process's pass over the same epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
from block_sync import log_files  # noqa: E402  (benchmarks/block_sync.py)
from run import machine  # noqa: E402  (benchmarks/run.py)

from tf_gru4rec.data.replica_split import (  # noqa: E402
    balanced_deal,
    pass_steps,
    replica_of_sessions,
)
from tf_gru4rec.data.session_parallel import session_order  # noqa: E402


def shuffled_passes(log, owner, replicas: int, slots: int, epochs: int) -> list[int]:
    """The longest worker's pass in each of `epochs` epochs, each worker's sessions of `log`
    (`owner` [S]: their worker) in the order training shuffles them (`session_order` with
    run seed 0, one part)."""
    parts = [log.subset(np.flatnonzero(owner == r)) for r in range(replicas)]
    return [max(pass_steps((part.lengths - 1)[session_order(part, True, epoch)], slots)
                for part in parts) for epoch in range(epochs)]


def summary(values: list[int]) -> dict:
    return {"median": float(np.median(values)), "min": int(min(values)),
            "max": int(max(values))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", default=os.path.join(REPO, "..", "shared", "data"))
    parser.add_argument("--datasets", nargs="+", default=["rsc15", "trivago", "bundled"])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--shuffled-epochs", type=int, default=0, metavar="N")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                       "tf_gru4rec_parity"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "shard_tails.json"))
    args = parser.parse_args()
    from tf_gru4rec.data.io import read_events
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.vocabulary import ItemVocabulary

    records = []
    for dataset in args.datasets:
        files = log_files(dataset, args.shared_data, args.work)
        if files is None:
            continue
        events = read_events(files[0])
        vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
        log = SessionLog.from_events(events, vocabulary)
        steps = log.lengths - 1  # start-time order, as the package keeps it
        one = pass_steps(steps, args.slots)
        interleaved = [pass_steps(steps[r::args.replicas], args.slots)
                       for r in range(args.replicas)]
        found = balanced_deal(steps, args.replicas, args.slots, max(interleaved))
        best = None if found is None else {
            "steps_per_worker": [pass_steps(steps[found[1] == r], args.slots)
                                 for r in range(args.replicas)],
            "events_share": [float(steps[found[1] == r].sum() / steps.sum())
                             for r in range(args.replicas)]}
        owner = replica_of_sessions(steps, args.replicas, args.slots)
        package = [pass_steps(steps[owner == r], args.slots) for r in range(args.replicas)]
        record = {"dataset": dataset, "sessions": int(log.n_sessions),
                  "one_process_steps": one, "interleaved_steps_per_worker": interleaved,
                  "balanced": best, "package_steps_per_worker": package,
                  "bound_interleaved": one / (args.replicas * max(interleaved)),
                  "bound_balanced": (one / (args.replicas * max(best["steps_per_worker"]))
                                     if best else None)}
        if args.shuffled_epochs:
            epochs = args.shuffled_epochs
            interleaved_owner = np.arange(len(steps)) % args.replicas
            record["shuffled_longest_pass"] = {
                "one process": summary(shuffled_passes(log, np.zeros(len(steps), int), 1,
                                                       args.slots, epochs)),
                "interleaved": summary(shuffled_passes(log, interleaved_owner,
                                                       args.replicas, args.slots, epochs)),
                "replica_split=balanced": summary(shuffled_passes(
                    log, owner, args.replicas, args.slots, epochs))}
            print(f"{dataset}, {epochs} shuffled epochs, longest pass (median, min, max): " +
                  "; ".join(f"{k} {v['median']:g} ({v['min']}-{v['max']})"
                            for k, v in record["shuffled_longest_pass"].items()))
        records.append(record)
        balanced_text = ("no better split found" if best is None else
                         f"balanced {best['steps_per_worker']} (events "
                         f"{' / '.join(f'{s:.2f}' for s in best['events_share'])}; bound "
                         f"{record['bound_balanced']:.2f}x)")
        print(f"{dataset}: one process {one} steps; per worker: interleaved {interleaved} "
              f"(bound {record['bound_interleaved']:.2f}x), {balanced_text}; "
              f"with replica_split=balanced: {package}")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": "PYTHONPATH=. python benchmarks/shard_tails.py " + " ".join(sys.argv[1:]),
              "replicas": args.replicas, "slots": args.slots, "records": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
