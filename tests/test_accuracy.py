"""Paper-level accuracy on the real RSC15 sample, and parity on the trivago sample (slow: run
with `pytest -m slow`).

10 epochs, train_full -> test, all items ranked, conservative ties, seed 0. The bars of
rsc15-xe and paper2016-top1 are the core issue's; issue 12 added rsc15-bprmax and the 2016
BPR and cross-entropy settings. Each bar sits below the lowest of three seeds measured with
benchmarks/accuracy.py (BENCHMARKS.md, benchmarks/results/accuracy_issue12.json); the
original implementation's numbers on the same files are beside them (REPRODUCTION.md).
"""

import os

import pytest

from tf_gru4rec.config import load_preset
from tf_gru4rec.data.io import read_events
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.evaluation import evaluate
from tf_gru4rec.training import train

# preset: (Recall@20, MRR@20) bars. Measured, 3 seeds: see the comments; original: ANCHORS.md.
BARS = {
    # The 2018 presets with the port's cell (issue 19): 3 seeds 0.678-0.682 / 0.355-0.361 and
    # 0.578-0.589 / 0.283-0.293 (before: 0.675-0.679 and 0.557-0.580 over 6 seeds).
    "rsc15-xe": (0.665, 0.350),  # original 0.6806 / 0.3576
    "rsc15-bprmax": (0.56, 0.275),  # original 0.576 (0.563-0.586) / 0.288
    "paper2016-top1": (0.49, 0.235),  # 0.532-0.539 / 0.268-0.274; original 0.535 / 0.274
    "paper2016-bpr": (0.58, 0.29),  # 0.602-0.614 / 0.307-0.310; original: not measured
    "paper2016-xe": (0.37, 0.17),  # 0.389-0.403 / 0.185-0.198; original: 0.390 / 0.186
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(BARS))
def test_ten_epochs_reach_the_accuracy_bar(rsc15_paths, preset):
    train_path, test_path = rsc15_paths
    config = load_preset(preset).replace(seed=0)
    events = read_events(train_path)
    vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    log = SessionLog.from_events(events, vocabulary)
    result = train(config, log, verbose=0)
    metrics = evaluate(result.model, SessionLog.from_events(read_events(test_path), vocabulary),
                       config.cutoffs, config.tie_mode)
    recall_bar, mrr_bar = BARS[preset]
    assert metrics["recall@20"] >= recall_bar, metrics
    assert metrics["mrr@20"] >= mrr_bar, metrics


# Two workers against one at the same global batch (rsc15-xe, seed 0, 10 epochs). A replica's
# loss sees its own 16 in-batch targets instead of 32 (plus its own 2048 extra negatives), so
# the runs differ; "within seed noise" is read off measured spreads (BENCHMARKS.md, Multi-worker
# training): one process over seeds 0-2 spans 0.675-0.679 / 0.357-0.362. Measured 2026-12-03:
# one process 0.6765 / 0.3572, 2 workers 0.6789 / 0.3638 (7.4 min for the test).
WORKER_TOLERANCE = (0.012, 0.012)


@pytest.mark.slow
def test_two_workers_reach_single_worker_accuracy(rsc15_paths, tmp_path):
    import json
    import os
    import subprocess
    import sys

    train_path, test_path = rsc15_paths
    config = load_preset("rsc15-xe").replace(seed=0)
    events = read_events(train_path)
    vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    single = evaluate(train(config, SessionLog.from_events(events, vocabulary), verbose=0).model,
                      SessionLog.from_events(read_events(test_path), vocabulary),
                      config.cutoffs, config.tie_mode)
    done = subprocess.run(
        [sys.executable, "-m", "tf_gru4rec.cli", "-v", "WARNING", "train", "--train", train_path,
         "--test", test_path, "--out", str(tmp_path / "m"), "--preset", "rsc15-xe", "--seed", "0",
         "--workers", "2"], capture_output=True, text=True, timeout=3600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    workers = json.loads(done.stdout)
    print(f"1 process: {single['recall@20']:.4f} / {single['mrr@20']:.4f}; 2 workers: "
          f"{workers['recall@20']:.4f} / {workers['mrr@20']:.4f}")
    assert len(set(workers["replica_weight_digests"])) == 1
    assert abs(workers["recall@20"] - single["recall@20"]) <= WORKER_TOLERANCE[0], (workers,
                                                                                     single)
    assert abs(workers["mrr@20"] - single["mrr@20"]) <= WORKER_TOLERANCE[1], (workers, single)


# The trivago RecSys 2019 sample (repeat-heavy: the next item is the current one in ~94% of
# events), prepared as benchmarks/parity.py prepares it, rsc15-xe with n_sample=512, 3 epochs,
# seed 0. Measured side by side (BENCHMARKS.md, "Parity with the original"): ours 0.954-0.967
# / 0.886-0.897 over seeds 0-2, the PyTorch port 0.960-0.965 / 0.885-0.902. With the former
# reset-before cell and exact-logsumexp cross-entropy ours was 0.950-0.957 / 0.814-0.837.
TRIVAGO_BARS = (0.95, 0.87)
ITEM_ACTIONS = ("interaction item image,interaction item info,interaction item rating,"
                "interaction item deals,search for item,clickout item")


@pytest.fixture(scope="module")
def trivago_prepared(tmp_path_factory):
    from conftest import trivago_file

    from tf_gru4rec.cli import main

    raw = trivago_file()
    if not os.path.exists(raw):
        pytest.skip(f"the trivago sample not found at {raw} (set TF_GRU4REC_TRIVAGO)")
    out = tmp_path_factory.mktemp("trivago") / "prepared"
    assert main(["-v", "WARNING", "prepare", "log", "--input", raw, "--out", str(out),
                 "--session-col", "session_id", "--item-col", "reference", "--time-col",
                 "timestamp", "--keep", f"action_type={ITEM_ACTIONS}"]) == 0
    return str(out / "train.tsv"), str(out / "test.tsv")


@pytest.mark.slow
def test_trivago_reaches_the_original_after_three_epochs(trivago_prepared):
    train_path, test_path = trivago_prepared
    config = load_preset("rsc15-xe").replace(seed=0, n_sample=512, n_epochs=3)
    events = read_events(train_path)
    vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    result = train(config, SessionLog.from_events(events, vocabulary), verbose=0)
    metrics = evaluate(result.model, SessionLog.from_events(read_events(test_path), vocabulary),
                       config.cutoffs, config.tie_mode)
    print(f"trivago, 3 epochs: {metrics['recall@20']:.4f} / {metrics['mrr@20']:.4f}")
    assert metrics["recall@20"] >= TRIVAGO_BARS[0], metrics
    assert metrics["mrr@20"] >= TRIVAGO_BARS[1], metrics
