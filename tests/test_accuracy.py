"""Paper-level accuracy on the real RSC15 sample (slow: run with `pytest -m slow`).

The bars are the core issue's: the tuned cross-entropy setting and the 2016 paper's TOP1
setting, 10 epochs, train_full -> test, all items ranked, conservative ties. The seeds' spread
is in BENCHMARKS.md (benchmarks/accuracy.py runs three seeds of each).
"""

import pytest

from tf_gru4rec.config import load_preset
from tf_gru4rec.data.io import read_events
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.evaluation import evaluate
from tf_gru4rec.training import train

BARS = {"rsc15-xe": (0.665, 0.350), "paper2016-top1": (0.49, 0.235)}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(BARS))
def test_ten_epochs_reach_the_accuracy_bar(rsc15_paths, preset):
    train_path, test_path = rsc15_paths
    config = load_preset(preset).replace(seed=0)
    events = read_events(train_path)
    vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    log = SessionLog.from_events(events, vocabulary)
    result = train(config, log, verbose=0)
    metrics = evaluate(result.model, SessionLog.from_events(read_events(test_path), vocabulary),
                       config.cutoffs, config.tie_mode)
    recall_bar, mrr_bar = BARS[preset]
    assert metrics["recall@20"] >= recall_bar, metrics
    assert metrics["mrr@20"] >= mrr_bar, metrics
