"""Transparent huge pages for the item tables, through glibc's malloc.

Training on a large catalogue reads and writes a few thousand random rows of item tables of
hundreds of MB every step (weights, Adagrad accumulator, momentum). With 4 KiB pages each
row is a TLB miss; on CPU this made a 1M-item step ~2x slower than a 10k-item one (measured
in benchmarks/; with a few thousand items huge pages cost ~10% instead).
glibc (2.35+) backs large allocations with transparent huge pages when the process starts
with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, which Linux honours when
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise`` (the usual
defaults). The tunable is read at process start, so the `tf-gru4rec` command re-executes
itself once with it set; set ``TF_GRU4REC_HUGEPAGES=0`` to opt out. Library users set the
variable in their own environment.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def environment(env=None) -> dict:
    """A copy of `env` (default: os.environ) with the huge-page tunable added."""
    env = dict(os.environ if env is None else env)
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
        env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return env


def wanted() -> bool:
    """True when this process should restart with huge pages: Linux, not opted out, and
    the tunable not yet set."""
    return (sys.platform.startswith("linux")
            and os.environ.get("TF_GRU4REC_HUGEPAGES", "1") != "0"
            and "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""))


def reexec_with_hugepages(module: str, argv: list[str]) -> None:
    """Replace this process by `python -m module argv...` with the tunable set (returns only
    when no restart is wanted)."""
    if wanted():
        os.execve(sys.executable, [sys.executable, "-m", module, *argv], environment())
