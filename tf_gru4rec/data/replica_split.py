"""Which replica trains each session: whole sessions, each replica keeping their start-time
order, dealt so that the replicas' session-parallel passes end close together.

A replica's epoch is one session-parallel pass over its sessions, and all replicas run as many
steps as the longest pass. Dealing session s to replica s % R ("interleaved") balances the
events, but a long session that starts late runs alone at the end of its replica's pass: on
the trivago sample, 2 replicas of 32 slots run 857 steps where one process's 1,420 shared out
would be 710 (BENCHMARKS.md, "Shard tails"). With `replica_split="balanced"`, when the
interleaved deal leaves the longest pass more than `TAIL_TOLERANCE` times that share, the
sessions are dealt again (`balanced_deal`) and the new deal is kept if its longest pass is
shorter; otherwise the interleaved deal stands, so logs without such a tail are split as with
"interleaved" (the default). The new deal can give the replicas unequal numbers of events; with
local SGD (`sync="block"`) that cost the trivago sample 0.2-1.5 points of MRR@20
(BENCHMARKS.md).
"""

from __future__ import annotations

import heapq

import numpy as np

from tf_gru4rec.data.session_parallel import slot_schedule

TAIL_TOLERANCE = 1.05
SHARE_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6)  # replica 0's target share, times 1 / R


def pass_steps(steps: np.ndarray, slots: int) -> int:
    """Steps of one session-parallel pass with `slots` slots over sessions of `steps` [S]
    steps each (events - 1), in order (`session_parallel.slot_schedule`)."""
    steps = np.asarray(steps)[np.asarray(steps) > 0]
    if not len(steps):
        return 0
    _, start_step = slot_schedule(steps, slots)
    return int((start_step + steps).max())


def _deal(steps: np.ndarray, slots: int, shares: np.ndarray, deadline: int):
    """int [S] replica of each session, or None when some session cannot end by `deadline`.

    Sessions go in order to the replica furthest below its target share of the steps, among
    those whose pass would still end the session by `deadline` (the lowest index on ties)."""
    heaps = [[(0, slot) for slot in range(slots)] for _ in shares]
    shares = [float(share) for share in shares]
    load = [0.0] * len(shares)
    owner = [0] * len(steps)
    for k, n in enumerate(steps.tolist()):
        if n <= 0:
            continue
        chosen, lowest = -1, 0.0
        for r, heap in enumerate(heaps):
            if heap[0][0] + n <= deadline:
                ratio = (load[r] + n) / shares[r]
                if chosen < 0 or ratio < lowest:
                    chosen, lowest = r, ratio
        if chosen < 0:
            return None
        free_at, slot = heaps[chosen][0]
        heapq.heapreplace(heaps[chosen], (free_at + n, slot))
        owner[k], load[chosen] = chosen, load[chosen] + n
    return np.asarray(owner, dtype=np.int64)


def balanced_deal(steps: np.ndarray, n_replicas: int, slots: int, upper: int,
                  good_enough: float = 0.0):
    """(longest pass, int [S] replica of each session) of the best deal found whose passes
    end by `upper`, or None: for replica 0's target share in `SHARE_FRACTIONS` / R (the others
    share the rest evenly), the least deadline that admits every session, by bisection. The
    search stops at the first share whose longest pass is at most `good_enough`."""
    lower = max(int(np.ceil(steps.sum() / (n_replicas * slots))), int(steps.max(initial=0)))
    best = None
    for fraction in SHARE_FRACTIONS:
        first = fraction / n_replicas
        shares = np.array([first] + [(1 - first) / (n_replicas - 1)] * (n_replicas - 1))
        owner = _deal(steps, slots, shares, upper)  # the deal at deadline hi, kept
        if owner is None:
            continue
        lo, hi = lower, upper
        while lo < hi:
            mid = (lo + hi) // 2
            dealt = _deal(steps, slots, shares, mid)
            if dealt is None:
                lo = mid + 1
            else:
                hi, owner = mid, dealt
        longest = max(pass_steps(steps[owner == r], slots) for r in range(n_replicas))
        if best is None or longest < best[0]:
            best = (longest, owner)
        if best[0] <= good_enough:
            break
    return best


def replica_of_sessions(steps: np.ndarray, n_replicas: int, slots: int) -> np.ndarray:
    """int [S] the replica of each session (module docstring); `steps` [S] in log order."""
    steps = np.asarray(steps, dtype=np.int64)
    interleaved = np.arange(len(steps)) % n_replicas
    if n_replicas == 1 or not (steps > 0).any():
        return interleaved
    longest = max(pass_steps(steps[r::n_replicas], slots) for r in range(n_replicas))
    share = pass_steps(steps, slots) / n_replicas
    if longest <= TAIL_TOLERANCE * share:
        return interleaved
    best = balanced_deal(steps, n_replicas, slots, longest, good_enough=share)
    return best[1] if best is not None and best[0] < longest else interleaved
