#!/bin/bash
# Start-up cost of the CLI: wall time of `tf-gru4rec train` on a tiny file (1,340 events,
# quick preset, 1 epoch), two checkouts interleaved run by run, and how many TensorFlow C++
# start-up lines each printed on stderr.
# usage: benchmarks/cli_startup.sh BEFORE_CHECKOUT AFTER_CHECKOUT [RUNS] (needs tf-gru4rec on PATH)
set -e
before=$(realpath "$1") after=$(realpath "$2") runs=${3:-7}
work=$(mktemp -d)
cd "$work"  # not a checkout: `python -m` (the huge-page re-exec) puts the cwd first on sys.path
PYTHONPATH=$after python -m tf_gru4rec.cli -v WARNING generate --out "$work/data" --items 50 \
    --sessions 300 >/dev/null
for i in $(seq 1 "$runs"); do
  for label in before after; do
    checkout=${!label}
    s=$(date +%s.%N)
    PYTHONPATH=$checkout tf-gru4rec train --train "$work/data/train.tsv" --out "$work/m" \
        --preset quick --set n_epochs=1 >/dev/null 2>"$work/err"
    e=$(date +%s.%N)
    lines=$(grep -c -E "oneDNN|cuda|cuInit|absl" "$work/err" || true)
    echo "$label $(echo "$e - $s" | bc) $lines"
  done
done
rm -rf "$work"
