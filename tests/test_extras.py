"""Commands that need an optional extra say which one to install, in one line (exit 2)."""

from __future__ import annotations

import sys

import pytest

from tf_gru4rec import extras
from tf_gru4rec.cli import main

COMMANDS = {
    "export": (["export", "--model", "m", "--base", "b"], "tensorflow_serving", "serving"),
    "serve": (["serve", "--base", "."], "grpc", "serving"),
    "replay": (["replay", "--target", "127.0.0.1:1", "--test", "t.tsv"], "grpc", "serving"),
    "tune": (["tune", "--train", "a", "--valid", "b", "--out", "p.json", "--trials", "1"],
             "optuna", "research"),
    "demo": (["demo", "--workdir", "w"], "tensorflow_serving", "serving"),
    "train --tensorboard": (["train", "--train", "TRAIN", "--out", "o", "--tensorboard", "tb"],
                            "tensorboard", "research"),
    "prepare log --shards": (["prepare", "log", "--input", "TRAIN", "--out", "o", "--shards"],
                             "duckdb", "scale"),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_missing_extra_is_named_in_one_line(name, monkeypatch, tmp_path, capsys):
    argv, module, extra = COMMANDS[name]
    train = tmp_path / "train.tsv"
    train.write_text("SessionId\tItemId\tTime\n1\t1\t1\n1\t2\t2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    argv = [str(train) if a == "TRAIN" else a for a in argv]
    assert main(["-v", "WARNING", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f'pip install "tf-gru4rec[{extra}]"' in err[0]
    assert err[0].startswith(f"tf-gru4rec {argv[0]}: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.tsv"]  # nothing written


def test_a_module_found_missing_late_is_explained_too(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(extras, "_missing", lambda module: False)  # the early check passes
    monkeypatch.setitem(sys.modules, "grpc", None)
    monkeypatch.delitem(sys.modules, "tf_gru4rec.serving.dev_server", raising=False)
    assert main(["-v", "WARNING", "serve", "--base", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "tf-gru4rec[serving]"' in err[0], err


def test_another_missing_module_is_a_bug_with_its_traceback():
    assert extras.explain(ModuleNotFoundError("no", name="numpy")) is None
