"""The command line end to end on tiny synthetic files."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tf_gru4rec.cli import main

TINY = ["--set", "layers=8", "--set", "n_sample=16", "--set", "n_epochs=1", "--set",
        "batch_size=8", "--verbose", "0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert main(["-v", "WARNING", "generate", "--out", str(out), "--items", "150",
                 "--sessions", "600"]) == 0
    return out


def test_train_writes_model_and_metrics_and_evaluate_agrees(files, tmp_path, capsys):
    model_dir = tmp_path / "model"
    code = main(["-v", "WARNING", "train", "--train", str(files / "train.tsv"), "--test",
                 str(files / "test.tsv"), "--out", str(model_dir), "--preset", "quick",
                 "--seed", "3", "--log-json", str(tmp_path / "log.jsonl"), *TINY])
    assert code == 0
    metrics = json.loads((model_dir / "metrics.json").read_text())
    for key in ("recall@20", "mrr@20", "recall@5", "train_seconds", "train_events_per_second",
                "test_events"):
        assert key in metrics
    # train_events: all epochs; per epoch, each training event but its session's last
    train = pd.read_csv(files / "train.tsv", sep="\t")
    per_epoch = len(train) - train["SessionId"].nunique()
    assert metrics["train_events_per_epoch"] == per_epoch
    assert metrics["train_events"] == per_epoch * metrics["train_epochs"]
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["epoch"] == 1
    capsys.readouterr()
    assert main(["-v", "WARNING", "evaluate", "--model", str(model_dir), "--test",
                 str(files / "test.tsv"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["recall@20"] == pytest.approx(metrics["recall@20"])
    assert again["mrr@20"] == pytest.approx(metrics["mrr@20"])
    assert main(["-v", "WARNING", "evaluate", "--model", str(model_dir), "--test",
                 str(files / "test.tsv")]) == 0  # a table by default
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["Recall@1", "Recall@5"] and "MRR@20" in header
    assert row.split()[0] == str(model_dir)
    assert row.split()[5] == f"{again['mrr@1']:.4f}" and row.split()[-1] == str(
        again["test_events"])


@pytest.mark.parametrize("cell", ["reset-before", "reset-after"])
def test_gru_cell_is_set_from_the_command_line_and_kept_by_the_saved_model(files, tmp_path,
                                                                         cell):
    from tf_gru4rec.training import load_model_dir

    model_dir = tmp_path / "model"
    assert main(["-v", "WARNING", "train", "--train", str(files / "train.tsv"), "--out",
                 str(model_dir), "--preset", "quick", *TINY, "--set", f"gru_cell={cell}"]) == 0
    assert load_model_dir(str(model_dir)).model.gru.cell == cell


def test_bad_parameter_and_missing_file_give_clear_errors(files, tmp_path, capsys):
    # More cases in test_cli_errors.py.
    assert main(["train", "--train", str(files / "train.tsv"), "--out", str(tmp_path / "m"),
                 "--set", "learning_rate=fast"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "fast" in err
    assert main(["train", "--train", str(tmp_path / "none.tsv"), "--out",
                 str(tmp_path / "m")]) == 2
    assert "none.tsv" in capsys.readouterr().err
    assert main(["train", "--train", str(files / "train.tsv"), "--out", str(tmp_path / "m"),
                 "--preset", "nope"]) == 2
    assert "rsc15-xe" in capsys.readouterr().err  # the known presets are listed


def test_demo_runs_every_stage(tmp_path, capsys):
    code = main(["-v", "WARNING", "demo", "--workdir", str(tmp_path / "demo"), "--export-base",
                 str(tmp_path / "export" / "gru4rec"), "--items", "150", "--sessions", "800",
                 "--verbose", "0"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| gru4rec |" in out and "| itemknn |" in out
    assert "clicked" in out and (tmp_path / "export" / "gru4rec" / "1" /
                                 "saved_model.pb").exists()


def test_hugepage_environment_keeps_other_tunables(monkeypatch):
    from tf_gru4rec import hugepages
    env = hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "1"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert env["A"] == "1"
    assert hugepages.environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert hugepages.environment(env) == env  # set once only
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert not hugepages.wanted()
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    monkeypatch.setenv("TF_GRU4REC_HUGEPAGES", "0")
    assert not hugepages.wanted()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunable: Linux only")
def test_command_restarts_itself_once_with_huge_pages(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys\n"
        "from tf_gru4rec.hugepages import reexec_with_hugepages\n"
        "print('run', os.environ.get('GLIBC_TUNABLES', ''), flush=True)\n"
        "reexec_with_hugepages('probe', sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "TF_GRU4REC_HUGEPAGES")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path])
    out = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True,
                         env=env, check=True, cwd=tmp_path).stdout.split("\n")
    assert out[:2] == ["run ", "run glibc.malloc.hugetlb=1"]


def test_xla_flags_are_added_once_and_respect_the_user():
    from tf_gru4rec.nn import xla_flags

    flag = "--xla_cpu_copy_insertion_use_region_analysis=true"
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    xla_flags.apply(env)
    assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {flag}"
    xla_flags.apply(env)
    assert env["XLA_FLAGS"].count("region_analysis") == 1
    mine = {"XLA_FLAGS": "--xla_cpu_copy_insertion_use_region_analysis=false"}
    xla_flags.apply(mine)
    assert mine["XLA_FLAGS"] == "--xla_cpu_copy_insertion_use_region_analysis=false"
    opted_out = {"TF_GRU4REC_XLA_FLAGS": "0"}
    xla_flags.apply(opted_out)
    assert "XLA_FLAGS" not in opted_out
    empty = {}
    xla_flags.apply(empty)
    assert empty["XLA_FLAGS"] == flag


def test_piped_train_keeps_stdout_for_the_metrics_json(files, tmp_path):
    """With stdout a pipe, Keras' progress bar (which writes to stdout) goes to stderr: the
    metrics JSON on stdout stays parseable (`tf-gru4rec train ... > metrics.json`)."""
    train_path = str(files / "train.tsv")
    done = subprocess.run(
        [sys.executable, "-m", "tf_gru4rec.cli", "train", "--train", train_path, "--out",
         str(tmp_path / "m"), "--preset", "quick", "--set", "n_epochs=1", "--verbose", "1"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["n_items"] > 0
    assert "step" in done.stderr
