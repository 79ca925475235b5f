"""One matrix of `train` options at every scale: one process and 2 local worker processes
(`--workers 2`) run the same command with validation ranking, TensorBoard, JSON lines, early
stopping, mid-epoch backups with a kill and a rerun, and a warm start, through the same
training loop and callbacks (`tf_gru4rec.training.loop`).

Where the maths is equal the results must be equal: a killed and resumed run ends as the
uninterrupted one did (weights, optimizer state, metrics, validation history), at each scale;
2 workers end as 2 devices of one process (`--mirrored`, the same sharding and seeds); a run
stopped early keeps the weights of its best epoch, those of a run of that many epochs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tf_gru4rec.cli import main
from tf_gru4rec.training import load_model_dir
from tf_gru4rec.training.resume import LATEST

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK = "2 workers, sync block"
OVERLAP = "2 workers, sync overlap"
SCALES = {"one process": [], "2 workers": ["--workers", "2"],
          BLOCK: ["--workers", "2", "--sync", "block"],
          OVERLAP: ["--workers", "2", "--sync", "overlap"]}
# The 2-worker kill/rerun (27 s), early stopping (10-13 s at each scale) and every test of
# `--sync block` and `overlap` are `slow`: the default run keeps every option at one process
# and 2 workers and the kill/rerun of one process (tests/test_distributed.py checks the maths
# of block and overlap sync).
EVERY_OPTION_SCALES = [pytest.param("one process"), pytest.param("2 workers"),
                       pytest.param(BLOCK, marks=pytest.mark.slow),
                       pytest.param(OVERLAP, marks=pytest.mark.slow)]
SLOW_AT_TWO_WORKERS = [pytest.param("one process"),
                       pytest.param("2 workers", marks=pytest.mark.slow),
                       pytest.param(BLOCK, marks=pytest.mark.slow),
                       pytest.param(OVERLAP, marks=pytest.mark.slow)]
MODEL = ["--preset", "quick", "--set", "layers=16", "--set", "batch_size=16", "--set",
         "n_sample=32", "--set", "dropout_p_hidden=0.2", "--set", "dropout_p_embed=0.1",
         "--set", "steps_per_execution=10", "--seed", "3", "--verbose", "2"]


def _env() -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _train(args, scale, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tf_gru4rec.cli", "train", *args,
                           *SCALES[scale]], capture_output=True, text=True, timeout=timeout,
                          env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path).read().splitlines()]


def _weights(path) -> dict:
    """Every weight of a model directory (optimizer state excluded: not saved there)."""
    return {w.path.split("/", 1)[1]: w.numpy() for w in load_model_dir(str(path)).model.weights}


def _assert_same_weights(a, b, atol=0.0):
    want, got = _weights(a), _weights(b)
    assert want.keys() == got.keys()
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, atol=atol, rtol=0, err_msg=key)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic log, and a model trained one epoch on it (the warm start's base)."""
    out = tmp_path_factory.mktemp("matrix-data")
    assert main(["-v", "WARNING", "generate", "--out", str(out), "--items", "200",
                 "--sessions", "900"]) == 0
    train, test = str(out / "train.tsv"), str(out / "test.tsv")
    base = out / "base"
    assert main(["-v", "WARNING", "train", "--train", train, "--test", test, "--out", str(base),
                 *MODEL,
                 "--set", "n_epochs=1", "--verbose", "0"]) == 0
    return train, test, base


def _every_option(data, workdir, name, scale) -> list[str]:
    """Every option; backups mid-epoch too, except under `--sync overlap` (epoch ends only:
    it refuses --backup-every, tests/test_distributed.py)."""
    train, test, base = data
    mid_epoch = [] if scale == OVERLAP else ["--backup-every", "20"]
    return ["--train", train, "--test", test, "--valid", test, *MODEL, "--set", "n_epochs=3",
            "--warm-start", str(base), "--early-stopping", "5", *mid_epoch,
            "--backup-dir", str(workdir / f"{name}-backup"),
            "--tensorboard", str(workdir / f"{name}-tb"),
            "--log-json", str(workdir / f"{name}.jsonl"), "--out", str(workdir / name)]


def _kill_mid_epoch(args, scale, backup) -> tuple[dict, str]:
    """Runs the command and SIGKILLs it (one process) or worker 1 (2 workers) once a backup
    from the middle of epoch 2 or later exists (under `--sync overlap`, the backup of epoch
    1's end: the kill comes during epoch 2); returns that backup's meta and the stderr."""
    log = open(os.path.join(os.path.dirname(backup), "killed.stderr"), "w+")
    process = subprocess.Popen([sys.executable, "-m", "tf_gru4rec.cli", "-v", "INFO", "train",
                                *args, *SCALES[scale]], stdout=subprocess.DEVNULL, stderr=log,
                               text=True, env=_env())
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            assert process.poll() is None, "the run ended before a mid-epoch backup"
            meta = _meta(backup)
            if meta and meta["epoch"] >= 1 and (meta["step"] > 0 or scale == OVERLAP):
                break
            time.sleep(0.02)
        else:
            pytest.fail("no mid-epoch backup was written")
        if scale != "one process":
            log.seek(0)
            found = re.search(r"started 2 workers on 127.0.0.1 \(pids (\d+), (\d+)\)",
                              log.read())
            os.kill(int(found.group(2)), signal.SIGKILL)
            assert process.wait(timeout=60) == 128 + signal.SIGKILL
        else:
            os.kill(process.pid, signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    log.seek(0)
    text = log.read()
    log.close()
    return meta, text


def _meta(backup):
    try:
        with h5py.File(os.path.join(backup, LATEST), "r") as f:
            return json.loads(f["resume"].attrs["meta"])
    except (OSError, KeyError):
        return None


_WHOLE: dict = {}


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    """run(scale): the uninterrupted run with every option at that scale, once per module:
    (its workdir, the finished process, its metrics)."""

    def run(scale):
        if scale not in _WHOLE:
            workdir = tmp_path_factory.mktemp("whole")
            done = _train(_every_option(data, workdir, "whole", scale), scale)
            _WHOLE[scale] = workdir, done, json.loads(done.stdout)
        return _WHOLE[scale]

    return run


@pytest.mark.parametrize("scale", EVERY_OPTION_SCALES)
def test_every_option_at_every_scale(data, whole, scale, capsys):
    """Validation each epoch in the logs, JSON lines and TensorBoard; the backup removed at the
    end; the warm start's vocabulary; the loop's count of events; the model directory
    evaluates as its metrics say; on 2 workers identical replicas, quiet TensorFlow and no
    thread left behind by the collectives."""
    workdir, done, metrics = whole(scale)
    assert metrics["train_epochs"] == 3 and metrics["train_resumes"] == 0
    assert len(metrics["steps_per_epoch"]) == 3
    assert metrics["events_per_epoch"] == [metrics["train_events_per_epoch"]] * 3
    records = _lines(workdir / "whole.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(0 < r["val_mrr@20"] <= r["val_recall@20"] <= 1 for r in records)
    assert records[-1]["loss"] == pytest.approx(metrics["final_loss"], rel=1e-6)
    assert os.listdir(workdir / "whole-tb" / "validation")
    assert os.listdir(workdir / "whole-tb" / "train")
    assert "epoch 3 validation: val_recall@20" in done.stderr
    assert not (workdir / "whole-backup").exists()  # removed once training finished
    base = load_model_dir(str(data[2]))
    model = load_model_dir(str(workdir / "whole"))
    np.testing.assert_array_equal(model.vocabulary.raw_ids, base.vocabulary.raw_ids)
    assert metrics["recall@20"] > 0.5
    capsys.readouterr()
    assert main(["-v", "WARNING", "evaluate", "--model", str(workdir / "whole"), "--test",
                 data[1], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recall@20"] == pytest.approx(
        metrics["recall@20"])
    if scale != "one process":
        assert metrics["workers"] == 2 and metrics["replicas"] == 2
        assert metrics["sync"] == {BLOCK: "block", OVERLAP: "overlap"}.get(scale, "step")
        digests = metrics["replica_weight_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
        assert "worker 1 done" in done.stderr and "worker 0" in done.stderr
        # Each local worker gets its share of the host's cores (tf_gru4rec.training.workers).
        share = os.environ.get("TF_NUM_INTRAOP_THREADS",
                               max(1, len(os.sched_getaffinity(0)) // 2))
        for worker in (0, 1):
            assert f"worker {worker} of 2: {share} intra-op threads" in done.stderr
        # TensorFlow's INFO lines (one per collective op, the strategy's set-up) are not ours.
        assert "Collective" not in done.stderr and "INFO worker 0 tensorflow" not in done.stderr
        # Collectives leave no thread behind (with a per-collective timeout, TF 2.21 leaked
        # one per collective: thousands per epoch, then EAGAIN).
        threads = [int(n) for n in re.findall(r"worker 0 \S+: epoch \d/3: .* (\d+) threads",
                                              done.stderr)]
        assert len(threads) == 3 and threads[2] - threads[1] < 20, threads


@pytest.mark.parametrize("scale", SLOW_AT_TWO_WORKERS)
def test_a_kill_mid_epoch_then_the_rerun_ends_as_the_uninterrupted_run(data, whole, scale,
                                                                       tmp_path):
    """The command of the uninterrupted run, SIGKILLed (the process; on 2 workers, worker 1:
    the launcher stops worker 0 and fails) after a --backup-every backup in the middle of
    epoch 2 or 3, then rerun: same weights, metrics, validation history, time counted."""
    workdir, _, metrics = whole(scale)
    records = _lines(workdir / "whole.jsonl")
    args = _every_option(data, tmp_path, "killed", scale)
    meta, stderr = _kill_mid_epoch(args, scale, str(tmp_path / "killed-backup"))
    assert not (tmp_path / "killed").exists()
    if scale != "one process":
        assert "worker 1 exited with code -9; stopping the other workers" in stderr
    done_before = len(_lines(tmp_path / "killed.jsonl"))
    assert done_before == meta["epoch"]
    resumed = _train(args, scale)
    assert "resuming from" in resumed.stderr
    got = json.loads(resumed.stdout)
    assert got["train_resumes"] == 1
    assert got["train_seconds"] > meta["seconds"]  # the time before the kill is counted
    for key in ("recall@20", "mrr@20", "recall@5", "test_events", "final_loss",
                "train_events", "steps_per_epoch", "events_per_epoch",
                "replica_weight_digests"):
        assert got.get(key) == metrics.get(key), key
    _assert_same_weights(workdir / "whole", tmp_path / "killed")
    assert _lines(tmp_path / "killed.jsonl")[done_before:] == records[done_before:]
    assert not (tmp_path / "killed-backup").exists()


@pytest.fixture(scope="module")
def twenty_items(tmp_path_factory):
    """A log of at most 20 items: every item is in the top 20, so val_recall@20 is 1 after
    every epoch and never improves: early stopping with patience 1 stops after epoch 2."""
    from tf_gru4rec.data.io import write_events
    from tf_gru4rec.data.synthetic import (
        SyntheticConfig,
        generate_sessions,
        train_test_split_synthetic,
    )

    out = tmp_path_factory.mktemp("twenty")
    events = generate_sessions(SyntheticConfig(n_items=20, n_sessions=400, n_intents=4, seed=1))
    paths = str(out / "train.tsv"), str(out / "test.tsv")
    for part, path in zip(train_test_split_synthetic(events, test_days=1), paths, strict=True):
        write_events(part, path)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
def test_early_stopping_stops_every_worker_and_keeps_the_best_epoch(twenty_items, scale,
                                                                    tmp_path):
    train, test = twenty_items
    common = ["--train", train, "--test", test, *MODEL, "--set", "batch_size=8"]
    stopped = _train([*common, "--valid", test, "--early-stopping", "1", "--set", "n_epochs=4",
                      "--log-json", str(tmp_path / "log.jsonl"), "--out",
                      str(tmp_path / "stopped")], scale)
    metrics = json.loads(stopped.stdout)
    assert metrics["train_epochs"] == 2 and len(metrics["steps_per_epoch"]) == 2
    assert [r["val_recall@20"] for r in _lines(tmp_path / "log.jsonl")] == [1.0, 1.0]
    if scale != "one process":  # both workers stopped there (else the run would hang)
        assert len(set(metrics["replica_weight_digests"])) == 1
    else:  # the best epoch's weights: those after epoch 1, as a run of one epoch ends
        assert main(["-v", "WARNING", "train", *common, "--set", "n_epochs=1", "--out",
                     str(tmp_path / "one")]) == 0
        _assert_same_weights(tmp_path / "one", tmp_path / "stopped")


@pytest.mark.slow  # 16 s; the default run keeps every option at both scales (above)
def test_two_workers_with_every_option_equal_two_devices_of_one_process(data, whole, tmp_path):
    """The same maths on two paths: 2 worker processes and 2 devices of one process hold the
    same sessions, negatives and dropout seeds per replica, so every option gives the same
    weights, validation history and metrics."""
    workdir, _, workers = whole("2 workers")
    args = _every_option(data, tmp_path, "d", "2 workers")
    runner = subprocess.run([sys.executable, os.path.join(HERE, "distributed_runner.py"), "cli",
                             "-v", "WARNING", "train", *args, "--mirrored"],
                            capture_output=True, text=True, timeout=300, env=_env())
    assert runner.returncode == 0, runner.stderr[-3000:]
    devices = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert devices["replicas"] == 2 and devices["workers"] == 1
    for key in ("replica_weight_digests", "recall@20", "mrr@20", "final_loss",
                "steps_per_epoch", "events_per_epoch"):
        assert devices[key] == workers[key], key
    assert _lines(tmp_path / "d.jsonl") == _lines(workdir / "whole.jsonl")
