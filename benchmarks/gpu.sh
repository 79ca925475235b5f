#!/usr/bin/env bash
# GPU benchmark: one prepared script for a lent GPU machine (finishes in well under 8 minutes).
# Installs what it needs, checks the GPU is seen, then measures training events/s (the compiled
# XLA block, fp32; no mixed-precision variant yet) and serving (latency, breakdown, throughput
# on TF Serving's loading path), and prints a short table.
#   bash benchmarks/gpu.sh [OUT_DIR]
# Needs a machine that can pip-install TensorFlow 2.21 with CUDA (or has it). The GPU machines
# this project's sessions may be lent have no TensorFlow, no network, and a 64 MiB limit on what
# can be carried to them (the TensorFlow wheel alone is ~600 MB), so it has not run there.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
python3 -m pip install -q "tensorflow[and-cuda]==2.21.0" "keras==3.15.1" pandas pyarrow grpcio \
  "tensorflow-serving-api==2.21.0" 2>&1 | tail -2 || true
python3 - <<'PY'
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("GPUs:", gpus)
assert gpus, "no GPU visible to TensorFlow"
PY
# Training: rsc15-xe settings on synthetic logs (10k and 1M items), 2 epochs of 1,500 steps.
timeout 300 python3 benchmarks/run.py --repeats 1 --epochs 2 --synthetic-items 10000 1000000 \
  --synthetic-steps 1500 --data /nonexistent --out "$OUT/gpu_speed.json"
# Serving, all on TF Serving's loading path (the session-based loader), 50k items:
# latency at batch 1 in process and through the gRPC dev server; where a click's time goes
# (float32 / bfloat16 / int8 scoring tables); throughput at 1, 8 and 32 clients with and
# without TF Serving's batching (50k and 1M items, 100 units).
timeout 200 python3 benchmarks/serving_latency.py --seconds 5 --throughput-seconds 5 \
  --out "$OUT/gpu_serving_latency.json" || true
timeout 300 python3 benchmarks/serving_breakdown.py --calls 500 --seconds 5 \
  --out "$OUT/gpu_serving_breakdown.json" || true
timeout 600 python3 benchmarks/serving_throughput.py --units 100 --seconds 5 \
  --out "$OUT/gpu_serving_throughput.json" || true
# Multi-worker training: fit, the custom loop on 1 and 2 workers, and --mirrored over all GPUs;
# bytes all-reduced per step at 10k / 100k / 1M items.
timeout 1800 python3 benchmarks/distributed.py --mirrored --out "$OUT/gpu_distributed.json" || true
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
