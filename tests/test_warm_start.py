"""Warm-started retraining with new items appended to the vocabulary."""

import numpy as np
import pytest

from tf_gru4rec.cli import main
from tf_gru4rec.config import TrainConfig
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.training import build_model, load_model_dir
from tf_gru4rec.training.warm_start import grow_model

CONFIG = TrainConfig(layers=[8], batch_size=4, n_sample=5, n_epochs=1, seed=2)


@pytest.mark.parametrize("mode", [{}, {"constrained_embedding": False},
                                  {"constrained_embedding": False, "embedding": 6},
                                  {"gru_cell": "reset-before", "layers": [8, 5]}])
def test_grown_model_scores_old_items_as_before(mode, rng):
    old_vocab = ItemVocabulary([10, 20, 30, 40])
    model = build_model(CONFIG.replace(**mode), 4, np.array([3, 1, 4, 1]))
    model.item_scores.item_bias.assign(rng.normal(size=4).astype("float32"))
    new_vocab = old_vocab.extend([50, 20, 60])
    grown = grow_model(model, old_vocab, new_vocab)
    assert grown.n_items == 6 and grown.gru.cell == model.gru.cell
    ids = np.array([0, 3, 1], "int32")
    np.testing.assert_allclose(grown(ids).numpy()[:, :4], model(ids).numpy(), atol=1e-6)
    np.testing.assert_array_equal(grown.item_scores.item_bias.numpy()[4:], 0.0)
    with pytest.raises(ValueError, match="extend"):
        grow_model(model, old_vocab, ItemVocabulary([20, 10, 30, 40, 50]))


@pytest.mark.parametrize("mode", [{}, {"constrained_embedding": False, "embedding": 6}])
def test_new_items_rows_are_freshly_initialised_not_zeros(mode):
    """Every item table grows by rows drawn as a new model draws them (same spread), not by
    zeros (a zero output row scores 0 for every session; zeros passed every other test)."""
    config = CONFIG.replace(**mode)
    old_vocab = ItemVocabulary(np.arange(50))
    new_vocab = old_vocab.extend(np.arange(50, 250))
    grown = grow_model(build_model(config, 50), old_vocab, new_vocab)
    def inner(path):  # the path below the model's own (unique) name
        return path.partition("/")[2]

    fresh = {inner(w.path): w.numpy() for w in build_model(config.replace(seed=9), 250).weights}
    tables = [w for w in grown.weights if len(w.shape) == 2 and w.shape[0] == 250]
    assert tables  # the output table at least (and the input embedding when it has one)
    for weight in tables:
        new_rows, reference = weight.numpy()[50:], fresh[inner(weight.path)]
        assert np.std(reference) > 0, weight.path
        assert 0.5 < np.std(new_rows) / np.std(reference) < 2.0, weight.path
        assert (np.abs(new_rows).sum(axis=1) > 0).all(), weight.path


def test_cli_warm_start_appends_new_items(tmp_path):
    first = tmp_path / "first.tsv"
    second = tmp_path / "second.tsv"
    first.write_text("SessionId\tItemId\tTime\n" + "".join(
        f"{s}\t{i}\t{s * 10 + k}\n" for s in range(40) for k, i in enumerate((1, 2, 3))))
    second.write_text("SessionId\tItemId\tTime\n" + "".join(
        f"{s}\t{i}\t{s * 10 + k}\n" for s in range(40) for k, i in enumerate((3, 4, 5))))
    tiny = ["--set", "layers=8", "--set", "batch_size=4", "--set", "n_sample=3", "--set",
            "n_epochs=1", "--verbose", "0"]
    assert main(["-v", "WARNING", "train", "--train", str(first), "--out",
                 str(tmp_path / "m1"), *tiny]) == 0
    assert main(["-v", "WARNING", "train", "--train", str(second), "--out",
                 str(tmp_path / "m2"), "--warm-start", str(tmp_path / "m1"), *tiny]) == 0
    grown = load_model_dir(str(tmp_path / "m2"))
    np.testing.assert_array_equal(grown.vocabulary.raw_ids, [1, 2, 3, 4, 5])
    assert grown.model.n_items == 5


def test_cli_warm_start_keeps_the_old_items_scores(tmp_path):
    """The warm-started run starts from the old weights: with a negligible learning rate the
    old items' scores after `train --warm-start` are the first model's (a fresh model's are
    far off), and the new items get columns of their own."""
    first, second = tmp_path / "first.tsv", tmp_path / "second.tsv"
    first.write_text("SessionId\tItemId\tTime\n" + "".join(
        f"{s}\t{i}\t{s * 10 + k}\n" for s in range(40) for k, i in enumerate((1, 2, 3, s % 4))))
    second.write_text("SessionId\tItemId\tTime\n" + "".join(
        f"{s}\t{i}\t{s * 10 + k}\n" for s in range(40) for k, i in enumerate((3, 4, 2, 5))))
    tiny = ["--set", "layers=8", "--set", "batch_size=4", "--set", "n_sample=3", "--set",
            "n_epochs=1", "--set", "jit_compile=false", "--verbose", "0"]
    assert main(["-v", "WARNING", "train", "--train", str(first), "--out",
                 str(tmp_path / "m1"), *tiny]) == 0
    assert main(["-v", "WARNING", "train", "--train", str(second), "--out",
                 str(tmp_path / "m2"), "--warm-start", str(tmp_path / "m1"), *tiny,
                 "--set", "learning_rate=1e-7"]) == 0
    old, grown = (load_model_dir(str(tmp_path / name)) for name in ("m1", "m2"))
    n_old = len(old.vocabulary)
    np.testing.assert_array_equal(grown.vocabulary.raw_ids[:n_old], old.vocabulary.raw_ids)
    ids = np.arange(n_old, dtype="int32")
    before = old.model(ids).numpy()
    after = grown.model(ids).numpy()
    np.testing.assert_allclose(after[:, :n_old], before, atol=1e-3)
    fresh = build_model(old.config, n_old)(ids).numpy()
    assert np.abs(fresh - before).max() > 0.05  # the check above can tell the two apart
    assert after.shape == (n_old, len(grown.vocabulary)) and len(grown.vocabulary) > n_old
