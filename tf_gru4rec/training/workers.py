"""Worker processes for multi-worker training: the cluster from `TF_CONFIG`, and `train
--workers N`, which starts N workers on 127.0.0.1 (for trying a cluster on one machine).

Light on purpose (no TensorFlow): the launching process only starts and watches its workers.
On a cluster, each machine runs the same `tf-gru4rec train ...` command with its own
`TF_CONFIG` (README, "More than one machine").
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

logger = logging.getLogger(__name__)


def cluster_from_env(env=None) -> tuple[int, int] | None:
    """(number of workers, this worker's index) from `TF_CONFIG`, or None when it is unset.

    Raises ValueError naming the problem when `TF_CONFIG` is not a cluster of workers.
    """
    env = os.environ if env is None else env
    text = env.get("TF_CONFIG", "").strip()
    if not text:
        return None
    expected = ('expected {"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
                '"worker", "index": i}}')
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"TF_CONFIG {text[:200]!r} is not a cluster of workers ({error!r}); "
                         f"{expected}") from None
    if not isinstance(workers, list) or not workers:
        raise ValueError(f"TF_CONFIG cluster.worker {workers!r}: {expected}")
    if task.get("type") != "worker" or not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG task {task!r}: expected type 'worker' and an index below "
                         f"{len(workers)} (the number of workers)")
    other = sorted(set(config["cluster"]) - {"worker"})
    if other:
        raise ValueError(f"TF_CONFIG cluster jobs {other}: only 'worker' is used here (the first "
                         "worker, index 0, is the chief); " + expected)
    return len(workers), index


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct TCP ports free on `host` now (held open together while choosing)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster(n: int, host: str = "127.0.0.1") -> list[dict]:
    """The `TF_CONFIG` of each of `n` workers on `host`."""
    workers = [f"{host}:{port}" for port in free_ports(n, host)]
    return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            for i in range(n)]


def worker_environment(tf_config: dict, n: int, base: dict | None = None) -> dict:
    """The environment of one of `n` local workers: `base` (this process's) with its
    `TF_CONFIG`, and `TF_NUM_INTRAOP_THREADS` (unless set) this host's cores / n: the workers
    share the cores, and one XLA thread pool per core each is ~15% faster per step than
    each worker sizing its pools to the whole host (BENCHMARKS.md, "One training loop")."""
    env = {**(os.environ if base is None else base), "TF_CONFIG": json.dumps(tf_config)}
    env.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, len(os.sched_getaffinity(0)) // n)))
    return env


def launch_local_workers(n: int, argv: list[str], poll_seconds: float = 0.2) -> int:
    """Runs `python -m tf_gru4rec.cli *argv` as `n` workers on 127.0.0.1 and waits for them.

    Each worker gets its `TF_CONFIG`; they share this process's stdout (only the chief, worker
    0, writes the result) and stderr (log lines start with the worker's index). When a worker
    fails, the others are stopped (they would wait for it in the next all-reduce) and its exit
    code is returned; a signal to this process stops them all.
    """
    processes = []

    def stop_all(*_):
        for process in processes:
            if process.poll() is None:
                process.terminate()

    previous = signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(143)))
    try:
        for config in local_cluster(n):
            env = worker_environment(config, n)
            processes.append(subprocess.Popen([sys.executable, "-m", "tf_gru4rec.cli", *argv],
                                              env=env))
        logger.info("started %d workers on 127.0.0.1 (pids %s), %s intra-op threads each",
                    n, ", ".join(str(p.pid) for p in processes), env["TF_NUM_INTRAOP_THREADS"])
        while True:
            codes = [p.poll() for p in processes]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, code = failed[0]
                logger.error("worker %d exited with code %d; stopping the other workers",
                             index, code)
                stop_all()
                for process in processes:
                    process.wait()
                return code if code > 0 else 128 - code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        stop_all()
        for process in processes:
            process.wait()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_all()


def thread_count() -> int | None:
    """Threads of this process (Linux), logged per epoch: collectives must not leak them."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    except (OSError, StopIteration, ValueError):
        return None
