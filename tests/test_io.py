"""Reading click logs: formats, column names, validation errors."""

import gzip

import numpy as np
import pandas as pd
import pytest

from tf_gru4rec.data.io import DataError, read_events, write_events


def test_reads_gru4rec_tsv_convention(tmp_path, tiny_events):
    path = tmp_path / "clicks.tsv"
    write_events(tiny_events, path)
    events = read_events(path)
    assert list(events.columns) == ["SessionId", "ItemId", "Time"]
    assert events["ItemId"].dtype == np.int64
    np.testing.assert_array_equal(events["ItemId"], tiny_events["ItemId"])
    np.testing.assert_allclose(events["Time"], tiny_events["Time"])


def test_reads_gzipped_csv_with_custom_columns_and_string_ids(tmp_path):
    path = tmp_path / "clicks.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("visit,product,ts\nA,sku-1,2024-01-01T00:00:00Z\nA,sku-2,2024-01-01T00:00:10Z\n")
    events = read_events(path, session_col="visit", item_col="product", time_col="ts")
    assert events["ItemId"].tolist() == ["sku-1", "sku-2"]
    assert events["Time"].iloc[1] - events["Time"].iloc[0] == pytest.approx(10.0)
    assert events["Time"].iloc[0] == pytest.approx(1704067200.0)


def test_reads_parquet(tmp_path, tiny_events):
    path = tmp_path / "clicks.parquet"
    write_events(tiny_events, path)
    pd.testing.assert_frame_equal(read_events(path), read_events(path))
    assert len(read_events(path)) == len(tiny_events)


def test_reads_raw_yoochoose(tmp_path):
    path = tmp_path / "yoochoose-clicks.dat"
    path.write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n"
                    "1,2014-04-07T10:54:09.868Z,214536500,0\n")
    events = read_events(path)
    assert events["ItemId"].tolist() == [214536502, 214536500]
    assert events["Time"].iloc[1] - events["Time"].iloc[0] == pytest.approx(180.591, abs=1e-3)


def test_missing_column_names_file_and_columns(tmp_path):
    path = tmp_path / "clicks.tsv"
    path.write_text("SessionId\tItem\tTime\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"clicks.tsv.*missing column.*ItemId.*'Item'"):
        read_events(path)


def test_unparsable_time_names_row_and_value(tmp_path):
    path = tmp_path / "clicks.tsv"
    path.write_text("SessionId\tItemId\tTime\n1\t2\t3.0\n1\t3\tyesterday\n")
    with pytest.raises(DataError, match=r"row 2, column 'Time'.*'yesterday'"):
        read_events(path)


def test_empty_id_names_row(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("SessionId,ItemId,Time\n1,5,1\n,6,2\n")
    with pytest.raises(DataError, match=r"row 2, column 'SessionId': empty id"):
        read_events(path)


def test_empty_file_and_missing_file(tmp_path):
    path = tmp_path / "clicks.tsv"
    path.write_text("SessionId\tItemId\tTime\n")
    with pytest.raises(DataError, match="no events"):
        read_events(path)
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_events(tmp_path / "nope.tsv")


def test_the_format_is_read_from_the_content_not_the_name(tmp_path, tiny_events):
    """A Parquet file named .parquet.snappy (the trivago sample) and gzip text without .gz."""
    parquet = tmp_path / "log.parquet.snappy"
    tiny_events.to_parquet(parquet, index=False)
    pd.testing.assert_frame_equal(read_events(parquet), tiny_events)
    gzipped = tmp_path / "log.tsv"
    with gzip.open(gzipped, "wt") as f:
        tiny_events.to_csv(f, sep="\t", index=False)
    pd.testing.assert_frame_equal(read_events(gzipped), tiny_events)


def test_binary_content_read_as_text_names_the_file_and_the_formats(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_bytes(b"SessionId\tItemId\tTime\n1\t\xa0\xff\t3\n")
    with pytest.raises(DataError, match=r"log\.tsv: not UTF-8 text .*gzip.*Parquet"):
        read_events(path)
