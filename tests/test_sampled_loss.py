"""`GRU4Rec.sampled_loss` against a plain NumPy reference, for every loss, final activation,
logQ on and off and extra samples on and off, with the settings taken from a `TrainConfig`
through `build_model` (so a setting that does not reach the loss fails here)."""

import numpy as np
import pytest

from tf_gru4rec.config import TrainConfig, load_preset
from tf_gru4rec.training import build_model

N_ITEMS, UNITS, BATCH = 30, 8, 6
BASE = TrainConfig(layers=[UNITS], batch_size=BATCH, bpreg=0.7, elu_param=0.5, sample_alpha=0.3,
                   n_epochs=1, seed=4)
LOSSES = ["cross-entropy", "bpr-max", "top1-max", "bpr", "top1"]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_sampled_loss(model, hidden, targets, valid, negatives, *, loss, final_act, bpreg,
                       elu_param, logq, sample_alpha):
    """Per-event loss [B], written from SPEC.md's formulas: row i's target is column i, its
    negatives are every other valid column (other slots' targets, then the extra samples)."""
    w = model.item_scores.item_weights.numpy()
    b = model.item_scores.item_bias.numpy()
    log_support = model.log_support.numpy()
    columns = np.concatenate([targets, negatives])
    r = hidden.astype("float64") @ w[columns].T + b[columns]  # (B, C)
    if logq:  # before the final activation; extra samples were drawn ~ support**alpha
        r = r - logq * np.concatenate([log_support[targets],
                                       sample_alpha * log_support[negatives]])
    if final_act == "tanh":
        r = np.tanh(r)
    elif final_act == "elu":
        r = np.where(r > 0, r, elu_param * (np.exp(r) - 1.0))
    column_valid = np.concatenate([valid, np.ones(len(negatives))]) > 0
    out = np.zeros(len(targets))
    for i in range(len(targets)):
        pos = r[i, i]
        others = column_valid.copy()
        others[i] = False  # a target is never its own negative
        neg = r[i, others]
        s = np.exp(neg - neg.max())
        s /= s.sum()
        if loss == "cross-entropy":
            z = np.concatenate([[pos], neg])
            out[i] = np.log(np.exp(z - z.max()).sum()) + z.max() - pos
        elif loss == "bpr":
            out[i] = np.mean(-np.log(sigmoid(pos - neg)))
        elif loss == "top1":
            out[i] = np.mean(sigmoid(neg - pos) + sigmoid(neg ** 2))
        elif loss == "top1-max":
            out[i] = np.sum(s * (sigmoid(neg - pos) + sigmoid(neg ** 2)))
        elif loss == "bpr-max":
            out[i] = -np.log(np.sum(s * sigmoid(pos - neg))) + bpreg * np.sum(s * neg ** 2)
    return out


def check_against_reference(config, n_sample, seed=0, final_act=None):
    """Builds the model of `config`, compares its sampled loss with the reference's on random
    inputs (two empty slots, scores of a few units so that tanh and elu matter)."""
    rng = np.random.default_rng(seed)
    model = build_model(config, N_ITEMS, rng.integers(1, 200, size=N_ITEMS))
    model.item_scores.item_bias.assign(rng.normal(size=N_ITEMS).astype("float32"))
    hidden = rng.normal(size=(BATCH, UNITS)).astype("float32") * 4.0
    targets = rng.integers(0, N_ITEMS, size=BATCH).astype("int32")
    negatives = rng.integers(0, N_ITEMS, size=n_sample).astype("int32")
    valid = np.array([1, 1, 0, 1, 1, 0], "float32")
    got = model.sampled_loss(hidden, targets, valid, negatives if n_sample else None).numpy()
    want = numpy_sampled_loss(
        model, hidden, targets, valid, negatives, loss=config.loss,
        final_act=final_act or config.final_act, bpreg=config.bpreg,
        elu_param=config.elu_param, logq=config.logq, sample_alpha=config.sample_alpha)
    rows = valid > 0
    np.testing.assert_allclose(got[rows], want[rows], rtol=2e-4, atol=2e-5)
    return got[rows]


@pytest.mark.parametrize("n_sample", [0, 7])
@pytest.mark.parametrize("logq", [0.0, 1.0])
@pytest.mark.parametrize("final_act", ["linear", "tanh", "elu"])
@pytest.mark.parametrize("loss", LOSSES)
def test_sampled_loss_matches_numpy(loss, final_act, logq, n_sample):
    config = BASE.replace(loss=loss, final_act=final_act, logq=logq, n_sample=n_sample)
    check_against_reference(config, n_sample)


@pytest.mark.parametrize("loss", LOSSES)
def test_each_setting_of_the_loss_changes_it(loss):
    """The settings that enter the loss change its value (a setting dropped on the way to the
    loss would leave it unchanged): final activation, logQ and, for bpr-max, bpreg."""
    config = BASE.replace(loss=loss, final_act="linear", n_sample=7)
    plain = check_against_reference(config, 7)
    changes = {"tanh": {"final_act": "tanh"}, "elu": {"final_act": "elu"},
               "logq": {"logq": 1.0}, "alpha": {"logq": 1.0, "sample_alpha": 0.9}}
    if loss == "bpr-max":
        changes["bpreg"] = {"bpreg": 2.0}
    for name, change in changes.items():
        changed = check_against_reference(config.replace(**change), 7)
        base = check_against_reference(config.replace(logq=1.0), 7) if name == "alpha" else plain
        assert not np.allclose(changed, base, rtol=1e-3), name


@pytest.mark.parametrize(("preset", "final_act"), [
    ("rsc15-bprmax", "elu"), ("paper2016-top1", "tanh"), ("paper2016-bpr", "tanh"),
    ("paper2016-xe", "linear"), ("rsc15-xe", "linear")])
def test_presets_reach_the_loss(preset, final_act):
    """Each preset's loss, final activation (elu by default for bpr-max with elu_param > 0),
    bpreg and logQ, as the model built from it computes them."""
    config = load_preset(preset).replace(layers=[UNITS], batch_size=BATCH)
    check_against_reference(config, config.n_sample and 7, final_act=final_act)
