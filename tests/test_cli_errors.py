"""Bad input on the command line: one line on stderr naming what was wrong and what is
expected, exit code 2, no traceback, nothing written to --out."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from tf_gru4rec.cli import main
from tf_gru4rec.config import TrainConfig
from tf_gru4rec.config_checks import CHECKS

TINY = ["--set", "layers=8", "--set", "n_sample=16", "--set", "n_epochs=1", "--set",
        "batch_size=8", "--verbose", "0"]
HEADER = "SessionId\tItemId\tTime\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Synthetic train/test logs, a tiny trained model and a set of bad files."""
    d = tmp_path_factory.mktemp("bad")
    assert main(["-v", "WARNING", "generate", "--out", str(d), "--items", "60",
                 "--sessions", "200"]) == 0
    assert main(["-v", "WARNING", "train", "--train", str(d / "train.tsv"), "--out",
                 str(d / "model"), *TINY]) == 0
    (d / "empty.tsv").write_text("")
    (d / "header.tsv").write_text(HEADER)
    (d / "single.tsv").write_text(HEADER + "1\t5\t1\n2\t6\t2\n3\t5\t3\n")
    (d / "unknown.tsv").write_text(HEADER + "1\tx1\t1\n1\tx2\t2\n2\tx3\t3\n2\tx1\t4\n")
    (d / "badtime.tsv").write_text(HEADER + "1\t5\tyesterday\n1\t6\t2\n")
    (d / "preset.json").write_text("{not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "afile").write_text("x")
    (d / "other").mkdir()
    (d / "other" / "notes.txt").write_text("keep me")
    (d / "halfmodel").mkdir()
    (d / "halfmodel" / "config.json").write_text("{}")
    (d / "clicks.dat").write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n")
    return d


def train(d, *extra, out="out"):
    return ["train", "--train", str(d / "train.tsv"), "--out", str(d / out), *extra]


# (name, argv builder, words the message must contain)
CASES = [
    ("batch_size negative", lambda d: train(d, "--set", "batch_size=-5"), ["batch_size", "-5"]),
    ("dropout 1.5", lambda d: train(d, "--set", "dropout_p_hidden=1.5"),
     ["dropout_p_hidden", "[0, 1)", "1.5"]),
    ("dropout_p_embed -0.1", lambda d: train(d, "--set", "dropout_p_embed=-0.1"),
     ["dropout_p_embed"]),
    ("unknown loss", lambda d: train(d, "--set", "loss=hinge"), ["loss", "bpr-max", "hinge"]),
    ("n_epochs 0", lambda d: train(d, "--set", "n_epochs=0"), ["n_epochs", ">= 1"]),
    ("layers abc", lambda d: train(d, "--set", "layers=abc"), ["layers", "100/100", "abc"]),
    ("layers 0", lambda d: train(d, "--set", "layers=100/0"), ["layers"]),
    ("learning_rate -1", lambda d: train(d, "--set", "learning_rate=-1"), ["learning_rate"]),
    ("learning_rate nan", lambda d: train(d, "--set", "learning_rate=nan"),
     ["learning_rate"]),
    ("sample_alpha 2", lambda d: train(d, "--set", "sample_alpha=2"),
     ["sample_alpha", "[0, 1]"]),
    ("momentum 1", lambda d: train(d, "--set", "momentum=1"), ["momentum"]),
    ("n_sample -1", lambda d: train(d, "--set", "n_sample=-1"), ["n_sample"]),
    ("bpreg -1", lambda d: train(d, "--set", "bpreg=-1"), ["bpreg"]),
    ("final_act relu", lambda d: train(d, "--set", "final_act=relu"), ["final_act", "tanh"]),
    ("optimizer unknown", lambda d: train(d, "--set", "optimizer=fancy"),
     ["optimizer", "fancy"]),
    ("tie_mode unknown", lambda d: train(d, "--set", "tie_mode=best"), ["tie_mode"]),
    ("cutoffs 0", lambda d: train(d, "--set", "cutoffs=0,20"), ["cutoffs"]),
    ("steps_per_execution 0", lambda d: train(d, "--set", "steps_per_execution=0"),
     ["steps_per_execution"]),
    ("boolean yes-ish", lambda d: train(d, "--set", "shuffle_sessions=maybe"),
     ["shuffle_sessions", "true or false"]),
    ("unknown parameter", lambda d: train(d, "--set", "hidden=100"), ["hidden", "known"]),
    ("--set without =", lambda d: train(d, "--set", "loss"), ["KEY=VALUE"]),
    ("unknown preset", lambda d: train(d, "--preset", "nope"), ["nope", "rsc15-xe"]),
    ("preset not JSON", lambda d: train(d, "--preset", str(d / "preset.json")),
     ["--preset", "JSON"]),
    ("preset a list", lambda d: train(d, "--preset", str(d / "list.json")),
     ["--preset", "JSON object"]),
    ("preset a directory", lambda d: train(d, "--preset", str(d / "other")),
     ["--preset", "directory"]),
    ("seed -1", lambda d: train(d, "--seed", "-1"), ["--seed", ">= 0"]),
    ("verbose 5", lambda d: train(d, "--verbose", "5"), ["--verbose", "auto"]),
    ("backup-every without dir", lambda d: train(d, "--backup-every", "50"),
     ["--backup-every", "--backup-dir"]),
    ("backup dir inside out", lambda d: train(d, "--backup-dir", str(d / "out" / "b")),
     ["--backup-dir", "outside"]),
    ("early stopping without valid", lambda d: train(d, "--early-stopping", "2"),
     ["--valid"]),
    ("train missing", lambda d: ["train", "--train", str(d / "nope.tsv"), "--out",
                                 str(d / "out")], ["--train", "does not exist"]),
    ("train a directory", lambda d: ["train", "--train", str(d / "other"), "--out",
                                     str(d / "out")], ["--train", "directory"]),
    ("train empty file", lambda d: ["train", "--train", str(d / "empty.tsv"), "--out",
                                    str(d / "out")], ["--train", "empty file"]),
    ("train header only", lambda d: ["train", "--train", str(d / "header.tsv"), "--out",
                                     str(d / "out")], ["header.tsv", "no events"]),
    ("train sessions of one click", lambda d: ["train", "--train", str(d / "single.tsv"),
                                               "--out", str(d / "out")],
     ["single.tsv", "nothing to train", "2 or more"]),
    ("train bad time", lambda d: ["train", "--train", str(d / "badtime.tsv"), "--out",
                                  str(d / "out")], ["row 1", "Time", "yesterday"]),
    ("train wrong column", lambda d: train(d, "--item-col", "Item"), ["missing column"]),
    ("train unknown format", lambda d: train(d, "--format", "xml"), ["--format", "xml"]),
    ("test items all unknown", lambda d: train(d, "--test", str(d / "unknown.tsv")),
     ["unknown.tsv", "nothing to evaluate", "unknown to the model"]),
    ("valid header only", lambda d: train(d, "--valid", str(d / "header.tsv")),
     ["header.tsv", "no events"]),
    ("out is a file", lambda d: train(d, out="afile"), ["--out", "is a file"]),
    ("out has other content", lambda d: train(d, out="other"),
     ["--out", "other content"]),
    ("warm start not a model", lambda d: train(d, "--warm-start", str(d / "other")),
     ["--warm-start", "model.json"]),
    ("log-json a directory", lambda d: train(d, "--log-json", str(d / "other")),
     ["--log-json", "directory"]),
    ("evaluate model missing", lambda d: ["evaluate", "--model", str(d / "nope"), "--test",
                                          str(d / "test.tsv")], ["--model", "does not exist"]),
    ("evaluate model is a file", lambda d: ["evaluate", "--model", str(d / "afile"),
                                            "--test", str(d / "test.tsv")],
     ["--model", "is a file"]),
    ("evaluate half a model", lambda d: ["evaluate", "--model", str(d / "halfmodel"),
                                         "--test", str(d / "test.tsv")],
     ["--model", "model.weights.h5"]),
    ("evaluate cutoffs 0", lambda d: ["evaluate", "--model", str(d / "model"), "--test",
                                      str(d / "test.tsv"), "--cutoffs", "0"], ["--cutoffs"]),
    ("evaluate batch-size -1", lambda d: ["evaluate", "--model", str(d / "model"), "--test",
                                          str(d / "test.tsv"), "--batch-size", "-1"],
     ["--batch-size", ">= 1"]),
    ("evaluate test unknown items", lambda d: ["evaluate", "--model", str(d / "model"),
                                               "--test", str(d / "unknown.tsv")],
     ["nothing to evaluate"]),
    ("evaluate tie mode", lambda d: ["evaluate", "--model", str(d / "model"), "--test",
                                     str(d / "test.tsv"), "--tie-mode", "best"],
     ["--tie-mode", "best"]),
    ("baselines alpha 1.5", lambda d: ["baselines", "--train", str(d / "train.tsv"), "--test",
                                       str(d / "test.tsv"), "--alpha", "1.5"],
     ["--alpha", "[0, 1]"]),
    ("baselines n-neighbors 0", lambda d: ["baselines", "--train", str(d / "train.tsv"),
                                           "--test", str(d / "test.tsv"), "--n-neighbors",
                                           "0"], ["--n-neighbors"]),
    ("baselines unknown name", lambda d: ["baselines", "--train", str(d / "train.tsv"),
                                          "--test", str(d / "test.tsv"), "--names", "svd"],
     ["--names", "svd"]),
    ("baselines test unknown items", lambda d: ["baselines", "--train", str(d / "train.tsv"),
                                                "--test", str(d / "unknown.tsv")],
     ["nothing to evaluate"]),
    ("baselines test missing", lambda d: ["baselines", "--train", str(d / "train.tsv"),
                                          "--test", str(d / "nope.tsv")],
     ["--test", "does not exist"]),
    ("export k 0", lambda d: ["export", "--model", str(d / "model"), "--base",
                              str(d / "exp"), "--k", "0"], ["--k", ">= 1"]),
    ("export half a model", lambda d: ["export", "--model", str(d / "halfmodel"), "--base",
                                       str(d / "exp")], ["--model", "model.json"]),
    ("export base is a file", lambda d: ["export", "--model", str(d / "model"), "--base",
                                         str(d / "afile")], ["--base", "is a file"]),
    ("export idle seconds 0", lambda d: ["export", "--model", str(d / "model"),
                                         "--session-idle-seconds", "0"],
     ["--session-idle-seconds"]),
    ("serve port 70000", lambda d: ["serve", "--base", str(d), "--port", "70000"],
     ["--port", "65535"]),
    ("serve base missing", lambda d: ["serve", "--base", str(d / "nope")],
     ["--base", "not a directory"]),
    ("serve workers 0", lambda d: ["serve", "--base", str(d), "--workers", "0"],
     ["--workers"]),
    ("replay target", lambda d: ["replay", "--target", "localhost", "--test",
                                 str(d / "test.tsv")], ["--target", "HOST:PORT"]),
    ("replay timeout 0", lambda d: ["replay", "--target", "localhost:1", "--test",
                                    str(d / "test.tsv"), "--timeout", "0"], ["--timeout"]),
    ("replay test missing", lambda d: ["replay", "--target", "localhost:1", "--test",
                                       str(d / "nope.tsv")], ["--test", "does not exist"]),
    ("prepare clicks missing", lambda d: ["prepare", "rsc15", "--clicks", str(d / "nope.dat"),
                                          "--out", str(d / "prep")], ["--clicks"]),
    ("prepare min session 1", lambda d: ["prepare", "rsc15", "--clicks",
                                         str(d / "clicks.dat"), "--out", str(d / "prep"),
                                         "--min-session-length", "1"],
     ["--min-session-length", ">= 2"]),
    ("prepare test days -1", lambda d: ["prepare", "rsc15", "--clicks", str(d / "clicks.dat"),
                                        "--out", str(d / "prep"), "--test-days", "-1"],
     ["--test-days", "> 0"]),
    ("prepare prefix with slash", lambda d: ["prepare", "rsc15", "--clicks",
                                             str(d / "clicks.dat"), "--out", str(d / "prep"),
                                             "--prefix", "a/b"], ["--prefix"]),
    ("tune trials 0", lambda d: ["tune", "--train", str(d / "train.tsv"), "--valid",
                                 str(d / "test.tsv"), "--out", str(d / "best.json"),
                                 "--trials", "0"], ["--trials", ">= 1"]),
    ("tune bad setting", lambda d: ["tune", "--train", str(d / "train.tsv"), "--valid",
                                    str(d / "test.tsv"), "--out", str(d / "best.json"),
                                    "--trials", "1", "--set", "dropout_p_embed=2"],
     ["dropout_p_embed"]),
    ("tune valid missing", lambda d: ["tune", "--train", str(d / "train.tsv"), "--valid",
                                      str(d / "nope.tsv"), "--out", str(d / "best.json"),
                                      "--trials", "1"], ["--valid", "does not exist"]),
    ("reproduce out is a dir", lambda d: ["reproduce", "--train", str(d / "train.tsv"),
                                          "--test", str(d / "test.tsv"), "--out",
                                          str(d / "other")], ["--out", "directory"]),
    ("generate items 0", lambda d: ["generate", "--out", str(d / "gen"), "--items", "0"],
     ["--items"]),
    ("log level", lambda d: ["-v", "LOUD", "generate", "--out", str(d / "gen")],
     ["--log-level", "WARNING"]),
    ("unknown command", lambda d: ["fit"], ["fit"]),
]


@pytest.mark.parametrize("argv, words", [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(files, argv, words, capsys):
    before = sorted(os.listdir(files))
    code = main(["-v", "WARNING", *argv(files)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tf-gru4rec") and "error:" in lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert sorted(os.listdir(files)) == before  # nothing written (no --out, no staging dir)


def test_every_parameter_has_a_range_check():
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(CHECKS)


def test_failed_train_leaves_the_previous_model_untouched(files, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["-v", "WARNING", "train", "--train", str(files / "train.tsv"), "--out",
                 str(out), *TINY]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(["-v", "WARNING", "train", "--train", str(files / "train.tsv"), "--test",
                 str(files / "unknown.tsv"), "--out", str(out), *TINY])
    assert code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no staging directory left behind
    # A successful retrain replaces the directory as a whole.
    capsys.readouterr()
    assert main(["-v", "WARNING", "train", "--train", str(files / "train.tsv"), "--out",
                 str(out), *TINY, "--set", "layers=4"]) == 0
    assert json.loads((out / "config.json").read_text())["layers"] == [4]
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.parametrize("argv", [
    ["train", "--train", "{d}/train.tsv", "--out", "{d}/out", "--set", "dropout_p_hidden=1.5"],
    # default suite time (README: Tests): one real process by default, the in-process
    # tests above cover these messages
    pytest.param(["train", "--train", "{d}/header.tsv", "--out", "{d}/out"],
                 marks=pytest.mark.slow),
    pytest.param(["evaluate", "--model", "{d}/model", "--test", "{d}/unknown.tsv"],
                 marks=pytest.mark.slow),
], ids=["parameter", "header-only file", "nothing to evaluate"])
def test_real_process_writes_no_traceback(files, argv):
    argv = [a.format(d=files) for a in argv]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "tf_gru4rec.cli", "-v", "WARNING", *argv],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "tf-gru4rec" in line]
    assert len(errors) == 1 and "error:" in errors[0], done.stderr
    assert not os.path.exists(files / "out")
