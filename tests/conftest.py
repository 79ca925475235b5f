"""Shared fixtures: tiny hand-made and synthetic logs, and the optional real data directory."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tf_gru4rec.data.session_log import SessionLog  # noqa: E402
from tf_gru4rec.data.synthetic import SyntheticConfig, generate_sessions  # noqa: E402
from tf_gru4rec.data.vocabulary import ItemVocabulary  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir() -> str:
    """The real RSC15 sample: $TF_GRU4REC_DATA, else ../shared/data/rsc15_100k."""
    return os.environ.get("TF_GRU4REC_DATA",
                          os.path.join(REPO, "..", "shared", "data", "rsc15_100k"))


@pytest.fixture(scope="session")
def rsc15_paths():
    base = data_dir()
    train = os.path.join(base, "yoochoose-clicks-100k_train_full.txt.gz")
    test = os.path.join(base, "yoochoose-clicks-100k_test.txt.gz")
    if not (os.path.exists(train) and os.path.exists(test)):
        pytest.skip(f"real data not found in {base} (set TF_GRU4REC_DATA)")
    return train, test


def trivago_file() -> str:
    """The trivago RecSys 2019 sample, as published: $TF_GRU4REC_TRIVAGO, else
    ../shared/data/trivago_100k/trivago_val_100k.parquet.snappy."""
    return os.environ.get("TF_GRU4REC_TRIVAGO", os.path.join(
        REPO, "..", "shared", "data", "trivago_100k", "trivago_val_100k.parquet.snappy"))


@pytest.fixture(scope="session")
def trivago_path():
    path = trivago_file()
    if not os.path.exists(path):
        pytest.skip(f"the trivago sample not found at {path} (set TF_GRU4REC_TRIVAGO)")
    return path


def frame(rows) -> pd.DataFrame:
    """Event frame from (session, item, time) rows."""
    return pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).astype(
        {"Time": "float64"})


@pytest.fixture
def tiny_events() -> pd.DataFrame:
    """Four sessions; items are raw ids 10, 20, 30, 40, 50."""
    return frame([
        (1, 10, 0), (1, 20, 1), (1, 30, 2),           # session 1: 3 events
        (2, 20, 5), (2, 40, 6),                       # session 2: 2 events
        (3, 50, 3), (3, 10, 4), (3, 20, 7), (3, 30, 8),  # session 3: 4 events
        (4, 30, 9), (4, 40, 10),                      # session 4: 2 events
    ])


@pytest.fixture(scope="session")
def synthetic_log():
    events = generate_sessions(SyntheticConfig(n_items=300, n_sessions=1500, n_intents=15,
                                               seed=3))
    vocab = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    return SessionLog.from_events(events, vocab), vocab, events


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
