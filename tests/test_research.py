"""Experiment tooling: `prepare rsc15`, `reproduce`, `tune` and the RankingValidation callback."""

import json
import os

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import data_dir

from tf_gru4rec.cli import main
from tf_gru4rec.config import load_preset
from tf_gru4rec.data.io import read_events, write_events
from tf_gru4rec.data.preprocess import restrict_to_known_items
from tf_gru4rec.data.rsc15 import prepare_rsc15, split_by_session_end
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.synthetic import (
    SyntheticConfig,
    generate_sessions,
    train_test_split_synthetic,
)
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.evaluation import evaluate
from tf_gru4rec.training import build_model, train
from tf_gru4rec.training.callbacks import RankingValidation

# ---------------------------------------------------------------- prepare rsc15
# A raw yoochoose-clicks.dat written by hand: session -> [(ISO time, item)]. Items 11..44 are
# kept; 99 has 2 events (rare: dropped, which leaves sessions 4 and 7 with one event); 77 has
# 5 events, all in the test period (kept by the item filter, then dropped from the test set as
# unknown to training). t_max = 04-03 12:00:00, so the test cut is 04-02 12:00:00 and session
# 10, which ends exactly there, is a test session (the original's `>=`). Inside train_full
# (t_max 04-02 10:02) the validation cut is 04-01 10:02: sessions 13 and 6 are validation.
RAW = {
    1: [("2014-04-01T00:10:00.000Z", 11), ("2014-04-01T00:11:00.000Z", 22),
        ("2014-04-01T00:12:00.000Z", 33)],
    2: [("2014-04-01T01:00:00.000Z", 11), ("2014-04-01T01:01:00.000Z", 22),
        ("2014-04-01T01:02:00.000Z", 44)],
    3: [("2014-04-01T02:00:00.000Z", 22), ("2014-04-01T02:01:00.000Z", 33),
        ("2014-04-01T02:02:00.000Z", 44)],
    4: [("2014-04-01T03:00:00.000Z", 99), ("2014-04-01T03:01:00.000Z", 11)],
    5: [("2014-04-01T04:00:00.000Z", 44)],
    13: [("2014-04-02T09:00:00.000Z", 33), ("2014-04-02T09:01:00.500Z", 33)],
    6: [("2014-04-02T10:00:00.000Z", 11), ("2014-04-02T10:01:00.000Z", 33),
        ("2014-04-02T10:02:00.000Z", 44)],
    7: [("2014-04-02T11:00:00.000Z", 22), ("2014-04-02T11:01:00.000Z", 99)],
    10: [("2014-04-02T11:59:00.000Z", 11), ("2014-04-02T12:00:00.000Z", 22)],
    8: [("2014-04-03T09:00:00.000Z", 11), ("2014-04-03T09:01:00.000Z", 77),
        ("2014-04-03T09:02:00.000Z", 33)],
    9: [("2014-04-03T10:00:00.000Z", 77), ("2014-04-03T10:01:00.000Z", 22)],
    11: [("2014-04-03T11:00:00.000Z", 77), ("2014-04-03T11:01:00.000Z", 77),
         ("2014-04-03T11:02:00.000Z", 77), ("2014-04-03T11:03:00.000Z", 44)],
    12: [("2014-04-03T11:58:00.000Z", 33), ("2014-04-03T11:59:00.000Z", 44),
         ("2014-04-03T12:00:00.000Z", 11)],
}
EXPECTED = {  # split -> {session: items in time order}
    "train_full": {1: [11, 22, 33], 2: [11, 22, 44], 3: [22, 33, 44], 13: [33, 33],
                   6: [11, 33, 44]},
    "test": {10: [11, 22], 8: [11, 33], 12: [33, 44, 11]},
    "train_tr": {1: [11, 22, 33], 2: [11, 22, 44], 3: [22, 33, 44]},
    "train_valid": {13: [33, 33], 6: [11, 33, 44]},
}


def _write_raw(path):
    rows = [f"{s},{t},{item},0" for s, events in RAW.items() for t, item in events]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]  # the raw file is not sorted
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")


def _sessions(frame: pd.DataFrame) -> dict:
    frame = frame.sort_values(["SessionId", "Time"], kind="stable")
    return {int(s): [int(i) for i in g["ItemId"]] for s, g in frame.groupby("SessionId")}


def test_prepare_rsc15_cli_follows_the_protocol(tmp_path):
    raw = tmp_path / "yoochoose-clicks.dat"
    _write_raw(raw)
    out = tmp_path / "prepared"
    assert main(["-v", "WARNING", "prepare", "rsc15", "--clicks", str(raw),
                 "--out", str(out)]) == 0
    for split, sessions in EXPECTED.items():
        path = out / f"rsc15_{split}.txt"
        assert path.read_text().splitlines()[0] == "SessionId\tItemId\tTime"
        assert _sessions(read_events(path)) == sessions, split
    report = json.loads((out / "rsc15_report.json").read_text())
    assert report["input"]["events"] == 33
    steps = [(e["step"], e["events_removed"], e["sessions_removed"], e["items_removed"])
             for e in report["filter"]]
    assert steps == [("sessions < 2 events", 1, 1, 0), ("items < 5 events", 2, 0, 1),
                     ("sessions < 2 events", 2, 2, 0)]
    split, unknown, short = report["test_split"]
    assert (split["train_events"], split["test_events"], split["test_sessions"]) == (14, 14, 5)
    assert split["cut_time"] == pd.Timestamp("2014-04-02T12:00:00Z").timestamp()
    assert (unknown["events_removed"], unknown["items_removed"]) == (5, 1)
    assert (short["events_removed"], short["sessions_removed"]) == (2, 2)
    assert report["valid_split"][0]["cut_time"] == pd.Timestamp(
        "2014-04-01T10:02:00Z").timestamp()
    assert {k: v["events"] for k, v in report["outputs"].items()} == {
        "train_full": 14, "test": 7, "train_tr": 9, "train_valid": 5}


def test_validation_split_reproduces_the_rsc15_sample_files():
    paths = {name: os.path.join(data_dir(), f"yoochoose-clicks-100k_{name}.txt.gz")
             for name in ("train_full", "train_tr", "train_valid")}
    if not all(os.path.exists(p) for p in paths.values()):
        pytest.skip(f"real data not found in {data_dir()} (set TF_GRU4REC_DATA)")
    train_tr, valid = split_by_session_end(read_events(paths["train_full"]), 86_400.0)
    valid = restrict_to_known_items(valid, train_tr)

    def rows(frame):
        return frame.sort_values(["SessionId", "Time", "ItemId"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(rows(train_tr), rows(read_events(paths["train_tr"])))
    pd.testing.assert_frame_equal(rows(valid), rows(read_events(paths["train_valid"])))


def test_prepare_rsc15_rejects_a_log_shorter_than_the_test_period():
    events = pd.DataFrame({"SessionId": [1, 1, 2, 2] * 5, "ItemId": [1, 2, 1, 2] * 5,
                           "Time": np.arange(20.0)})
    with pytest.raises(ValueError, match="leaves 0 training"):
        prepare_rsc15(events, test_seconds=86_400.0)


# ---------------------------------------------------------------- synthetic files
@pytest.fixture(scope="module")
def click_files(tmp_path_factory):
    """Tiny synthetic train/test and train_tr/valid files (3 days, 200 items)."""
    base = tmp_path_factory.mktemp("clicks")
    events = generate_sessions(SyntheticConfig(n_items=150, n_sessions=360, n_intents=8,
                                               days=3, seed=5))
    train_full, test = train_test_split_synthetic(events, 1.0)
    train_tr, valid = train_test_split_synthetic(train_full, 1.0)
    paths = {}
    for name, frame in [("train", train_full), ("test", test), ("train_tr", train_tr),
                        ("valid", valid)]:
        paths[name] = str(base / f"{name}.tsv")
        write_events(frame, paths[name])
    return paths


@pytest.mark.slow  # default suite time (README: Tests)
def test_reproduce_quick_writes_the_table_beside_the_paper(click_files, tmp_path):
    out = tmp_path / "report.md"
    assert main(["-v", "WARNING", "reproduce", "--train", click_files["train"],
                 "--test", click_files["test"], "--out", str(out), "--quick",
                 "--verbose", "0"]) == 0
    text = out.read_text()
    for label, paper in [("| POP |", "0.0050"), ("| Item-KNN |", "0.5065"),
                         ("| GRU4Rec TOP1, 100 units |", "0.5853"),
                         ("| GRU4Rec BPR, 1000 units |", "0.6322"),
                         ("| GRU4Rec 2018 cross-entropy + logQ (rsc15-xe) |", "0.7283"),
                         ("| GRU4Rec 2018 BPR-max (rsc15-bprmax) |", "0.7261")]:
        line = next(line for line in text.splitlines() if line.startswith(label))
        assert paper in line
    assert "Quick smoke run" in text and "tf-gru4rec reproduce" in text
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ["pop", "spop", "itemknn", "bprmf", "top1-100", "bpr-100", "xe-100",
                          "top1-1000", "bpr-1000", "xe-1000", "rsc15-xe", "rsc15-bprmax"]
    assert rows["top1-1000"]["config"]["layers"] == [16]
    assert rows["top1-100"]["config"]["layers"] == [8]
    assert rows["top1-100"]["config"]["final_act"] == "tanh"
    for row in rows.values():
        assert 0.0 <= row["mrr@20"] <= row["recall@20"] <= 1.0
    # The sequence signal of the synthetic data: the tuned settings beat POP even when tiny.
    assert rows["rsc15-xe"]["recall@20"] > rows["pop"]["recall@20"]


# ---------------------------------------------------------------- tune
def test_tune_writes_a_loadable_preset_and_resumes_the_study(click_files, tmp_path):
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    preset = tmp_path / "best.json"
    args = ["-v", "WARNING", "tune", "--train", click_files["train_tr"],
            "--valid", click_files["valid"], "--out", str(preset), "--storage", storage,
            "--study-name", "tiny", "--set", "layers=8", "--set", "n_epochs=1",
            "--set", "jit_compile=false", "--set", "n_sample=32", "--no-prune"]
    assert main([*args, "--trials", "2"]) == 0
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 2
    first = study.trials[0]
    assert first.user_attrs["base_preset"] is True  # the base preset (rsc15-xe) runs first
    assert first.params["learning_rate"] == 0.2 and first.params["dropout_p_hidden"] == 0.4
    assert "layers" not in first.params and "n_sample" not in first.params  # fixed by --set

    assert main([*args, "--trials", "3"]) == 0  # a rerun continues the same study
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    best = study.best_trial
    config = load_preset(str(preset))
    assert config.layers == [8] and config.n_sample == 32 and config.loss == "cross-entropy"
    assert config.learning_rate == pytest.approx(best.params["learning_rate"])
    assert config.batch_size == best.params["batch_size"]

    assert main([*args, "--trials", "3"]) == 0  # nothing left to run
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 3


def test_the_base_trial_off_the_grid_and_one_hot_trials_sample_and_warn_nothing_unused():
    """A base preset whose `layers` is off the default grid (100 in 64..256 step 32) in
    one-hot mode with one layer: no Optuna out-of-range warning, the base trial runs the base
    values, and no trial samples `dropout_p_hidden` where it has no layer to act on."""
    import warnings

    pytest.importorskip("optuna")
    from tf_gru4rec.config import TrainConfig
    from tf_gru4rec.training.tuning import base_params, default_space, open_study, suggest_config

    base = TrainConfig(layers=[100], embedding=0, constrained_embedding=False,
                       dropout_p_hidden=0.3, learning_rate=0.08)
    space = default_space("cross-entropy")
    study = open_study(seed=1, prune=False)
    study.enqueue_trial(base_params(base, space), user_attrs={"base_preset": True})
    configs = []

    def objective(trial):
        configs.append(suggest_config(trial, base, space))
        return 0.0

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        study.optimize(objective, n_trials=12)
    first = configs[0]
    assert first.layers == [100] and first.learning_rate == 0.08
    assert "layers" not in study.trials[0].params
    one_hot = [(t, c) for t, c in zip(study.trials, configs, strict=True)
               if not c.constrained_embedding and len(c.layers) == 1]
    assert one_hot and len(one_hot) < len(configs)  # both kinds were sampled
    for trial, config in one_hot:
        assert "dropout_p_hidden" not in trial.params and config.dropout_p_hidden == 0.0
    assert all("dropout_p_hidden" in t.params for t, c in zip(study.trials, configs,
                                                               strict=True)
               if c.constrained_embedding)


def test_search_space_file_in_the_original_format(tmp_path):
    from tf_gru4rec.training.tuning import load_space

    path = tmp_path / "space.json"
    path.write_text('{"name":"layers", "dtype":"int", "values":[64,512], "step":32}\n'
                    '{"name":"momentum", "dtype":"float", "values":[0.0, 0.9], "step":0.05}\n')
    space = load_space(str(path))
    assert [(p.name, p.dtype, p.values, p.step) for p in space] == [
        ("layers", "int", (64, 512), 32), ("momentum", "float", (0.0, 0.9), 0.05)]
    path.write_text('[{"name": "hidden_size", "dtype": "int", "values": [1, 2]}]')
    with pytest.raises(ValueError, match="Unknown parameter 'hidden_size'"):
        load_space(str(path))


# ---------------------------------------------------------------- telemetry
@pytest.fixture(scope="module")
def train_valid_logs(click_files):
    events = read_events(click_files["train_tr"])
    vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    valid = read_events(click_files["valid"])
    valid = valid[vocabulary.lookup(valid["ItemId"].to_numpy()) >= 0]
    valid = valid[valid.groupby("SessionId")["SessionId"].transform("size") >= 2]
    return SessionLog.from_events(events, vocabulary), SessionLog.from_events(valid, vocabulary)


def test_ranking_validation_feeds_logs_history_and_early_stopping(train_valid_logs):
    train_log, valid_log = train_valid_logs
    config = load_preset("quick").replace(layers=[8], n_sample=32, n_epochs=3,
                                          jit_compile=False, steps_per_execution=5)
    validation = RankingValidation(valid_log, cutoffs=(5, 20), every=2)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(sorted(k for k in logs if k.startswith("val_")))

    result = train(config, train_log, callbacks=[validation, Spy()], verbose=0)
    keys = ["val_mrr@20", "val_mrr@5", "val_recall@20", "val_recall@5"]
    assert seen == [[], keys, keys]  # every 2nd epoch, and the last one
    assert [epoch for epoch, _ in validation.history] == [2, 3]
    assert len(result.history["val_recall@20"]) == 2  # History records what was logged
    expected = evaluate(result.model, valid_log, (5, 20))
    for key in ("recall@5", "mrr@20"):
        assert validation.history[-1][1][f"val_{key}"] == pytest.approx(expected[key])

    # With learning rate 0 the metric never improves after epoch 1: patience 1 stops at 2.
    stopper = keras.callbacks.EarlyStopping(monitor="val_recall@20", mode="max", patience=1)
    result = train(config.replace(n_epochs=5, learning_rate=0.0), train_log, verbose=0,
                   callbacks=[RankingValidation(valid_log), stopper])
    assert len(result.history["loss"]) == 2 and stopper.stopped_epoch == 1
    assert result.history["val_recall@20"][0] == result.history["val_recall@20"][1]


def test_ranking_validation_checks_its_arguments(train_valid_logs):
    _, valid_log = train_valid_logs
    with pytest.raises(ValueError, match="`every` should be a positive int"):
        RankingValidation(valid_log, every=0)
    with pytest.raises(ValueError, match="`tie_mode`"):
        RankingValidation(valid_log, tie_mode="optimistic")
    with pytest.raises(ValueError, match="SessionLog"):
        RankingValidation([1, 2, 3])


def test_ranking_validation_reports_nan_for_a_diverged_model(train_valid_logs):
    train_log, valid_log = train_valid_logs
    model = build_model(load_preset("quick").replace(layers=[4], jit_compile=False),
                        train_log.n_items)
    weights = model.item_scores.trainable_variables[0]
    weights.assign(np.full(weights.shape, np.nan, dtype="float32"))
    callback = RankingValidation(valid_log)
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)  # NaN scores must not rank first (recall 1.0)
    assert np.isnan(logs["val_recall@20"]) and np.isnan(logs["val_mrr@20"])


def test_train_cli_writes_validation_to_tensorboard_and_json_lines(click_files, tmp_path):
    pytest.importorskip("tensorboard")
    tensorboard, lines = tmp_path / "tb", tmp_path / "log.jsonl"
    args = ["-v", "WARNING", "train", "--train", click_files["train_tr"], "--out",
            str(tmp_path / "model"), "--preset", "quick", "--set", "layers=8",
            "--set", "n_epochs=2", "--set", "jit_compile=false", "--set", "n_sample=32",
            "--verbose", "0"]
    assert main([*args, "--early-stopping", "1"]) == 2  # needs --valid
    assert main([*args, "--valid", click_files["valid"], "--tensorboard", str(tensorboard),
                 "--early-stopping", "3", "--log-json", str(lines)]) == 0
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0.0 < r["val_mrr@20"] <= r["val_recall@20"] <= 1.0 for r in records)
    assert os.listdir(tensorboard / "validation") and os.listdir(tensorboard / "train")
