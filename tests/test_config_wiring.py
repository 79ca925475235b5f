"""Each `TrainConfig` field reaches what it should through `train()` and `build_model`: the
sampler (sample_alpha, n_sample), the model (embedding mode, dropout of each kind, logQ,
layers, batch size, seed) and the optimizer (learning rate, momentum). The loss settings
(loss, bpreg, final_act, elu_param, logq) are checked value by value in test_sampled_loss.py."""

import numpy as np
import pytest

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.config_checks import check_config
from tf_gru4rec.data import distributed_input, input_pipeline
from tf_gru4rec.data.sampling import NegativeSampler, sampling_probabilities
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.synthetic import SyntheticConfig, generate_sessions
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.training import build_model, train

TINY = TrainConfig(layers=[8], batch_size=4, n_sample=6, n_epochs=1, steps_per_execution=10,
                   jit_compile=False, seed=5)


@pytest.fixture(scope="module")
def tiny_log():
    events = generate_sessions(SyntheticConfig(n_items=40, n_sessions=60, n_intents=4, seed=2))
    vocabulary = ItemVocabulary.from_events(events["ItemId"].to_numpy())
    return SessionLog.from_events(events, vocabulary)


@pytest.fixture
def samplers(monkeypatch):
    """Every NegativeSampler the input pipelines create (`fit`'s and the training loop's)."""
    created = []

    class Recording(NegativeSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(input_pipeline, "NegativeSampler", Recording)
    monkeypatch.setattr(distributed_input, "NegativeSampler", Recording)
    return created


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_train_passes_sample_alpha_to_the_sampler_and_the_model(tiny_log, samplers, alpha):
    result = train(TINY.replace(sample_alpha=alpha, logq=1.0), tiny_log, verbose=0)
    assert len(samplers) == 1
    np.testing.assert_allclose(samplers[0].probabilities,
                               sampling_probabilities(tiny_log.item_support(), alpha))
    assert samplers[0].alpha == alpha and result.model.sample_alpha == alpha  # logQ's exponent


@pytest.mark.parametrize("n_sample", [0, 3])
def test_train_passes_n_sample_to_the_sampler(tiny_log, samplers, n_sample):
    train(TINY.replace(n_sample=n_sample), tiny_log, verbose=0)
    assert [s.n_sample for s in samplers] == ([n_sample] if n_sample else [])


def test_train_gives_the_model_the_logq_weight_and_the_item_support(tiny_log):
    model = train(TINY.replace(logq=0.7), tiny_log, verbose=0).model
    assert model.logq == 0.7
    np.testing.assert_allclose(model.log_support.numpy(),
                               np.log(np.maximum(tiny_log.item_support(), 1)), rtol=1e-6)


def test_train_builds_the_configured_model(tiny_log):
    config = TINY.replace(layers=[6, 5], batch_size=3, loss="bpr-max", bpreg=0.3,
                          elu_param=0.2, final_act="tanh", dropout_p_embed=0.1,
                          dropout_p_hidden=0.2, constrained_embedding=False, embedding=7,
                          gru_cell="reset-before")
    model = train(config, tiny_log, verbose=0).model
    got = model.get_config()
    assert model.gru.cell == "reset-before" and not model.gru.reset_after(1)
    for name in ("layers", "batch_size", "loss", "bpreg", "elu_param", "final_act", "gru_cell",
                 "dropout_p_embed", "dropout_p_hidden", "constrained_embedding", "embedding",
                 "seed", "logq", "sample_alpha"):
        assert got[name] == getattr(config, name), name
    assert [v.shape for v in model.train_states] == [(3, 6), (3, 5)]


def zero_share(x):
    return float((np.asarray(x) == 0).mean())


@pytest.mark.parametrize("mode", [{"constrained_embedding": True},
                                  {"constrained_embedding": False, "embedding": 48}])
def test_dropout_p_embed_drops_the_input_and_dropout_p_hidden_each_layer(mode):
    config = TINY.replace(layers=[64, 64], dropout_p_embed=0.2, dropout_p_hidden=0.5, **mode)
    model = build_model(config, 300)
    ids = np.arange(256, dtype="int32")
    assert abs(zero_share(model.embed(ids, training=True)) - 0.2) < 0.03
    assert zero_share(model.embed(ids, training=False)) == 0.0
    out, states = model.step(ids, model.gru.initial_states(256), training=True)
    assert abs(zero_share(states[0]) - 0.5) < 0.03
    assert abs(zero_share(out) - 0.5) < 0.03


def test_one_hot_mode_drops_the_first_layer_with_dropout_p_embed():
    """As in the original PyTorch port, the first GRU layer is the embedding in one-hot mode."""
    config = TINY.replace(layers=[64, 64], dropout_p_embed=0.2, dropout_p_hidden=0.5,
                          constrained_embedding=False, embedding=0)
    model = build_model(config, 300)
    ids = np.arange(256, dtype="int32")
    out, states = model.step(ids, model.gru.initial_states(256), training=True)
    assert abs(zero_share(states[0]) - 0.2) < 0.03
    assert abs(zero_share(out) - 0.5) < 0.03
    out, _ = model.step(ids, model.gru.initial_states(256), training=False)
    assert zero_share(out) == 0.0


def test_one_hot_single_layer_warns_that_dropout_p_hidden_has_no_layer(caplog):
    config = TINY.replace(dropout_p_hidden=0.5, constrained_embedding=False, embedding=0)
    build_model(config, 20)
    assert "dropout_p_hidden=0.5 has no layer" in caplog.text


@pytest.mark.parametrize(("mode", "name"), [
    ({"constrained_embedding": True}, "constrained"),
    ({"constrained_embedding": False, "embedding": 5}, "separate"),
    ({"constrained_embedding": False, "embedding": 0}, "one-hot")])
def test_embedding_mode_decides_the_input_of_the_first_layer(mode, name):
    model = build_model(TINY.replace(**mode), 20)
    assert model.embedding_mode == name
    ids = np.array([3, 0, 19], "int32")
    if name == "constrained":
        np.testing.assert_array_equal(model.embed(ids),
                                      model.item_scores.item_weights.numpy()[ids])
        assert model.gru.input_kernels[0].shape == (8, 24)
    elif name == "separate":
        np.testing.assert_array_equal(model.embed(ids),
                                      model.input_embedding.embeddings.numpy()[ids])
        assert model.gru.input_kernels[0].shape == (5, 24)
    else:
        assert model.input_embedding is None and model.gru.input_kernels[0].shape == (20, 24)


@pytest.mark.parametrize("optimizer", ["adagradm", "sgd", "rmsprop"])
def test_learning_rate_and_momentum_reach_the_optimizer(optimizer):
    config = TINY.replace(optimizer=optimizer, learning_rate=0.03, momentum=0.4)
    model = build_model(config, 20)
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(0.03)
    assert model.optimizer.momentum == pytest.approx(0.4)


def test_an_optimizer_without_momentum_refuses_one_and_takes_the_learning_rate():
    config = TINY.replace(optimizer="adam", learning_rate=0.03, momentum=0.4)
    with pytest.raises(ValueError, match="'momentum' is not used by optimizer 'adam'"):
        check_config(config)
    with pytest.raises(ValueError, match="momentum=0"):
        build_model(config, 20)
    model = build_model(config.replace(momentum=0.0), 20)
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(0.03)


def test_momentum_changes_the_second_update(tiny_log):
    """Two steps of the same data: with momentum the second step also moves by the first."""
    weights = []
    for momentum in (0.0, 0.9):
        config = TINY.replace(momentum=momentum, n_sample=0)
        model = train(config, tiny_log, verbose=0).model
        weights.append(model.gru.recurrent_kernels[0].numpy())
    assert not np.allclose(*weights, atol=1e-4)


@pytest.mark.parametrize("cell", ["reset-after", "reset-before"])
def test_gru_cell_reaches_every_layer_and_the_default_is_the_port_form(cell):
    assert TrainConfig().gru_cell == "reset-after"
    for mode in ({"constrained_embedding": True},
                 {"constrained_embedding": False, "embedding": 5},
                 {"constrained_embedding": False, "embedding": 0}):
        model = build_model(TINY.replace(layers=[6, 5], gru_cell=cell, **mode), 20)
        one_hot = model.embedding_mode == "one-hot"
        assert model.gru.cell == cell
        assert model.gru.reset_after(0) == (cell == "reset-after" and not one_hot)
        assert model.gru.reset_after(1) == (cell == "reset-after")


def test_the_seed_decides_the_initial_weights():
    first, again, other = (build_model(TINY.replace(seed=s), 20) for s in (1, 1, 2))
    for a, b, c in zip(first.weights, again.weights, other.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        if len(a.shape) == 2 and a.trainable:
            assert not np.allclose(a.numpy(), c.numpy()), a.path
