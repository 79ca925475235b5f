"""Batch-1 latency of two checkouts' exports side by side, through TensorFlow's C API.

For each round and each checkout (alternating), a fresh process imports `tf_gru4rec` from that
checkout, exports a model with random weights (`--items` items, 100 units, k=20, no warmup),
loads it with `TF_LoadSessionFromSavedModel` (this checkout's `tf_gru4rec/serving/capi.py`,
loaded by file path so that an older checkout without it works) and times `--clicks`
one-row `serving_default` requests (new session each) and `step` requests (zero state); the
median after 20 warm-up requests is kept. An older checkout can be unpacked with
`git archive <commit> tf_gru4rec | tar -x -C <dir>`.

  PYTHONPATH=. python benchmarks/serving_ab_latency.py --checkouts /tmp/base . --rounds 5

Prints one JSON line per run and the medians per checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPI = os.path.join(REPO, "tf_gru4rec", "serving", "capi.py")


def measure(checkout: str, n_items: int, clicks: int) -> dict:
    """In this (fresh) process, with `checkout` first on sys.path."""
    sys.path.insert(0, checkout)
    import numpy as np

    import tf_gru4rec
    from tf_gru4rec.config import TrainConfig
    from tf_gru4rec.data.vocabulary import ItemVocabulary
    from tf_gru4rec.serving.export import export_model
    from tf_gru4rec.training import build_model

    assert os.path.abspath(tf_gru4rec.__file__).startswith(os.path.abspath(checkout))
    spec = importlib.util.spec_from_file_location("capi", CAPI)
    capi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(capi)
    config = TrainConfig(layers=[100], batch_size=32, n_sample=0, jit_compile=False, seed=0)
    model = build_model(config, n_items, item_support=np.arange(n_items) + 1)
    vocabulary = ItemVocabulary(np.arange(n_items, dtype=np.int64) + 100_000_000)
    rng = np.random.default_rng(0)
    items = (rng.integers(0, n_items, clicks) + 100_000_000).astype(str).astype(object)
    result = {"checkout": checkout}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, vocabulary, os.path.join(tmp, "m"), k=20, warmup=False)
        with capi.CApiBundle(path) as bundle:
            for signature in ("serving_default", "step"):
                seconds = []
                for i in range(clicks):
                    one = items[i:i + 1]
                    inputs = ({"session_id": np.asarray([f"s{i}"], object), "item_id": one}
                              if signature == "serving_default" else
                              {"item_id": one, "state": np.zeros((1, 100), np.float32)})
                    start = time.perf_counter()
                    bundle.run(signature, inputs)
                    seconds.append(time.perf_counter() - start)
                result[f"{signature}_ms"] = float(np.median(seconds[20:])) * 1e3
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkouts", nargs=2, metavar=("A", "B"), help="two checkouts")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--clicks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.child:
        checkout, n_items, clicks = args.child
        print(json.dumps(measure(checkout, int(n_items), int(clicks))))
        return 0
    if not args.checkouts:
        parser.error("--checkouts A B is required")
    import numpy as np

    runs = []
    for _ in range(args.rounds):
        for checkout in args.checkouts:
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", os.path.abspath(checkout),
                 str(args.items), str(args.clicks)], capture_output=True, text=True,
                check=True, timeout=1800, env=dict(os.environ, PYTHONPATH=checkout))
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    for checkout in args.checkouts:
        mine = [r for r in runs if r["checkout"] == os.path.abspath(checkout)]
        print(checkout, {key: round(float(np.median([r[key] for r in mine])), 2)
                         for key in ("serving_default_ms", "step_ms")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
