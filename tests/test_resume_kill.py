"""Crash-resume with real processes: `tf-gru4rec train --backup-dir` killed with SIGKILL in the
middle of a backup write and rerun with the same command ends with the same weights and metrics
as an uninterrupted run. A kill in the middle of an epoch (with dropout, every other option, one
process and 2 workers) is in test_training_matrix.py."""

import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tf_gru4rec.cli import main
from tf_gru4rec.training import load_model_dir
from tf_gru4rec.training.resume import LATEST

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = ["layers=8", "n_sample=16", "batch_size=8", "steps_per_execution=4",
            "dropout_p_embed=0.2", "dropout_p_hidden=0.3", "n_epochs=3"]
COMPARED = ("recall@20", "mrr@20", "recall@5", "final_loss", "train_events", "test_events")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert main(["-v", "WARNING", "generate", "--out", str(out), "--items", "80",
                 "--sessions", "250"]) == 0
    return out


def command(files, out, *extra):
    args = ["-v", "WARNING", "train", "--train", str(files / "train.tsv"), "--test",
            str(files / "test.tsv"), "--out", str(out), "--seed", "2", "--verbose", "0", *extra]
    for setting in SETTINGS:
        args += ["--set", setting]
    return args


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "model"
    assert main(command(files, out)) == 0
    return out


def run_killed(args, kill_at, tmp_path):
    env = {**os.environ, "KILL_AT": kill_at, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([HERE, *sys.path])}
    done = subprocess.run([sys.executable, os.path.join(HERE, "kill_runner.py"), *args],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def backup_meta(backup):
    with h5py.File(os.path.join(backup, LATEST)) as f:
        return json.loads(f["resume"].attrs["meta"])


def assert_same_as(reference, out):
    want, got = load_model_dir(str(reference)), load_model_dir(str(out))
    for a, b in zip(want.model.weights, got.model.weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, err_msg=b.path)
    want_metrics = json.loads((reference / "metrics.json").read_text())
    got_metrics = json.loads((out / "metrics.json").read_text())
    for key in COMPARED:
        assert got_metrics[key] == pytest.approx(want_metrics[key], rel=1e-6), key
    assert got_metrics["train_resumes"] == 1
    return got_metrics


@pytest.mark.slow  # default suite time (README: Tests)
def test_sigkill_during_backup_write_does_not_block_the_rerun(files, reference, tmp_path):
    out, backup = tmp_path / "model", str(tmp_path / "backup")
    args = command(files, out, "--backup-dir", backup)
    run_killed(args, "write:2", tmp_path)  # while writing the backup of epoch 2
    assert main(args) == 0  # resumes from the backup of epoch 1
    assert_same_as(reference, out)
