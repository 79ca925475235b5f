"""Steps per worker of an epoch under two ways of sharding the sessions: the length of each
worker's session-parallel pass, which is what its epoch takes (no training is run).

    PYTHONPATH=. python benchmarks/shard_tails.py [--datasets rsc15 trivago bundled] \
        [--replicas 2] [--slots 32] [--out benchmarks/results/shard_tails.json]

For each log (prepared as benchmarks/block_sync.py prepares it), with `--slots` slots per
worker (32: "B each" in BENCHMARKS.md):
  - one process's steps with the same slots, and the least a worker could run: its share of
    them (one process / replicas);
  - "interleaved": what `tf_gru4rec.data.distributed_input` does, session s to worker s % R;
  - "balanced": a split not built into the package, simulated here. Sessions are dealt in
    start-time order (each worker keeps that order) to the worker furthest below its target
    share of the events, among the workers whose pass would still end by step T (a session
    goes to the slot that frees first, as in a pass). The least T that admits every session
    is found by bisection, for worker 0's share in {1/R, 0.9/R, ..., 0.6/R} (the others
    split the rest evenly), and the best share is kept.
Per worker the bound on speed against one process, from the tails alone, is
one process's steps / (replicas x the longest worker's steps).
"""

from __future__ import annotations

import argparse
import heapq
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
from block_sync import bundled_files  # noqa: E402  (benchmarks/block_sync.py)
from parity import dataset_files  # noqa: E402  (benchmarks/parity.py)
from run import machine  # noqa: E402  (benchmarks/run.py)


def pass_steps(steps: np.ndarray, slots: int) -> int:
    """Steps of one session-parallel pass over sessions of `steps` steps each, in order."""
    heap = [(0, slot) for slot in range(slots)]
    end = 0
    for n in steps[steps > 0]:
        free_at, slot = heapq.heappop(heap)
        heapq.heappush(heap, (free_at + int(n), slot))
        end = max(end, free_at + int(n))
    return end


def deal(steps: np.ndarray, slots: int, shares: np.ndarray, deadline: int):
    """The worker of each session (see the module docstring), or None if some session cannot
    end by `deadline` on any worker."""
    heaps = [[(0, slot) for slot in range(slots)] for _ in shares]
    load = np.zeros(len(shares))
    owner = np.zeros(len(steps), dtype=np.int64)
    for k, n in enumerate(steps):
        if n <= 0:
            continue
        fits = [r for r in range(len(shares)) if heaps[r][0][0] + n <= deadline]
        if not fits:
            return None
        r = min(fits, key=lambda r: ((load[r] + n) / shares[r], r))
        free_at, slot = heapq.heappop(heaps[r])
        heapq.heappush(heaps[r], (free_at + int(n), slot))
        owner[k], load[r] = r, load[r] + n
    return owner


def balanced(steps: np.ndarray, replicas: int, slots: int, upper: int) -> dict:
    """The best simulated balanced split (module docstring) with deadlines up to `upper`."""
    lower = max(int(np.ceil(steps.sum() / (replicas * slots))), int(steps.max()))
    best = None
    for fraction in (1.0, 0.9, 0.8, 0.7, 0.6):
        first = fraction / replicas
        shares = np.array([first] + [(1 - first) / (replicas - 1)] * (replicas - 1))
        if deal(steps, slots, shares, upper) is None:
            continue
        lo, hi = lower, upper
        while lo < hi:
            mid = (lo + hi) // 2
            if deal(steps, slots, shares, mid) is None:
                lo = mid + 1
            else:
                hi = mid
        owner = deal(steps, slots, shares, hi)
        per_worker = [pass_steps(steps[owner == r], slots) for r in range(replicas)]
        if best is None or max(per_worker) < max(best["steps_per_worker"]):
            best = {"worker_0_share_target": first, "steps_per_worker": per_worker,
                    "events_share": [float(steps[owner == r].sum() / steps.sum())
                                     for r in range(replicas)]}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", default=os.path.join(REPO, "..", "shared", "data"))
    parser.add_argument("--datasets", nargs="+", default=["rsc15", "trivago", "bundled"])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                       "tf_gru4rec_parity"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "shard_tails.json"))
    args = parser.parse_args()
    from tf_gru4rec.data.io import read_events
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.vocabulary import ItemVocabulary

    records = []
    for dataset in args.datasets:
        if dataset == "bundled":
            train, _ = bundled_files(args.work)
        else:
            train, _ = dataset_files(dataset, args.shared_data, args.work)
        if not os.path.exists(train):
            print(f"{dataset}: {train} not found; skipped", file=sys.stderr)
            continue
        events = read_events(train)
        vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
        log = SessionLog.from_events(events, vocabulary)
        steps = log.lengths - 1  # start-time order, as the package keeps it
        one = pass_steps(steps, args.slots)
        interleaved = [pass_steps(steps[r::args.replicas], args.slots)
                       for r in range(args.replicas)]
        best = balanced(steps, args.replicas, args.slots, max(interleaved))
        record = {"dataset": dataset, "sessions": int(log.n_sessions),
                  "one_process_steps": one, "interleaved_steps_per_worker": interleaved,
                  "balanced": best,
                  "bound_interleaved": one / (args.replicas * max(interleaved)),
                  "bound_balanced": (one / (args.replicas * max(best["steps_per_worker"]))
                                     if best else None)}
        records.append(record)
        balanced_text = ("no better split found" if best is None else
                         f"balanced {best['steps_per_worker']} (events "
                         f"{' / '.join(f'{s:.2f}' for s in best['events_share'])}; bound "
                         f"{record['bound_balanced']:.2f}x)")
        print(f"{dataset}: one process {one} steps; per worker: interleaved {interleaved} "
              f"(bound {record['bound_interleaved']:.2f}x), {balanced_text}")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": "PYTHONPATH=. python benchmarks/shard_tails.py " + " ".join(sys.argv[1:]),
              "replicas": args.replicas, "slots": args.slots, "records": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
