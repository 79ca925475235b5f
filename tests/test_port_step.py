"""Two training steps of a tiny model against a NumPy reference of the official PyTorch port's
step: constrained embedding, `torch.nn.GRUCell` (reset after the recurrent product, with its
own candidate bias), sampled scores with logQ, `-log(softmax_target + 1e-24)` summed and
divided by the batch size, and IndexedAdagradM (dense for the GRU, row-sparse for the item
tables). Fails when the cell form, the loss form or the update silently changes.

The reference's gradients are central finite differences of its own float64 forward pass, so
the reference holds no hand-derived backward pass that could share a mistake with ours.
"""

import numpy as np
import pytest

from tf_gru4rec.config import TrainConfig
from tf_gru4rec.nn.optimizers import AdagradM
from tf_gru4rec.training import build_model

N_ITEMS, H, B, LR, MOMENTUM, EPS = 9, 4, 3, 0.2, 0.3, 1e-6
SUPPORT = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5], "float32")
LOGQ, ALPHA = 1.0, 0.5
# Two steps: slot inputs, targets, extra negatives; slot 1 starts a new session at step 2.
STEPS = [
    dict(inputs=[0, 2, 5], targets=[1, 3, 4], negatives=[6, 1, 8], reset=[1, 1, 1]),
    dict(inputs=[1, 7, 4], targets=[2, 8, 0], negatives=[4, 5, 1], reset=[0, 1, 0]),
]
FAR_TARGET = 1  # its bias makes its softmax share ~1e-35: the port's loss stops at 55.26


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def port_loss(w, step, states):
    """The port's loss of one step (float64) and the new states, from weights `w`."""
    x, y = np.array(step["inputs"]), np.concatenate([step["targets"], step["negatives"]])
    e = w["Wy"][x]  # constrained: the input embedding is the output table
    gi = e @ w["W_x"] + w["b"]  # (B, 3H) [r | z | n]
    gh = states @ w["U"] + w["b_h"]
    r = sigmoid(gi[:, :H] + gh[:, :H])
    z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    hidden = (1 - z) * n + z * states  # torch.nn.GRUCell
    o = hidden @ w["Wy"][y].T + w["By"][y]
    o = o - LOGQ * np.log(np.concatenate([SUPPORT[step["targets"]],
                                          SUPPORT[step["negatives"]] ** ALPHA]))
    s = np.exp(o - o.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    per_event = -np.log(np.diag(s[:, :B]) + 1e-24)
    return per_event.sum() / B, per_event, hidden


def finite_difference_gradients(w, step, states, delta=1e-6):
    grads = {}
    for name, value in w.items():
        g = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + delta
            up = port_loss(w, step, states)[0]
            value[index] = saved - delta
            down = port_loss(w, step, states)[0]
            value[index] = saved
            g[index] = (up - down) / (2 * delta)
        grads[name] = g
    return grads


def port_adagradm(w, grads, acc, mom, step):
    """IndexedAdagradM: dense update for the GRU weights; for the item tables (sparse
    embeddings) only the rows the step looked up: Wy at inputs and columns, By at columns."""
    columns = np.concatenate([step["targets"], step["negatives"]])
    rows = {"Wy": np.unique(np.concatenate([step["inputs"], columns])),
            "By": np.unique(columns)}
    for name, g in grads.items():
        touched = rows.get(name, slice(None))
        acc[name][touched] += g[touched] ** 2
        mom[name][touched] = (MOMENTUM * mom[name][touched]
                              - LR * g[touched] / np.sqrt(acc[name][touched] + EPS))
        w[name][touched] += mom[name][touched]


def tiny_model():
    config = TrainConfig(layers=[H], batch_size=B, n_sample=3, learning_rate=LR,
                         momentum=MOMENTUM, logq=LOGQ, sample_alpha=ALPHA, dropout_p_hidden=0.0,
                         jit_compile=False, seed=5)
    model = build_model(config, N_ITEMS, item_support=SUPPORT)
    assert isinstance(model.optimizer, AdagradM) and model.gru.cell == "reset-after"
    rng = np.random.default_rng(0)
    layer = model.gru.layer_weights(0)
    layer["b"].assign(rng.normal(size=3 * H) * 0.5)
    layer["b_h"].assign(rng.normal(size=3 * H) * 0.5)
    bias = rng.normal(size=N_ITEMS) * 0.5
    bias[FAR_TARGET] = -80.0
    model.item_scores.item_bias.assign(bias)
    return model


def model_weights(model):
    layer = model.gru.layer_weights(0)
    return {"Wy": model.item_scores.item_weights.numpy(), "By": model.item_scores.item_bias.numpy(),
            "W_x": layer["W_x"].numpy(), "b": layer["b"].numpy(),
            "U": layer["U"].numpy(), "b_h": layer["b_h"].numpy()}


def test_two_steps_equal_the_port_step():
    import tensorflow as tf

    model = tiny_model()
    w = {k: v.astype("float64") for k, v in model_weights(model).items()}
    acc = {k: np.zeros_like(v) for k, v in w.items()}
    mom = {k: np.zeros_like(v) for k, v in w.items()}
    states = np.zeros((B, H))
    for number, step in enumerate(STEPS):
        states = states * (1 - np.array(step["reset"], "float64"))[:, None]
        _, want_per_event, hidden = port_loss(w, step, states)
        grads = finite_difference_gradients(w, step, states)
        port_adagradm(w, grads, acc, mom, step)
        states = hidden

        data = {"inputs": tf.constant(step["inputs"], tf.int32),
                "targets": tf.constant(step["targets"], tf.int32),
                "negatives": tf.constant(step["negatives"], tf.int32),
                "reset": tf.constant(np.array(step["reset"], bool)),
                "valid": tf.ones(B, tf.bool)}
        model.loss_tracker.reset_state()
        model.train_step(data)
        got = model_weights(model)
        # The tracked loss is the mean per-event loss of the step.
        np.testing.assert_allclose(float(model.loss_tracker.result()), want_per_event.mean(),
                                   rtol=1e-5, err_msg=f"step {number + 1}: loss")
        if number == 0:  # the far target: the port's clamp, not the exact logsumexp (~80)
            assert 55.2 < want_per_event[0] < 55.27
        for name in w:
            np.testing.assert_allclose(got[name], w[name], atol=2e-5,
                                       err_msg=f"step {number + 1}: {name}")
        np.testing.assert_allclose(model.train_states[0].numpy(), states, atol=1e-5)


@pytest.mark.parametrize("cell", ["reset-before"])
def test_the_paper_form_is_not_the_port_step(cell):
    """The same weights in the paper's form give other states: the check above tells the two
    forms apart."""
    model = tiny_model()
    w = {k: v.astype("float64") for k, v in model_weights(model).items()}
    _, _, port_hidden = port_loss(w, STEPS[0], np.zeros((B, H)))
    config = model.get_config()
    config["gru_cell"] = cell
    other = type(model).from_config(config)
    other.build()
    layer = other.gru.layer_weights(0)
    layer["W_x"].assign(w["W_x"])
    layer["b"].assign(w["b"])
    layer["U_rz"].assign(w["U"][:, :2 * H])
    layer["U_c"].assign(w["U"][:, 2 * H:])
    other.item_scores.item_weights.assign(w["Wy"])
    hidden, _ = other.step(np.array(STEPS[0]["inputs"]), other.gru.initial_states(B))
    assert np.abs(np.asarray(hidden) - port_hidden).max() > 1e-3
