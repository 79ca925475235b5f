"""A quiet command line: no TensorFlow C++ start-up lines unless -v debug, no TensorFlow
before the huge-page re-exec."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# absl's pre-init notice, oneDNN, CUDA stub and cuInit lines, or any glog-style C++ line.
CPP_LINE = re.compile(r"absl::InitializeLog|oneDNN|cuda|cuInit|^[IWEF]\d{4} ", re.I | re.M)
ENTRY = "import sys; from tf_gru4rec.cli import entry; sys.argv[0] = 'tf-gru4rec'; entry()"


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("quiet") / "train.tsv"
    rows = [(s, (s * 3 + k) % 7, 1000.0 * s + k) for s in range(20) for k in range(3)]
    pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(path, sep="\t",
                                                                        index=False)
    return path


def _train(tiny_log, tmp_path, *options):
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *options, "train", "--train", str(tiny_log), "--out",
         str(tmp_path / "model"), "--set", "layers=4", "--set", "n_sample=0", "--set",
         "n_epochs=1", "--set", "batch_size=4", "--set", "jit_compile=false"],
        capture_output=True, text=True, env=_env(), timeout=300)


def test_train_prints_no_tensorflow_startup_lines(tiny_log, tmp_path):
    done = _train(tiny_log, tmp_path)
    assert done.returncode == 0, done.stderr
    assert not CPP_LINE.search(done.stderr), done.stderr
    assert "training on 60 events" in done.stderr  # our own INFO lines still show


@pytest.mark.slow  # default suite time (README: Tests); the quiet test above stays
def test_debug_shows_them(tiny_log, tmp_path):
    done = _train(tiny_log, tmp_path, "-v", "debug")
    assert done.returncode == 0, done.stderr
    assert CPP_LINE.search(done.stderr)


def test_the_cli_loads_no_tensorflow_before_running_a_command():
    code = ("import sys; import tf_gru4rec.cli as cli, tf_gru4rec.hugepages; "
            "cli.build_parser(); print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_the_quiet_import_gives_the_real_module():
    code = ("from tf_gru4rec.tf_quiet import hide_startup_lines; hide_startup_lines(); "
            "import keras, tensorflow as tf; from tensorflow.python.framework import ops; "
            "print(tf.__spec__.name, tf.__spec__.origin is not None, tf.constant(2).numpy())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert done.stdout.split() == ["tensorflow", "True", "2"], done.stderr
    assert not CPP_LINE.search(done.stderr), done.stderr
