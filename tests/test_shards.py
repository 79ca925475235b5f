"""`prepare log --shards`: the same protocol as the in-memory path, session-sorted Parquet
shards read back by `ShardSet`, errors naming the row across chunks, and a run under a
memory cap that the in-memory path cannot meet."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from tf_gru4rec.cli import main
from tf_gru4rec.cli.prepare import CHUNK_ROWS_ENV
from tf_gru4rec.data.io import DataError, read_events
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.shards import ShardSet

pytest.importorskip("duckdb")

sys.path.insert(0, os.path.dirname(__file__))
from test_prepare_log import HAND_STEPS, T0, _frame, _write  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepare(path, out, *extra) -> int:
    return main(["-v", "WARNING", "prepare", "log", "--input", str(path), "--out", str(out),
                 *extra])


def _both(tmp_path, path, monkeypatch, *extra, chunk_rows=4, shard_events=3):
    """Prepare `path` in memory (out "mem") and with --shards (out "sh"); both reports."""
    assert _prepare(path, tmp_path / "mem", *extra) == 0
    monkeypatch.setenv(CHUNK_ROWS_ENV, str(chunk_rows))
    assert _prepare(path, tmp_path / "sh", *extra, "--shards", "--shard-events",
                    str(shard_events)) == 0
    return [json.loads((tmp_path / d / "prepare.json").read_text()) for d in ("mem", "sh")]


def _events(frame: pd.DataFrame) -> list:
    return sorted(map(tuple, frame[["SessionId", "ItemId", "Time"]].to_numpy().tolist()))


def _check_shards(out) -> pd.DataFrame:
    """The shard invariants; returns all shards concatenated."""
    report = json.loads((out / "prepare.json").read_text())
    assert report["format"] == "tf-gru4rec-shards/1"
    items = pd.read_parquet(out / "items.parquet")
    assert list(items["ItemIdx"]) == list(range(report["n_items"]))
    parts = [pd.read_parquet(out / s["path"]).assign(shard=k)
             for k, s in enumerate(report["shards"])]
    for part, s in zip(parts, report["shards"], strict=True):
        assert (len(part), part["SessionId"].nunique()) == (s["events"], s["sessions"])
    train = pd.concat(parts, ignore_index=True)
    assert train["ItemIdx"].dtype == np.int32 and train["Time"].dtype == np.float64
    assert (train.groupby("SessionId")["shard"].nunique() == 1).all()  # never split
    runs = (train["SessionId"] != train["SessionId"].shift()).cumsum()
    assert runs.max() == train["SessionId"].nunique()  # each session is one run
    starts = train.groupby(runs).agg(start=("Time", "min"), sid=("SessionId", "first"))
    assert starts.sort_values(["start", "sid"]).index.tolist() == starts.index.tolist()
    assert (train.groupby(runs)["Time"].apply(lambda t: t.is_monotonic_increasing)).all()
    assert (items["ItemId"].to_numpy()[train["ItemIdx"]] == train["ItemId"].to_numpy()).all()
    first = pd.unique(train["ItemIdx"])
    assert list(first) == list(range(len(items)))  # index = order of first appearance
    support = np.bincount(train["ItemIdx"], minlength=len(items))
    assert items["support"].dtype == np.int64 and list(items["support"]) == list(support)
    return train


def test_the_hand_example_gives_the_same_report_and_events(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path / "log.tsv", _frame().rename(columns={"ts": "Time"}), "\t")
    extra = ["--session-col", "session", "--item-col", "item", "--min-item-support", "2"]
    mem, sh = _both(tmp_path, path, monkeypatch, *extra)
    steps = [None if "events_removed" not in s else
             (s["events_removed"], s["sessions_removed"], s["items_removed"])
             for s in sh["steps"]]
    assert steps == HAND_STEPS
    assert (sh["input"], sh["steps"], sh["outputs"]) == (mem["input"], mem["steps"],
                                                         mem["outputs"])
    assert len(sh["shards"]) == 2 and sh["n_items"] == 3
    train = _check_shards(tmp_path / "sh")
    assert _events(train) == _events(read_events(tmp_path / "mem" / "train.tsv"))
    test = read_events(tmp_path / "sh" / "test.parquet")
    assert test.equals(read_events(tmp_path / "mem" / "test.tsv"))
    table = capsys.readouterr().out
    assert "train/" in table and "test.parquet" in table
    assert sorted(os.listdir(tmp_path)) == ["log.tsv", "mem", "sh"]  # no work dir left


def _synthetic_log(path, n_events: int, seed: int = 0, string_sessions: bool = False):
    """A seeded click log: geometric session lengths, Zipf items, starts over 10 days,
    equal times inside some sessions (the input order breaks the tie)."""
    rng = np.random.default_rng(seed)
    lengths = rng.geometric(0.25, size=n_events) + 1
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_events) + 1]
    sessions = np.repeat(np.arange(len(lengths)), lengths)[:n_events]
    starts = rng.uniform(0, 10 * 86_400, len(lengths))
    t = np.round(1.7e9 + starts[sessions] + (np.arange(n_events) % 7) // 2 * 30.0)
    items = np.minimum(rng.zipf(1.3, n_events), 50_000)
    ids = pa.array(sessions).cast(pa.string())
    if string_sessions:
        ids = pa.array([f"s{s}" for s in sessions])
    pcsv.write_csv(pa.table({"SessionId": ids, "ItemId": pa.array(items).cast(pa.string()),
                             "Time": t}), path)
    return str(path)


@pytest.mark.parametrize("string_sessions", [False, True])
def test_shardset_reads_the_session_log_of_the_in_memory_train_set(
        tmp_path, monkeypatch, string_sessions):
    path = _synthetic_log(tmp_path / "log.csv", 20_000, string_sessions=string_sessions)
    mem, sh = _both(tmp_path, path, monkeypatch, "--test-days", "1", "--valid-days", "1",
                    chunk_rows=3_000, shard_events=2_500)
    assert (sh["input"], sh["steps"], sh["outputs"]) == (mem["input"], mem["steps"],
                                                         mem["outputs"])
    train = _check_shards(tmp_path / "sh")
    shards = ShardSet.load(tmp_path / "sh" / "train")
    assert shards.root == str(tmp_path / "sh") and len(shards.shards) == len(sh["shards"]) > 3
    expected = SessionLog.from_events(read_events(tmp_path / "mem" / "train.tsv"),
                                      shards.vocabulary)
    logs = [shards.read(k) for k in range(len(shards.shards))]
    assert np.array_equal(np.concatenate([log.items for log in logs]), expected.items)
    assert np.array_equal(np.concatenate([log.session_ids for log in logs]),
                          expected.session_ids)
    assert np.array_equal(np.concatenate([log.start_times for log in logs]),
                          expected.start_times)
    assert np.array_equal(np.concatenate([log.lengths for log in logs]), expected.lengths)
    assert all(log.n_items == shards.n_items == len(shards.vocabulary) for log in logs)
    assert shards.n_events == len(train) == expected.n_events
    assert shards.n_sessions == expected.n_sessions
    assert shards.n_predictions == expected.n_predictions
    assert np.array_equal(shards.item_support, expected.item_support())
    for name in ("test", "valid"):
        assert read_events(tmp_path / "sh" / f"{name}.parquet").equals(
            read_events(tmp_path / "mem" / f"{name}.tsv"))


def test_ids_are_strings_when_any_chunk_has_a_string_id(tmp_path, monkeypatch):
    frame = _frame().rename(columns={"ts": "Time"})
    frame["session"] = frame["session"].astype(str)
    frame.loc[len(frame) - 1, "session"] = "9x"  # the last chunk's; "007"-like text is kept
    frame.loc[0:1, "session"] = "01"
    path = _write(tmp_path / "log.tsv", frame, "\t")
    extra = ["--session-col", "session", "--item-col", "item", "--min-item-support", "2"]
    mem, sh = _both(tmp_path, path, monkeypatch, *extra)
    assert sh["steps"] == mem["steps"]
    train = pq.read_table(tmp_path / "sh" / "train" / "part-00000.parquet")
    assert pa.types.is_string(train.schema.field("SessionId").type)
    assert train.column("SessionId")[0].as_py() == "01"


def test_ids_are_strings_when_a_middle_chunk_has_a_string_id(tmp_path, monkeypatch):
    """Chunks of 4 rows: the string id is in the third of five; the last is all integers."""
    frame = _frame().rename(columns={"ts": "Time"})
    frame["session"] = frame["session"].astype(str)
    frame.loc[0:1, "session"] = "01"
    frame.loc[9:10, "session"] = "5x"  # session 5: rows 9-10, the third chunk
    path = _write(tmp_path / "log.tsv", frame, "\t")
    extra = ["--session-col", "session", "--item-col", "item", "--min-item-support", "2"]
    mem, sh = _both(tmp_path, path, monkeypatch, *extra)
    assert sh["steps"] == mem["steps"] and sh["outputs"] == mem["outputs"]
    train = pq.read_table(tmp_path / "sh" / "train" / "part-00000.parquet")
    assert pa.types.is_string(train.schema.field("SessionId").type)
    assert train.column("SessionId")[0].as_py() == "01"


def test_all_digit_item_ids_of_the_shards_match_the_test_file(tmp_path, monkeypatch):
    """Text item ids in the log (a sort order among the hotel ids) that the filters remove:
    the vocabulary of the shards and test.parquet, as `train` reads them, are one id type."""
    frame = _frame().rename(columns={"ts": "Time"})
    frame["item"] = frame["item"].map({"A": "101", "B": "202", "C": "303", "Z": "909",
                                       "E": "505", "R": "707", "Q": "Sort by Price"})
    path = _write(tmp_path / "log.tsv", frame, "\t")
    extra = ["--session-col", "session", "--item-col", "item", "--min-item-support", "2"]
    _both(tmp_path, path, monkeypatch, *extra)
    vocabulary = ShardSet.load(tmp_path / "sh").vocabulary
    assert list(vocabulary.raw_ids) == [101, 202, 303]
    test = read_events(tmp_path / "sh" / "test.parquet")
    assert (vocabulary.lookup(test["ItemId"].to_numpy()) >= 0).all()


def test_row_filters_and_collapse_give_the_in_memory_report_and_events(tmp_path, monkeypatch):
    frame = _frame().rename(columns={"ts": "Time"}).assign(action="click")
    repeats = frame[frame["session"].isin([2, 7])].assign(Time=lambda f: f["Time"] + 1)
    noise = pd.DataFrame({"session": [1, 3, 9], "item": ["Sort by Price", "", "x"],
                          "Time": [T0 + 1, T0 + 201, T0 + 2 * 86_400 + 201],
                          "action": ["sort", "filter", "sort"]})
    frame = pd.concat([frame, repeats, noise], ignore_index=True)  # repeats: A A B B
    path = _write(tmp_path / "log.csv", frame, ",")
    extra = ["--session-col", "session", "--item-col", "item", "--min-item-support", "2",
             "--keep", "action=click", "--drop", "item=x", "--collapse-repeats"]
    mem, sh = _both(tmp_path, path, monkeypatch, *extra, chunk_rows=5)
    assert mem["read"] == {"rows": 27, "row_filters": [
        {"column": "action", "keep": ["click"], "rows_removed": 3},
        {"column": "item", "drop": ["x"], "rows_removed": 0}]}
    assert mem["steps"][0]["step"] == "repeats of an item collapsed"
    assert mem["steps"][0]["events_removed"] == 5  # 2: A A B B C C -> A B C; 7: A A B B
    for key in ("read", "input", "steps", "outputs", "collapse_repeats"):
        assert sh[key] == mem[key], key
    train = _check_shards(tmp_path / "sh")
    assert _events(train) == _events(read_events(tmp_path / "mem" / "train.tsv"))
    assert read_events(tmp_path / "sh" / "test.parquet").equals(
        read_events(tmp_path / "mem" / "test.tsv"))


def test_a_test_start_gives_the_in_memory_split(tmp_path, monkeypatch):
    path = _write(tmp_path / "log.tsv", _frame().rename(columns={"ts": "Time"}), "\t")
    extra = ["--session-col", "session", "--item-col", "item", "--min-item-support", "2",
             "--test-start", "2023-11-16T00:00:00"]
    mem, sh = _both(tmp_path, path, monkeypatch, *extra)
    assert sh["steps"] == mem["steps"] and sh["test_start"] == mem["test_start"]
    assert sh["steps"][7]["cut_date"] == "2023-11-16T00:00:00+00:00"
    assert sh["outputs"] == mem["outputs"]


@pytest.mark.parametrize("row,column,value,words", [
    (37, "Time", "yesterday", "column 'Time': expected unix seconds"),
    (58, "ItemId", "", "column 'ItemId': empty id"),
    (23, "SessionId", " ", "column 'SessionId': empty id"),
])
def test_bad_input_in_a_later_chunk_names_its_row(tmp_path, monkeypatch, capsys, row, column,
                                                  value, words):
    path = _synthetic_log(tmp_path / "log.csv", 80)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row - 1, column] = value
    frame.to_csv(path, index=False)
    monkeypatch.setenv(CHUNK_ROWS_ENV, "10")
    assert _prepare(path, tmp_path / "sh", "--shards") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"row {row}, {words}" in err[0], err
    assert _prepare(path, tmp_path / "mem") == 2  # the in-memory path says the same
    assert capsys.readouterr().err.strip().splitlines() == err
    assert sorted(os.listdir(tmp_path)) == ["log.csv"]  # no output, no work dir left


def test_a_protocol_error_is_the_in_memory_line(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path / "log.tsv", _frame().rename(columns={"ts": "Time"}), "\t")
    extra = ["--session-col", "session", "--item-col", "item", "--min-item-support", "2",
             "--test-days", "30"]
    assert _prepare(path, tmp_path / "mem", *extra) == 2
    mem = capsys.readouterr().err
    assert _prepare(path, tmp_path / "sh", *extra, "--shards") == 2
    assert capsys.readouterr().err == mem and "test split" in mem
    assert sorted(os.listdir(tmp_path)) == ["log.tsv"]


def test_a_directory_that_is_not_a_shard_set_is_refused(tmp_path):
    path = _write(tmp_path / "log.tsv", _frame().rename(columns={"ts": "Time"}), "\t")
    assert _prepare(path, tmp_path / "mem", "--session-col", "session", "--item-col",
                    "item", "--min-item-support", "2") == 0
    with pytest.raises(DataError, match="format None.*--shards"):
        ShardSet.load(tmp_path / "mem")
    with pytest.raises(DataError, match="no prepare.json"):
        ShardSet.load(tmp_path)


# The memory-capped run. RLIMIT_AS (address space) is the cap: RLIMIT_DATA would not stop
# pandas, whose large buffers come from file-less mmaps counted in VmData only in part
# (measured: the in-memory path peaks at 1.27 GB VmHWM with 0.57 GB VmData). Reserved, unused
# address space counts against RLIMIT_AS, so the child uses the system allocator for Arrow
# (jemalloc reserves large arenas) and two glibc malloc arenas; without these both paths
# reserve about 2.4 GB and RLIMIT_AS separates nothing. Measured on 2 cores, uncapped, with
# these settings and this 4M-event log (99 MB CSV): in memory VmPeak 1.72 GB (RSS 1.46 GB,
# 19 s); --shards --memory-mb 128 VmPeak 0.92 GB (RSS 0.47 GB, 14 s). The cap: 1100 MB.
CAPPED = """
import resource, sys
cap = int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from tf_gru4rec.cli import main
code = main(["-v", "WARNING", "prepare", "log", *sys.argv[2:]])
assert "tensorflow" not in sys.modules
sys.exit(code)
"""
CAP_MB = 1100
N_EVENTS = 4_000_000
# Training: TensorFlow alone reserves ~1.7 GB of address space (0.66 GB resident), so the cap is
# set above what the process holds once TensorFlow has started. Measured on 2 cores with this
# log, one epoch at batch 512 (as the test trains; at 2048 it ran out): from the shards VmPeak
# +0.22 GB (RSS 0.75 GB, 17 s); from the whole log in pandas, the in-memory path, +0.94 GB
# (RSS 1.60 GB). The cap: +450 MB.
CAPPED_TRAIN = """
import resource, sys
import tensorflow as tf
tf.constant(1) + 1  # the runtime's threads and pools are up
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
cap = int(status["VmSize"].split()[0]) * 1024 + int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from tf_gru4rec.cli import main
sys.exit(main(["-v", "WARNING", "train", *sys.argv[2:]]))
"""
TRAIN_CAP_MB = 450
# A guard against a hung child only, not a time limit: no assertion here depends on speed.
HANG = 1800
SMALL_TRAINING = ["--set", "n_epochs=1", "--set", "batch_size=512", "--set", "n_sample=0",
                  "--set", "layers=16"]


@pytest.mark.slow  # default suite time (README: Tests)
def test_shards_prepare_and_train_a_log_the_in_memory_path_cannot_under_the_same_caps(tmp_path):
    path = _synthetic_log(tmp_path / "log.csv", N_EVENTS)
    env = {**os.environ, "PYTHONPATH": REPO, "ARROW_DEFAULT_MEMORY_POOL": "system",
           "MALLOC_ARENA_MAX": "2"}

    def run(out, *extra):
        return subprocess.run([sys.executable, "-c", CAPPED, str(CAP_MB), "--input", path,
                               "--out", str(tmp_path / out), *extra], env=env,
                              capture_output=True, text=True, timeout=HANG)

    shards = run("sh", "--shards", "--memory-mb", "128")
    assert shards.returncode == 0, shards.stderr[-2000:]
    report = json.loads((tmp_path / "sh" / "prepare.json").read_text())
    assert report["input"]["events"] == N_EVENTS and len(report["shards"]) >= 2
    memory = run("mem")
    assert memory.returncode != 0
    # Out of memory: MemoryError, bad_alloc, or Arrow wrapping a column's strings (below)
    assert any(sign in memory.stderr for sign in ("MemoryError", "bad_alloc", "Wrapping")) \
        or memory.returncode < 0, memory.stderr[-2000:]
    assert not (tmp_path / "mem").exists()

    def train(train_path, out):
        return subprocess.run([sys.executable, "-c", CAPPED_TRAIN, str(TRAIN_CAP_MB), "--train",
                               train_path, "--out", str(tmp_path / out), *SMALL_TRAINING],
                              env=env, capture_output=True, text=True, timeout=HANG)

    trained = train(str(tmp_path / "sh" / "train"), "model")
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["train_events"] == report["outputs"]["train"]["events"] - \
        report["outputs"]["train"]["sessions"]
    whole = train(path, "model-mem")
    assert whole.returncode != 0
    # Out of memory while pandas reads it: Python's MemoryError, C++'s bad_alloc, or Arrow
    # failing to create the Python strings of a column ("Wrapping N failed").
    assert any(sign in whole.stderr for sign in ("MemoryError", "bad_alloc", "Wrapping")) \
        or whole.returncode < 0, whole.stderr[-2000:]
    assert not (tmp_path / "model-mem").exists()
