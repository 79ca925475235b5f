"""The trivago RecSys 2019 sample (a real log: Parquet named .parquet.snappy, hex session ids,
mixed event types) through the README's second walk-through, with the CLI alone: prepared in
memory and with --shards (the counts of the data's SOURCE.md), then (slow) trained, evaluated,
exported, served and replayed, the replay equal to `evaluate`. Skipped without the data."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
from test_walkthrough import REPO, TINY, _table_row

from tf_gru4rec.cli import main
from tf_gru4rec.data.io import read_events
from tf_gru4rec.data.shards import ShardSet

README_PATH = "../shared/data/trivago_100k/trivago_val_100k.parquet.snappy"


def trivago_commands() -> list[list[str]]:
    """The `tf-gru4rec` lines of the README's trivago code block (continuations joined)."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split("### A second example: the trivago sample", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.startswith("tf-gru4rec")]


def _with_shards(argv: list[str]) -> list[str]:
    """A command of the block as it reads with --shards: the shard directory and the Parquet
    test file instead of the TSV files."""
    swap = {"trivago/train.tsv": "trivago/train", "trivago/test.tsv": "trivago/test.parquet"}
    argv = [swap.get(a, a) for a in argv]
    return [*argv, "--shards"] if argv[0] == "prepare" else argv


def _commands(trivago_path: str, shards: bool) -> list[list[str]]:
    commands = []
    for argv in trivago_commands():
        argv = [trivago_path if a == README_PATH else a for a in argv[1:]]
        if shards and argv[0] == "baselines":
            continue  # baselines read a training file, not shards
        commands.append(_with_shards(argv) if shards else argv)
    return commands


@pytest.mark.parametrize("shards", [False, True], ids=["memory", "shards"])
def test_the_trivago_sample_is_prepared_as_its_source_says(trivago_path, tmp_path,
                                                           monkeypatch, capsys, shards):
    monkeypatch.chdir(tmp_path)
    prepare = _commands(trivago_path, shards)[0]
    assert prepare[:2] == ["prepare", "log"]
    assert main(["-v", "WARNING", *prepare]) == 0
    report = json.loads((tmp_path / "trivago" / "prepare.json").read_text())
    assert report["read"]["rows"] == 100_003
    assert report["read"]["row_filters"][0]["rows_removed"] == 100_003 - 87_612
    assert report["input"]["events"] == 87_612
    train, test = report["outputs"]["train"], report["outputs"]["test"]
    assert (train["events"], train["sessions"], train["items"]) == (35_990, 1_180, 2_061)
    assert (test["events"], test["sessions"]) == (3_879, 290)
    split = next(s for s in report["steps"] if s["step"] == "test split by session end")
    assert split["cut_date"].startswith("2018-11-0")
    table = capsys.readouterr().out
    assert "rows read" in table and "2018-11-0" in table
    if shards:  # the vocabulary and test.parquet, as `train` reads them, share the id type
        vocabulary = ShardSet.load(tmp_path / "trivago").vocabulary
        items = read_events(tmp_path / "trivago" / "test.parquet")["ItemId"].to_numpy()
        assert vocabulary.raw_ids.dtype.kind == "i"
        assert (vocabulary.lookup(items) >= 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("shards", [False, True], ids=["memory", "shards"])
def test_the_trivago_walkthrough_serves_a_model_whose_replay_equals_evaluate(
        trivago_path, tmp_path, monkeypatch, capsys, shards):
    from tf_gru4rec.serving.dev_server import DevServer

    monkeypatch.chdir(tmp_path)
    commands = _commands(trivago_path, shards)
    assert [c[0] for c in commands] == ["prepare", "train", "evaluate",
                                        *([] if shards else ["baselines"]), "export",
                                        "serve", "replay"]
    server, out = None, {}
    try:
        for argv in commands:
            if argv[-1] == "&":  # serve: the development server, on a free port
                options = dict(zip(argv[1:-1:2], argv[2:-1:2], strict=True))
                server = DevServer(options["--base"], port=0).start()
                continue
            if argv[0] == "train":
                argv = [*argv, *TINY, "--set", "layers=16", "--set", "n_sample=64"]
            if argv[0] == "replay":
                argv[argv.index("--target") + 1] = server.target
            capsys.readouterr()
            assert main(["-v", "WARNING", *argv]) == 0, argv
            out[argv[0]] = capsys.readouterr().out
    finally:
        if server is not None:
            server.stop()
    evaluated = _table_row(out["evaluate"], "trivago-model")
    replayed = _table_row(out["replay"], f"served ({server.target})")
    assert replayed == evaluated and int(evaluated["test_events"]) > 3_000
    if not shards:
        spop = _table_row(out["baselines"], "spop")
        assert float(spop["recall@20"]) > 0.9  # a repeat-heavy log (SOURCE.md: 0.968)
