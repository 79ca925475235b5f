"""Distributed training: session sharding, the training loop against `fit` and against a
by-hand replay of the replicas' steps, AdagradM per replica, uneven shards, bad options. 2
worker processes on 127.0.0.1 with every option (same weights on both, the same as 2 devices in
one process, a killed worker and the rerun) are in test_training_matrix.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_gru4rec.cli import main
from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.distributed_input import ReplicaStream, TrainingSource
from tf_gru4rec.data.input_pipeline import SessionParallelInput
from tf_gru4rec.training import train
from tf_gru4rec.training.distributed import DistributedTrainer, replica_streams
from tf_gru4rec.training.workers import cluster_from_env

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "distributed_runner.py")
QUICK = ["--preset", "quick", "--set", "n_epochs=2", "--set", "layers=24",
         "--set", "batch_size=16", "--set", "n_sample=32", "--set", "dropout_p_hidden=0.2"]


AVERAGING_RUNNER = os.path.join(os.path.dirname(__file__), "averaging_runner.py")


def _run(args, timeout=300, env=None) -> subprocess.CompletedProcess:
    full = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    full.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full)


def _runner(*args, timeout=300) -> dict:
    done = _run([sys.executable, RUNNER, *args], timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _config(**overrides) -> TrainConfig:
    values = {"batch_size": "8", "n_sample": "16", "layers": "16", "n_epochs": "1",
              "steps_per_execution": "6", "momentum": "0.3", "loss": "bpr-max",
              "bpreg": "0.5", "dropout_p_hidden": "0.3", "embedding": "0",
              "constrained_embedding": "true"}
    values.update({k: str(v) for k, v in overrides.items()})
    return TrainConfig().with_overrides(values)


# ----------------------------------------------------------------------- input sharding
def test_every_session_goes_whole_to_exactly_one_replica(synthetic_log):
    log, _, _ = synthetic_log
    source = TrainingSource(log=log)
    seen = []
    for replica in range(3):
        (load,) = source.parts(replica, 3)
        part = load()
        assert part.n_items == log.n_items
        for s in range(part.n_sessions):
            original = np.flatnonzero(log.session_ids == part.session_ids[s])
            assert len(original) == 1
            np.testing.assert_array_equal(part.session(s), log.session(original[0]))
            seen.append(original[0])
        assert np.all(np.diff(part.start_times) >= 0)  # start-time order kept
    assert sorted(seen) == list(range(log.n_sessions))


def test_replica_blocks_have_equal_length_and_end_with_empty_blocks(synthetic_log):
    log, _, _ = synthetic_log
    source = TrainingSource(log=log)
    stream = replica_streams(source, _config(batch_size=6), [1], 2)[0]
    blocks = stream.blocks(0)
    real, events = [], 0
    while True:
        block = next(blocks)
        assert block["inputs"].shape == (6, 3)  # K = steps_per_execution, B / R slots
        real.append(block)
        events += int(block["valid"].sum())
        assert not block["valid"][int(block["n_real"]):].any()  # padding only at the end
        if not block["more"]:
            break
    part = source.parts(1, 2)[0]()
    assert events == part.n_predictions
    assert all(b["more"] for b in real[:-1])
    steps = np.concatenate([b["step"][: int(b["n_real"])] for b in real])
    np.testing.assert_array_equal(steps, np.arange(len(steps)))  # sampler keys continue
    for _ in range(3):  # then empty blocks forever, for replicas that finish first
        empty = next(blocks)
        assert int(empty["n_real"]) == 0 and not empty["valid"].any() and not empty["more"]


def test_one_replica_stream_gives_the_single_process_steps_and_negatives(synthetic_log):
    log, _, _ = synthetic_log
    config = _config(shuffle_sessions="true")
    single = SessionParallelInput(log, config.batch_size, n_sample=config.n_sample,
                                  sample_alpha=config.sample_alpha, shuffle_sessions=True,
                                  seed=config.seed, steps_per_block=config.steps_per_execution)
    stream = replica_streams(TrainingSource(log=log), config, [0], 1)[0]
    firsts = []
    # One dataset object serves every epoch (built once): each call sets the epoch, and a
    # resumed epoch (skip_blocks) starts further on.
    for epoch, skip in ((1, 0), (0, 0), (2, 1), (1, 0)):
        single.epoch = epoch
        expected = list(single.dataset(blocks=True).as_numpy_iterator())[skip:]
        dataset = stream.dataset(epoch, skip_blocks=skip)
        assert dataset is stream.dataset(epoch, skip_blocks=skip)
        got = iter(dataset)
        for block in expected:
            mine = next(got)
            n = len(block["inputs"])
            for key in ("inputs", "targets", "reset", "valid", "negatives"):
                np.testing.assert_array_equal(mine[key].numpy()[:n], block[key], err_msg=key)
        firsts.append(expected[0]["inputs"])
    assert not np.array_equal(firsts[0], firsts[1])  # the epochs differ (shuffled)


def test_replicas_draw_different_negatives(synthetic_log):
    log, _, _ = synthetic_log
    streams = replica_streams(TrainingSource(log=log), _config(), [0, 1], 2)
    first = [next(iter(s.dataset(0)))["negatives"].numpy() for s in streams]
    assert not np.array_equal(first[0], first[1])


def test_batch_size_must_divide_among_replicas(synthetic_log):
    log, _, _ = synthetic_log
    with pytest.raises(ValueError, match="batch_size 9 is not divisible by the 2 replicas"):
        replica_streams(TrainingSource(log=log), _config(batch_size=9), [0], 2)


def test_replica_stream_rejects_nothing_silently(synthetic_log):
    with pytest.raises(ValueError, match="exactly one of"):
        TrainingSource()
    with pytest.raises(ValueError, match=r"`replica` should be in \[0, 2\)"):
        TrainingSource(log=synthetic_log[0]).parts(2, 2)
    assert isinstance(ReplicaStream([], 4, np.ones(5)), ReplicaStream)


# ----------------------------------------------------------------------- the custom loop
def test_custom_loop_on_one_device_trains_as_fit(synthetic_log):
    """Same steps, negatives, dropout masks, state resets, loss scaling and AdagradM update as
    `model.fit` (bpr-max here, cross-entropy on a shard below; float rounding only)."""
    log, _, _ = synthetic_log
    config = _config()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    trainer = DistributedTrainer(config, TrainingSource(log=log), strategy)
    history = trainer.fit()
    reference = train(config, log, verbose=0)
    np.testing.assert_allclose(history["loss"], reference.history["loss"], rtol=1e-5)
    for mine, theirs in zip(trainer.model.trainable_variables,
                            reference.model.trainable_variables, strict=True):
        np.testing.assert_allclose(np.asarray(mine.value), np.asarray(theirs.value),
                                   atol=2e-5, err_msg=mine.path)


@pytest.mark.slow  # 16 s; the matrix runs 2 workers with every option by default
def test_two_replicas_equal_a_by_hand_replay_of_their_steps(tmp_path):
    """Data parallelism by definition: each step applies the sum of both replicas' gradients
    (loss over the global batch) once; both replicas end identical; dropout masks differ."""
    result = _runner("reference", str(tmp_path))
    assert result["steps"] == result["trainer_steps"] > 50
    assert result["moved"] > 0.05  # training moved the weights: the comparison means something
    assert max(result["diffs"].values()) < 1e-4, result["diffs"]
    assert len(set(result["digests"])) == 1
    assert result["masks_differ"]


def test_block_and_overlap_sync_on_two_workers_equal_by_hand_replays_of_local_sgd():
    """sync="block" and "overlap" by definition, on 2 real worker processes (one run of each,
    one after the other): each replica trains its blocks as one replica of B / 2 slots (fit's
    program), and the replicas take the steps-weighted mean of their weights and optimizer
    state, after each block ("block") or one block late, plus each replica's own progress
    since ("overlap"); every replica ends identical, the loss and steps reported are both
    replicas'. Dropout is on, and the replay draws each block's masks from its own seed
    (the run's, moved one block on per block, offset per replica): a worker that reused one
    block's masks, or shared them with the other replica, would end elsewhere."""
    from tf_gru4rec.training.workers import local_cluster

    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    processes = [subprocess.Popen(
        [sys.executable, AVERAGING_RUNNER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)})
        for tf_config in local_cluster(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    results = []
    for process, (out, err) in zip(processes, outputs, strict=True):
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert process.returncode == 0 and lines, err[-3000:]
        results.append(json.loads(lines[-1][len("RESULT "):]))
    for mode in ("block", "overlap"):
        chief, other = results[0][mode], results[1][mode]
        assert chief["sync"] == mode
        assert chief["digests"] == other["digests"] and len(set(chief["digests"])) == 1
        assert chief["moved"] > 0.05  # training moved the weights
        assert chief["drift"] > 1e-3  # the replicas differed before each average: it matters
        assert max(chief["diffs"].values()) < 1e-5, (mode, chief["diffs"])
        assert chief["steps"] == chief["replay_steps"]
        np.testing.assert_allclose(chief["loss"], chief["replay_loss"], rtol=1e-5)
    # The two are different maths: the weights end apart.
    assert results[0]["block"]["digests"] != results[0]["overlap"]["digests"]


def test_block_sync_needs_one_device_per_worker():
    """Two devices of one process (--mirrored) would need a model copy per device."""
    result = _runner("block-on-devices")
    assert "sync='block' keeps one model copy per process" in result["error"]
    assert "--workers N" in result["error"]


def test_adagradm_under_mirrored_equals_summed_gradients_with_per_replica_scratch():
    result = _runner("adagradm")
    for path in ("unique", "static"):
        assert result[path]["moved"] > 0.1
        assert result[path]["max_diff"] < 1e-6, result
        assert result[path]["scratch_clean"] and all(result[path]["scratch_clean"]), result


# ----------------------------------------------------------------------- worker processes
@pytest.fixture(scope="module")
def small_logs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist-data")
    assert main(["generate", "--out", str(out), "--items", "200", "--sessions", "1200"]) == 0
    return str(out / "train.tsv"), str(out / "test.tsv")


def _shards(train_path, out, shard_events) -> str:
    assert main(["-v", "WARNING", "prepare", "log", "--input", train_path, "--out", str(out),
                 "--shards", "--shard-events", str(shard_events), "--min-item-support",
                 "1"]) == 0
    return str(out / "train")


def test_custom_loop_on_one_shard_trains_as_fit_on_its_log(small_logs, tmp_path):
    from tf_gru4rec.data.shards import ShardSet

    shards = ShardSet.load(_shards(small_logs[0], tmp_path / "sh", 10**9))
    assert len(shards) == 1
    config = _config(loss="cross-entropy", gru_cell="reset-before")  # the other cell form
    trainer = DistributedTrainer(config, TrainingSource(shards=shards),
                                 tf.distribute.MirroredStrategy(["/cpu:0"]))
    trainer.fit()
    reference = train(config, shards.read(0), verbose=0)
    for mine, theirs in zip(trainer.model.trainable_variables,
                            reference.model.trainable_variables, strict=True):
        np.testing.assert_allclose(np.asarray(mine.value), np.asarray(theirs.value),
                                   atol=2e-5, err_msg=mine.path)


@pytest.mark.slow  # default suite time (README: Tests)
@pytest.mark.parametrize("sync", ["step", "block", "overlap"])
def test_two_workers_train_on_uneven_shards(small_logs, tmp_path, sync):
    """3 shards for 2 workers: worker 0 reads shards 0 and 2, worker 1 shard 1, so worker 1
    runs out first and pads (under sync=block and overlap its empty blocks weigh nothing in
    the average); both still end identical, and every event is trained on."""
    from tf_gru4rec.data.shards import ShardSet

    train_dir = _shards(small_logs[0], tmp_path / "sh", 1500)
    shards = ShardSet.load(train_dir)
    assert len(shards) == 3
    done = _run([sys.executable, "-m", "tf_gru4rec.cli", "train", "--train", train_dir,
                 "--test", str(tmp_path / "sh" / "test.parquet"), "--out", str(tmp_path / "m"),
                 *QUICK, "--workers", "2", "--sync", sync], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout)
    assert metrics["sync"] == sync
    assert len(set(metrics["replica_weight_digests"])) == 1
    assert metrics["train_events"] == 2 * shards.n_predictions
    # Counted while training: every event once per epoch, none twice, none dropped.
    assert metrics["events_per_epoch"] == [shards.n_predictions] * 2
    # Each epoch runs as many steps as the busier worker needs (it holds 2 of the 3 shards).
    lengths = [shards.read(k).n_predictions for k in range(3)]
    assert metrics["steps_per_epoch"][0] * 8 >= lengths[0] + lengths[2]


@pytest.mark.parametrize("sync", ["block", "overlap"])
def test_the_sync_option_reaches_the_run_config(small_logs, tmp_path, sync):
    """`--sync block|overlap` is the run's `sync` (the model directory's config.json holds
    what ran; the 2-worker tests show the trainer acting on it)."""
    out = tmp_path / "m"
    assert main(["-v", "WARNING", "train", "--train", small_logs[0], "--out", str(out), *QUICK,
                 "--sync", sync]) == 0
    assert json.loads((out / "config.json").read_text())["sync"] == sync


# ----------------------------------------------------------------------- bad options
@pytest.mark.parametrize("extra, message", [
    (["--workers", "2", "--set", "batch_size=7"], "batch_size 7 is not divisible by 2 workers"),
    (["--workers", "2", "--set", "replica_split=balanced", "--set", "shuffle_sessions=true"],
     "replica_split='balanced' with shuffle_sessions=True"),
    (["--workers", "2", "--warm-start", "MODEL", "--train", "SHARDS"],
     "Parquet shards hold item indices fixed by their items.parquet"),
    (["--workers", "2", "--sync", "overlap", "--backup-dir", "BACKUP", "--backup-every", "20"],
     "a mid-epoch backup could not resume exactly"),
    (["--workers", "2", "--set", "sync=overlap", "--backup-dir", "BACKUP", "--backup-every",
      "20"], "with sync='overlap'"),
])
def test_distributed_options_are_checked_before_anything_starts(small_logs, tmp_path, capsys,
                                                                extra, message):
    """The options left that do not go together are refused for a reason, before any worker
    starts (every other option works at every scale: tests/test_training_matrix.py)."""
    train_path, test_path = small_logs
    if "MODEL" in extra:
        model, shards = tmp_path / "model", _shards(train_path, tmp_path / "sh", 10**9)
        assert main(["-v", "WARNING", "train", "--train", train_path, "--out", str(model),
                     *QUICK, "--set", "n_epochs=1", "--verbose", "0"]) == 0
        extra = [str(model) if a == "MODEL" else shards if a == "SHARDS" else a for a in extra]
    extra = [str(tmp_path / "backup") if a == "BACKUP" else a for a in extra]
    start = time.perf_counter()
    code = main(["train", "--train", train_path, "--out", str(tmp_path / "o"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert time.perf_counter() - start < 30  # no worker was started


def test_train_refuses_mid_epoch_backups_under_overlap_sync(synthetic_log, tmp_path):
    """The library's `train` refuses them too, before training (the CLI's check: above)."""
    log, _, _ = synthetic_log
    with pytest.raises(ValueError, match="a mid-epoch backup could not resume exactly"):
        train(_config(sync="overlap"), log, backup_dir=str(tmp_path / "b"), backup_every=5)
    assert not (tmp_path / "b").exists()


def test_tf_config_is_checked(small_logs, tmp_path, capsys, monkeypatch):
    train_path, _ = small_logs
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"index": 3}}')
    assert main(["train", "--train", train_path, "--out", str(tmp_path / "o")]) == 2
    assert "expected type 'worker' and an index below 1" in capsys.readouterr().err
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    assert main(["train", "--train", train_path, "--out", str(tmp_path / "o"),
                 "--workers", "3"]) == 2
    assert "--workers 3, but TF_CONFIG lists 2 workers" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("", None),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}', (2, 1)),
])
def test_cluster_from_env(text, expected):
    assert cluster_from_env({"TF_CONFIG": text}) == expected


@pytest.mark.parametrize("text, message", [
    ("not json", "is not a cluster of workers"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "cluster.worker"),
    ('{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker", "index": 0}}',
     "only 'worker' is used"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
     "expected type 'worker'"),
])
def test_cluster_from_env_names_the_problem(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cluster_from_env({"TF_CONFIG": text})


def test_local_workers_share_the_cores_unless_told_otherwise(monkeypatch):
    """Each of n local workers gets cores / n intra-op threads (at least 1) and its TF_CONFIG;
    a TF_NUM_INTRAOP_THREADS the user set is kept."""
    from tf_gru4rec.training.workers import local_cluster, worker_environment

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))
    config = local_cluster(2)[1]
    env = worker_environment(config, 2, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "TF_CONFIG": json.dumps(config),
                   "TF_NUM_INTRAOP_THREADS": "4"}
    assert worker_environment(config, 16, {})["TF_NUM_INTRAOP_THREADS"] == "1"
    assert worker_environment(config, 2, {"TF_NUM_INTRAOP_THREADS": "3"})[
        "TF_NUM_INTRAOP_THREADS"] == "3"
