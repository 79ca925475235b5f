"""XLA compiler flags that the training step needs to run fast on CPU.

`--xla_cpu_copy_insertion_use_region_analysis=true`: without it, XLA copies a whole item table
(or the optimizer's row scratch) inside the training loop whenever a step scatters rows into it
after reading it, which made a 1M-item step ~1.5x slower and a 10k-item step ~1.4x slower
(measured in benchmarks/; no effect at a few thousand items, where the row update is dense).

XLA reads `XLA_FLAGS` once, when the process compiles its first XLA program, so `apply()` runs
when `tf_gru4rec.nn.model` is imported: import it before compiling anything else with XLA. A flag
already in `XLA_FLAGS` is left as it is; `TF_GRU4REC_XLA_FLAGS=0` opts out.
"""

from __future__ import annotations

import os

FLAGS = ("--xla_cpu_copy_insertion_use_region_analysis=true",)


def apply(env=None) -> None:
    """Add `FLAGS` to `XLA_FLAGS` in `env` (default: os.environ), unless opted out or set."""
    env = os.environ if env is None else env
    if env.get("TF_GRU4REC_XLA_FLAGS", "1") == "0":
        return
    flags = env.get("XLA_FLAGS", "")
    for flag in FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    env["XLA_FLAGS"] = flags
