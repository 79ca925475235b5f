"""`tf-gru4rec prepare log`: separators, time formats, the protocol's counts, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tf_gru4rec.cli import main
from tf_gru4rec.data.io import read_events
from tf_gru4rec.data.raw_log import detect_separator

T0 = 1_699_920_000  # 2023-11-14 00:00:00 UTC
DAY = 86_400
# (session, item, seconds after T0). Sessions 1-6 on day 0 (training), 7-9 on day 2 (test).
EVENTS = [
    (1, "A", 0), (1, "B", 10),
    (2, "A", 100), (2, "B", 110), (2, "C", 120),
    (3, "B", 200), (3, "C", 210),
    (4, "A", 300), (4, "Z", 310),
    (5, "Z", 400), (5, "R", 410),
    (6, "Q", 500),
    (7, "A", 2 * DAY), (7, "B", 2 * DAY + 10),
    (8, "A", 2 * DAY + 100), (8, "E", 2 * DAY + 110),
    (9, "E", 2 * DAY + 200), (9, "B", 2 * DAY + 210), (9, "C", 2 * DAY + 220),
]
# By hand, with --min-item-support 2 (supports: A 5, B 5, C 3, Z 2, E 2, R 1, Q 1):
#   sessions < 2:  session 6 (Q)                      -1 event, -1 session, -1 item -> 18
#   items < 2:     R                                  -1 event,  0 sessions, -1 item -> 17
#   sessions < 2:  session 5 is [Z]                   -1 event, -1 session,  0 items -> 16
#   items < 2:     Z (now only in session 4)          -1 event,  0 sessions, -1 item -> 15
#   sessions < 2:  session 4 is [A]                   -1 event, -1 session,  0 items -> 14
#   items < 2, sessions < 2: nothing (fixed point)
#   test split: t_max = 2 days + 220 s; sessions 7, 8, 9 end after t_max - 1 day: 7 events
#   test items unknown to training: E (twice)         -2 events, 0 sessions, -1 item -> 5
#   test sessions < 2: session 8 is [A]               -1 event, -1 session,  0 items -> 4
HAND_STEPS = [(1, 1, 1), (1, 0, 1), (1, 1, 0), (1, 0, 1), (1, 1, 0), (0, 0, 0), (0, 0, 0),
              None, (2, 0, 1), (1, 1, 0)]


def _frame(time_format: str = "s") -> pd.DataFrame:
    frame = pd.DataFrame(EVENTS, columns=["session", "item", "t"])
    seconds = T0 + frame.pop("t")
    if time_format == "s":
        frame["ts"] = seconds
    elif time_format == "ms":
        frame["ts"] = seconds * 1000
    elif time_format == "iso":
        frame["ts"] = pd.to_datetime(seconds, unit="s", utc=True).map(lambda t: t.isoformat())
    elif time_format.startswith("date+"):
        frame["day"] = pd.to_datetime(seconds // DAY * DAY, unit="s").dt.strftime("%Y-%m-%d")
        scale = 1000 if time_format == "date+ms" else 1
        frame["offset"] = seconds % DAY * scale
    return frame


def _write(path, frame: pd.DataFrame, sep: str):
    frame.to_csv(path, sep=sep, index=False)
    return str(path)


def _prepare(path, out, *extra) -> int:
    return main(["-v", "WARNING", "prepare", "log", "--input", str(path), "--out", str(out),
                 "--session-col", "session", "--item-col", "item", "--min-item-support", "2",
                 *extra])


def _check_hand_outputs(out):
    train, test = read_events(out / "train.tsv"), read_events(out / "test.tsv")
    assert sorted(train["SessionId"].unique()) == [1, 2, 3]
    assert list(train["ItemId"]) == ["A", "B", "A", "B", "C", "B", "C"]
    assert list(test["SessionId"]) == [7, 7, 9, 9]
    assert list(test["ItemId"]) == ["A", "B", "B", "C"]
    assert list(train["Time"]) == [T0 + t for s, _, t in EVENTS if s in (1, 2, 3)]
    assert not (out / "valid.tsv").exists()


@pytest.mark.parametrize("sep", ["\t", ",", ";", "|"])
def test_the_separator_is_detected(tmp_path, sep):
    path = _write(tmp_path / "log.txt", _frame().rename(columns={"ts": "Time"}), sep)
    assert detect_separator(path) == sep
    assert _prepare(path, tmp_path / "out") == 0
    _check_hand_outputs(tmp_path / "out")


def test_the_separator_splitting_every_line_alike_into_most_fields_wins(tmp_path):
    frame = _frame().rename(columns={"ts": "Time"})
    frame["price, EUR"] = [f"{i},99" for i in range(len(frame))]  # a decimal comma each line
    assert detect_separator(_write(tmp_path / "euro.csv", frame, ";")) == ";"
    frame = _frame().rename(columns={"ts": "Time"})
    frame["tags (a,b,c,d,e)"] = ["x" + "," * (i % 3) for i in range(len(frame))]  # free text
    assert detect_separator(_write(tmp_path / "tags.tsv", frame, "\t")) == "\t"
    assert _prepare(tmp_path / "tags.tsv", tmp_path / "out") == 0
    _check_hand_outputs(tmp_path / "out")


@pytest.mark.parametrize("time_format,options", [
    ("s", ["--time-col", "ts"]),
    ("ms", ["--time-col", "ts"]),
    ("ms", ["--time-col", "ts", "--time-unit", "ms"]),
    ("iso", ["--time-col", "ts"]),
    ("date+s", ["--date-col", "day", "--offset-col", "offset"]),
    ("date+ms", ["--date-col", "day", "--offset-col", "offset", "--offset-unit", "ms"]),
])
def test_each_time_format_gives_the_same_split(tmp_path, time_format, options):
    path = _write(tmp_path / "log.csv", _frame(time_format), ",")
    assert _prepare(path, tmp_path / "out", *options) == 0
    _check_hand_outputs(tmp_path / "out")


def test_the_report_counts_what_each_step_removed(tmp_path, capsys):
    path = _write(tmp_path / "log.tsv", _frame().rename(columns={"ts": "Time"}), "\t")
    assert _prepare(path, tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert report["input"]["events"] == 19
    steps = [None if "events_removed" not in s else
             (s["events_removed"], s["sessions_removed"], s["items_removed"])
             for s in report["steps"]]
    assert steps == HAND_STEPS
    split = report["steps"][7]
    assert (split["train_events"], split["test_events"]) == (7, 7)
    assert (split["train_sessions"], split["test_sessions"]) == (3, 3)
    assert report["steps"][8]["step"] == "test: items unknown to training"
    assert report["outputs"]["train"] == {**report["outputs"]["train"], "events": 7,
                                          "sessions": 3, "items": 3}
    assert report["outputs"]["test"]["events"] == 4
    assert report["outputs"]["test"]["sessions"] == 2
    table = capsys.readouterr().out
    assert "train.tsv" in table and "test.tsv" in table
    assert table.splitlines()[1].split()[-3:] == ["19", "9", "7"]


def test_a_validation_split_comes_before_the_test_period(tmp_path):
    extra = [(10, "A", DAY), (10, "B", DAY + 10), (11, "B", DAY + 20), (11, "C", DAY + 30)]
    frame = pd.DataFrame(EVENTS + extra, columns=["session", "item", "t"])
    frame["Time"] = T0 + frame.pop("t")
    path = _write(tmp_path / "log.tsv", frame, "\t")
    assert _prepare(path, tmp_path / "out", "--test-days", "0.5", "--valid-days", "0.5") == 0
    valid = read_events(tmp_path / "out" / "valid.tsv")
    assert sorted(valid["SessionId"].unique()) == [10, 11]
    train = read_events(tmp_path / "out" / "train.tsv")
    assert sorted(train["SessionId"].unique()) == [1, 2, 3]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_filters_that_leave_nothing_are_one_clear_line(tmp_path, capsys):
    path = _write(tmp_path / "log.tsv", _frame().rename(columns={"ts": "Time"}), "\t")
    assert _prepare(path, tmp_path / "out", "--min-item-support", "100") == 2
    line = _error(capsys)
    assert "filters" in line and "leave no event" in line and "--min-item-support" in line
    assert not (tmp_path / "out").exists()


def test_a_test_period_holding_everything_is_an_error(tmp_path, capsys):
    path = _write(tmp_path / "log.tsv", _frame().rename(columns={"ts": "Time"}), "\t")
    assert _prepare(path, tmp_path / "out", "--test-days", "30") == 2
    assert "test split" in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_missing_column_names_the_columns_and_separator(tmp_path, capsys):
    path = _write(tmp_path / "log.csv", _frame(), ";")
    assert _prepare(path, tmp_path / "out") == 2  # Time is called ts here
    line = _error(capsys)
    assert "'Time'" in line and "'ts'" in line and "semicolon" in line


def test_a_directory_with_other_content_is_refused(tmp_path, capsys):
    path = _write(tmp_path / "log.tsv", _frame().rename(columns={"ts": "Time"}), "\t")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert _prepare(path, tmp_path / "out") == 2
    assert "other content" in _error(capsys)
    assert _prepare(path, tmp_path / "out2") == 0
    assert _prepare(path, tmp_path / "out2") == 0  # an earlier output is replaced


def _hand_log(tmp_path, name: str = "log.tsv") -> str:
    return _write(tmp_path / name, _frame().rename(columns={"ts": "Time"}), "\t")


@pytest.mark.parametrize("kind", ["parquet", "gzip", "text"])
def test_the_format_is_read_from_the_content_not_the_name(tmp_path, kind):
    frame = _frame().rename(columns={"ts": "Time"})
    path = tmp_path / "log.parquet.snappy"  # the trivago sample's name, whatever the content
    if kind == "parquet":
        frame.to_parquet(path, index=False)
    elif kind == "gzip":
        frame.to_csv(path, sep="\t", index=False, compression="gzip")
    else:
        frame.to_csv(path, sep="\t", index=False)
    assert _prepare(path, tmp_path / "out") == 0
    _check_hand_outputs(tmp_path / "out")


def test_a_binary_file_that_is_not_a_log_names_the_file_and_the_formats(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_bytes(b"SessionId,ItemId,Time\n1,\xa0\xff,3\n")
    assert _prepare(path, tmp_path / "out") == 2
    line = _error(capsys)
    assert "log.csv" in line and "UTF-8" in line and "Parquet" in line and "gzip" in line


def _with_other_actions(frame: pd.DataFrame) -> pd.DataFrame:
    """The hand log plus non-item rows (a sort, a filter) in its sessions, as in a real log."""
    frame = frame.assign(action="clickout item")
    noise = pd.DataFrame({"session": [1, 2, 7, 9], "item": ["Sort by Price", "", "Focus", "x"],
                          "action": ["change of sort order", "filter selection",
                                     "filter selection", "change of sort order"]})
    noise["Time"] = [T0 + 5, T0 + 105, T0 + 2 * DAY + 5, T0 + 2 * DAY + 205]
    return pd.concat([frame, noise], ignore_index=True)


@pytest.mark.parametrize("option", [
    ["--keep", "action=clickout item,interaction item image"],
    ["--drop", "action=change of sort order,filter selection"],
])
def test_row_filters_keep_the_item_events_and_are_reported(tmp_path, capsys, option):
    frame = _with_other_actions(_frame().rename(columns={"ts": "Time"}))
    path = _write(tmp_path / "log.csv", frame, ",")
    assert _prepare(path, tmp_path / "out", *option) == 0
    _check_hand_outputs(tmp_path / "out")  # an empty item id, "Sort by Price": gone
    report = json.loads((tmp_path / "out" / "prepare.json").read_text())
    kind, values = option[0][2:], option[1].split("=")[1].split(",")
    assert report["read"] == {"rows": 23, "row_filters": [
        {"column": "action", kind: values, "rows_removed": 4}]}
    assert report["input"]["events"] == 19
    table = capsys.readouterr().out
    assert "rows read" in table and "row filter action" in table and "-4" in table


def test_a_row_filter_on_a_missing_column_names_the_columns(tmp_path, capsys):
    assert _prepare(_hand_log(tmp_path), tmp_path / "out", "--keep", "kind=click") == 2
    line = _error(capsys)
    assert "'kind'" in line and "missing column" in line
    assert _prepare(_hand_log(tmp_path), tmp_path / "out", "--drop", "kind") == 2
    line = _error(capsys)
    assert "--drop 'kind'" in line and "COLUMN=VALUE" in line


def test_collapse_repeats_keeps_one_event_per_run_of_an_item(tmp_path, capsys):
    rows = [(1, "A", 0), (1, "A", 5), (1, "B", 6), (1, "B", 6), (1, "A", 9),  # A A B B A
            (2, "B", 20), (2, "C", 21), (2, "C", 22),
            (3, "C", 30), (3, "C", 31),                                    # one event left
            (4, "A", DAY), (4, "B", DAY + 1), (4, "B", DAY + 2)]
    frame = pd.DataFrame(rows, columns=["session", "item", "t"])
    frame["Time"] = T0 + frame.pop("t")
    path = _write(tmp_path / "log.tsv", frame.iloc[::-1], "\t")  # any input order
    assert _prepare(path, tmp_path / "out", "--collapse-repeats", "--min-item-support", "1",
                    "--test-hours", "12") == 0
    train = read_events(tmp_path / "out" / "train.tsv")
    assert list(train["ItemId"]) == ["A", "B", "A", "B", "C"]
    assert list(train["Time"]) == [T0 + t for t in (0, 6, 9, 20, 21)]
    test = read_events(tmp_path / "out" / "test.tsv")
    assert list(test["ItemId"]) == ["A", "B"]
    report = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert report["collapse_repeats"] is True
    first = report["steps"][0]
    assert first["step"] == "repeats of an item collapsed"
    assert (first["events_removed"], first["sessions_removed"], first["items_removed"]) == \
        (5, 0, 0)
    assert "repeats of an item collapsed" in capsys.readouterr().out


@pytest.mark.parametrize("options", [
    ["--test-hours", "24"],
    ["--test-start", "2023-11-16T00:00:00"],  # T0 + 2 days: sessions 7-9 end after it
    ["--test-start", "2023-11-16T01:00:00+01:00"],
    ["--test-start", str(T0 + 2 * DAY)],
])
def test_the_test_period_in_hours_or_from_an_absolute_time(tmp_path, capsys, options):
    assert _prepare(_hand_log(tmp_path), tmp_path / "out", *options) == 0
    _check_hand_outputs(tmp_path / "out")
    report = json.loads((tmp_path / "out" / "prepare.json").read_text())
    split = report["steps"][7]
    cut = T0 + 2 * DAY + 220 - DAY if options[0] == "--test-hours" else T0 + 2 * DAY
    assert split["cut_time"] == cut
    assert split["cut_date"] == pd.Timestamp(cut, unit="s", tz="UTC").isoformat()
    if options[0] == "--test-start":
        assert report["test_start"] == "2023-11-16T00:00:00+00:00"
    table = capsys.readouterr().out
    assert f"test split at {split['cut_date']}" in table and str(int(cut)) not in table


@pytest.mark.parametrize("valid", [["--valid-hours", "6"],
                                   ["--valid-start", "2023-11-14T19:00:00"]])
def test_a_two_day_log_has_a_validation_split_in_hours(tmp_path, caplog, valid):
    rows = [(s, item, h * 3600 + k * 60) for s, h in ((1, 1), (2, 3), (3, 5), (4, 20),
                                                      (5, 22), (6, 40), (7, 46))
            for k, item in enumerate("ABC")]
    frame = pd.DataFrame(rows, columns=["session", "item", "t"])
    frame["Time"] = T0 + frame.pop("t")
    path = _write(tmp_path / "log.tsv", frame, "\t")
    caplog.set_level("INFO")
    assert _prepare(path, tmp_path / "out", "--test-hours", "12", *valid) == 0
    sessions = {name: sorted(read_events(tmp_path / "out" / f"{name}.tsv")["SessionId"].unique())
                for name in ("train", "valid", "test")}
    assert sessions == {"train": [1, 2, 3], "valid": [4, 5], "test": [6, 7]}
    assert "split at 2023-11-1" in caplog.text and f"split at {T0}" not in caplog.text


def test_test_start_and_test_days_are_exclusive(tmp_path, capsys):
    assert _prepare(_hand_log(tmp_path), tmp_path / "out", "--test-days", "1",
                    "--test-start", "2023-11-16") == 2
    assert "not allowed with" in capsys.readouterr().err


def test_time_unit_auto_is_decided_by_the_bulk_of_the_values(tmp_path):
    frame = _frame("ms").rename(columns={"ts": "Time"})
    zero = pd.DataFrame({"session": [0], "item": ["A"], "Time": [0]})  # one stray 0 first
    path = _write(tmp_path / "log.csv", pd.concat([zero, frame], ignore_index=True), ",")
    assert _prepare(path, tmp_path / "out") == 0
    _check_hand_outputs(tmp_path / "out")


@pytest.mark.parametrize("unit,scale", [("min", 60), ("h", 3600)])
def test_offsets_in_minutes_and_hours(tmp_path, unit, scale):
    frame = _frame("date+s")
    frame["offset"] = frame["offset"] / scale
    path = _write(tmp_path / "log.csv", frame, ",")
    assert _prepare(path, tmp_path / "out", "--date-col", "day", "--offset-col", "offset",
                    "--offset-unit", unit) == 0
    train = read_events(tmp_path / "out" / "train.tsv")
    assert list(train["ItemId"]) == ["A", "B", "A", "B", "C", "B", "C"]
    assert list(train["Time"]) == pytest.approx([T0 + t for s, _, t in EVENTS if s < 4],
                                                abs=1e-6)
