"""Baselines (`tf_gru4rec.evaluation.baselines`) against naive one-event-at-a-time references,
the tie rules of `tf_gru4rec.evaluation.metrics`, the ANCHORS.md numbers on rsc15_100k, and the
CLI subcommand."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.evaluation.baselines import (
    BASELINE_NAMES,
    BPRMF,
    TIE_MODES,
    ItemKNN,
    Pop,
    SessionPop,
    evaluate_baseline,
    make_baseline,
    run_baselines,
    target_ranks,
)

# Hand-made log; raw item ids 0..5 are also the indices (first appearance order).
TRAIN = [[0, 1, 2], [0, 1], [0, 2, 3], [1, 0, 4], [0, 0, 5]]
TEST = [[3, 1, 4], [5, 5, 0]]
# Training support: item 0: 6 events, 1: 3, 2: 2, 3: 1, 4: 1, 5: 1.


def make_log(sessions, n_items=None) -> SessionLog:
    rows = [(s, item, t) for s, items in enumerate(sessions) for t, item in enumerate(items)]
    events = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).astype({"Time": float})
    n_items = n_items or max(max(s) for s in sessions) + 1
    return SessionLog.from_events(events, ItemVocabulary(np.arange(n_items)))


def random_sessions(rng, n_sessions, n_items, max_len=8):
    # Zipf-like item draws so that repeats and ties occur.
    p = 1.0 / np.arange(1, n_items + 1)
    p /= p.sum()
    return [list(rng.choice(n_items, size=rng.integers(2, max_len + 1), p=p))
            for _ in range(n_sessions)]


# ---------------------------------------------------------------------------------------------
# Naive references: dicts and loops, straight from the definitions in the module docstring.

def naive_rank(scores, target, mode):
    higher = sum(1 for s in scores if s > scores[target])
    ties = sum(1 for s in scores if s == scores[target]) - 1
    return {"standard": higher + 1, "conservative": higher + 1 + ties,
            "median": higher + 1 + 0.5 * ties}[mode]


def naive_popularity(train, n_items, top_n):
    support = Counter(i for s in train for i in s)
    ranked = sorted(range(n_items), key=lambda i: (-support[i], i))
    top = set(ranked[:top_n] if top_n else ranked)
    return [support[i] / (support[i] + 1) if i in top else 0.0 for i in range(n_items)]


def naive_pop_scores(train, n_items, top_n=100):
    pop = naive_popularity(train, n_items, top_n)
    return lambda prefix: list(pop)


def naive_spop_scores(train, n_items, top_n=100):
    pop = naive_popularity(train, n_items, top_n)

    def scores(prefix):
        counts = Counter(prefix)
        return [pop[i] + counts[i] for i in range(n_items)]

    return scores


def naive_knn_scores(train, n_items, n_neighbors, lmbd, alpha):
    support = Counter(i for s in train for i in s)
    cooc = {}
    for session in train:
        for i in session:  # every event of i ...
            for j in set(session):  # ... counts each distinct item of its session once
                if j != i:
                    cooc[i, j] = cooc.get((i, j), 0) + 1
    sims = {}
    for i in range(n_items):
        row = {}
        for j in range(n_items):
            if (i, j) in cooc:
                norm = (support[i] + lmbd) ** alpha * (support[j] + lmbd) ** (1 - alpha)
                row[j] = cooc[i, j] / norm
        best = sorted(row, key=lambda j: (-row[j], j))[:n_neighbors]
        sims[i] = {j: row[j] for j in best}
    return lambda prefix: [sims[prefix[-1]].get(j, 0.0) for j in range(n_items)]


def naive_bpr_scores(item_factors):
    def scores(prefix):
        mean = np.mean([item_factors[i] for i in prefix], axis=0)
        return [float(mean @ item_factors[j]) for j in range(len(item_factors))]

    return scores


def naive_evaluate(score_fn, test, cutoffs, mode):
    ranks = [naive_rank(score_fn(s[:t + 1]), s[t + 1], mode)
             for s in test for t in range(len(s) - 1)]
    out = {}
    for k in cutoffs:
        out[f"recall@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        out[f"mrr@{k}"] = sum(1 / r for r in ranks if r <= k) / len(ranks)
    return out, ranks


def assert_metrics_close(got, want):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# ---------------------------------------------------------------------------------------------
# POP and S-POP on the hand-made log, ranks written out.

def test_pop_hand_computed():
    # Scores: 6/7, 3/4, 2/3, 1/2, 1/2, 1/2 (items 0..5). Events (input -> target):
    #   3 -> 1: rank 2.   1 -> 4: 3 higher, ties with items 3, 5: standard 4, conservative 6.
    #   5 -> 5: as item 4: standard 4, conservative 6.   5 -> 0: rank 1.
    pop = Pop().fit(make_log(TRAIN))
    np.testing.assert_allclose(pop.score_session([3])[0], [6 / 7, 3 / 4, 2 / 3, .5, .5, .5])
    test = make_log(TEST, n_items=6)
    for mode, ranks in [("standard", [2, 4, 4, 1]), ("conservative", [2, 6, 6, 1]),
                        ("median", [2, 5, 5, 1])]:
        want, naive = naive_evaluate(naive_pop_scores(TRAIN, 6), TEST, (1, 5), mode)
        assert naive == ranks
        assert_metrics_close(evaluate_baseline(pop, test, (1, 5), mode), want)
    got = evaluate_baseline(pop, test, (1, 5), "conservative")
    assert got["recall@5"] == 0.5 and got["mrr@5"] == pytest.approx((1 / 2 + 1) / 4)
    assert got["test_events"] == 4


def test_spop_hand_computed():
    # Session counts + POP. Session [3, 1, 4]:
    #   after 3: [.857, .75, .667, 1.5, .5, .5] -> target 1: items 3, 0 higher: rank 3.
    #   after 3, 1: [.857, 1.75, .667, 1.5, .5, .5] -> target 4: 4 higher, tie with 5:
    #   standard 5, conservative 6.
    # Session [5, 5, 0]: after 5: item 5 = 1.5 -> target 5 rank 1; after 5, 5: item 5 = 2.5 ->
    #   target 0 (.857): rank 2.
    test = make_log(TEST, n_items=6)
    spop = SessionPop().fit(make_log(TRAIN))
    for mode, ranks in [("standard", [3, 5, 1, 2]), ("conservative", [3, 6, 1, 2])]:
        want, naive = naive_evaluate(naive_spop_scores(TRAIN, 6), TEST, (1, 5), mode)
        assert naive == ranks
        assert_metrics_close(evaluate_baseline(spop, test, (1, 5), mode), want)
    # top_n=2: only items 0, 1 get popularity, so session items outside score their count:
    #   after 3: [.857, .75, 0, 1, 0, 0] -> target 1: rank 3;
    #   after 3, 1: [.857, 1.75, 0, 1, 0, 0] -> target 4 (0): standard 4, conservative 6.
    spop2 = SessionPop(top_n=2).fit(make_log(TRAIN))
    np.testing.assert_allclose(spop2.score_session([3, 1])[1], [6 / 7, 1.75, 0, 1, 0, 0])
    for mode, ranks in [("standard", [3, 4, 1, 2]), ("conservative", [3, 6, 1, 2])]:
        want, naive = naive_evaluate(naive_spop_scores(TRAIN, 6, top_n=2), TEST, (1, 5), mode)
        assert naive == ranks
        assert_metrics_close(evaluate_baseline(spop2, test, (1, 5), mode), want)


def test_item_knn_hand_computed():
    # lmbd 0, alpha 0.5: sim(i, j) = c_ij / sqrt(supp_i supp_j). Item 0 occurs twice in session
    # [0, 0, 5], so c_05 = 2 but c_50 = 1: sim(0, 5) = 2 / sqrt(6), sim(5, 0) = 1 / sqrt(6).
    # c_01 = 3 (sessions 1, 2, 4), c_02 = 2, c_03 = c_04 = 1.
    knn = ItemKNN(n_neighbors=10, lmbd=0, alpha=0.5).fit(make_log(TRAIN))
    items, sims = knn.neighbors_of(0)
    np.testing.assert_array_equal(items, [5, 1, 2, 3, 4])
    np.testing.assert_allclose(sims, [2 / np.sqrt(6), 3 / np.sqrt(18), 2 / np.sqrt(12),
                                      1 / np.sqrt(6), 1 / np.sqrt(6)])
    np.testing.assert_allclose(knn.score_session([5])[0], [1 / np.sqrt(6), 0, 0, 0, 0, 0])
    # Four neighbours: 3 and 4 tie for the fourth place of item 0; the lower index wins.
    items, _ = ItemKNN(n_neighbors=4, lmbd=0).fit(make_log(TRAIN)).neighbors_of(0)
    np.testing.assert_array_equal(items, [5, 1, 2, 3])


# ---------------------------------------------------------------------------------------------
# Every baseline against its naive reference on random logs, session-parallel with refills.

@pytest.mark.parametrize("mode", TIE_MODES)
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_matches_naive_reference(mode, batch_size):
    rng = np.random.default_rng(7)
    n_items = 25
    train = random_sessions(rng, 120, n_items)
    test = random_sessions(rng, 30, n_items)
    train_log, test_log = make_log(train, n_items), make_log(test, n_items)
    cutoffs = (1, 3, 10)
    cases = [
        (Pop(), naive_pop_scores(train, n_items)),
        (Pop(top_n=4), naive_pop_scores(train, n_items, 4)),
        (SessionPop(top_n=5), naive_spop_scores(train, n_items, 5)),
        (ItemKNN(), naive_knn_scores(train, n_items, 100, 20, 0.5)),
        (ItemKNN(n_neighbors=3, lmbd=2, alpha=1.0), naive_knn_scores(train, n_items, 3, 2, 1.0)),
    ]
    bpr = BPRMF(n_factors=8, n_epochs=2, seed=1).fit(train_log)
    cases.append((bpr, naive_bpr_scores(bpr.item_factors_)))
    for baseline, score_fn in cases:
        if baseline is not bpr:
            baseline.fit(train_log)
        want, _ = naive_evaluate(score_fn, test, cutoffs, mode)
        got = evaluate_baseline(baseline, test_log, cutoffs, mode, batch_size=batch_size)
        assert got["test_events"] == sum(len(s) - 1 for s in test)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (baseline.name, key)


def test_score_session_matches_naive_scores():
    rng = np.random.default_rng(3)
    train = random_sessions(rng, 60, 15)
    log = make_log(train, 15)
    session = [4, 0, 4, 7, 1]
    for baseline, score_fn in [
        (SessionPop(), naive_spop_scores(train, 15)),
        (ItemKNN(n_neighbors=5, lmbd=1, alpha=0.3), naive_knn_scores(train, 15, 5, 1, 0.3)),
    ]:
        got = baseline.fit(log).score_session(session)
        want = [score_fn(session[:t + 1]) for t in range(len(session))]
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_item_knn_blocks_give_the_same_neighbours():
    rng = np.random.default_rng(11)
    log = make_log(random_sessions(rng, 300, 60, max_len=12), 60)
    whole = ItemKNN(n_neighbors=7).fit(log)
    blocked = ItemKNN(n_neighbors=7, max_pairs_per_block=50).fit(log)  # one item per block
    for name in ("indptr_", "neighbors_", "similarities_"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(blocked, name))


def test_bpr_batch_size_one_is_event_by_event_sgd():
    """batch_size=1 equals the original's per-event update, drawn from the same generator."""
    log = make_log(TRAIN)
    k, lr, lam_s, lam_i, sigma, epochs = 4, 0.1, 0.01, 0.02, 0.1, 3
    model = BPRMF(n_factors=k, n_epochs=epochs, learning_rate=lr, lambda_session=lam_s,
                  lambda_item=lam_i, sigma=sigma, batch_size=1, seed=5).fit(log)
    rng = np.random.default_rng(5)
    sess_f = rng.uniform(-sigma, sigma, (log.n_sessions, k))
    item_f = rng.uniform(-sigma, sigma, (log.n_items, k))
    session_of = [s for s in range(log.n_sessions) for _ in log.session(s)]
    for _ in range(epochs):
        perm = rng.permutation(log.n_events)
        negatives = rng.integers(log.n_items, size=log.n_events)
        for e, n in zip(perm, negatives, strict=True):
            u, p = session_of[e], log.items[e]
            uf, pf, nf = sess_f[u].copy(), item_f[p].copy(), item_f[n].copy()
            c = 1.0 - 1.0 / (1.0 + np.exp(-(uf @ pf - uf @ nf)))
            sess_f[u] += lr * (c * (pf - nf) - lam_s * uf)
            item_f[p] += lr * (c * uf - lam_i * pf)
            item_f[n] += lr * (-c * uf - lam_i * nf)
    np.testing.assert_allclose(model.session_factors_, sess_f, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.item_factors_, item_f, rtol=1e-10, atol=1e-12)


def test_bpr_learns_and_is_seeded():
    rng = np.random.default_rng(0)
    # Two disjoint item groups: sessions stay within one group.
    train = [list(rng.choice(10, 5) + 10 * (s % 2)) for s in range(200)]
    log = make_log(train, 20)
    model = BPRMF(n_factors=8, n_epochs=15, learning_rate=0.1, seed=2).fit(log)
    assert model.history_[-1] > model.history_[0] + 0.1  # mean log sigmoid rises
    scores = model.score_session([3])[0]
    assert scores[:10].mean() > scores[10:].mean()
    again = BPRMF(n_factors=8, n_epochs=15, learning_rate=0.1, seed=2).fit(log)
    np.testing.assert_array_equal(model.item_factors_, again.item_factors_)


# ---------------------------------------------------------------------------------------------
# Tie rules: the NumPy twin equals tf_gru4rec.evaluation.metrics.target_ranks.

def test_tie_modes_docstring_example():
    scores = np.array([[0.5, 0.9, 0.5, 0.1]])
    assert target_ranks(scores, np.array([0]), "standard")[0] == 2
    assert target_ranks(scores, np.array([0]), "conservative")[0] == 3
    assert target_ranks(scores, np.array([0]), "median")[0] == 2.5
    with pytest.raises(ValueError, match="tie_mode"):
        target_ranks(scores, np.array([0]), "optimistic")


@pytest.mark.parametrize("mode", TIE_MODES)
def test_tie_modes_match_project_metrics(mode):
    import tensorflow as tf

    from tf_gru4rec.evaluation.metrics import target_ranks as tf_target_ranks

    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, size=(64, 40)).astype(np.float64)  # many ties
    targets = rng.integers(0, 40, size=64)
    want = tf_target_ranks(tf.constant(scores, tf.float32), tf.constant(targets), mode)
    np.testing.assert_array_equal(target_ranks(scores, targets, mode), want.numpy())


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="n_neighbors"):
        ItemKNN(n_neighbors=0)
    with pytest.raises(ValueError, match="alpha"):
        ItemKNN(alpha=1.5)
    with pytest.raises(ValueError, match="name"):
        make_baseline("random")
    with pytest.raises(ValueError, match="not fitted"):
        Pop().score_session([0])
    with pytest.raises(ValueError, match="items"):
        evaluate_baseline(Pop().fit(make_log(TRAIN)), make_log(TEST, n_items=9))
    with pytest.raises(ValueError, match="tie_mode"):
        evaluate_baseline(Pop().fit(make_log(TRAIN)), make_log(TEST, 6), tie_mode="best")


def test_run_baselines_keys():
    results = run_baselines(make_log(TRAIN), make_log(TEST, 6), cutoffs=(1, 20),
                            params={"bprmf": {"n_factors": 4, "n_epochs": 1}})
    assert set(results) == set(BASELINE_NAMES)
    for metrics in results.values():
        assert set(metrics) == {"recall@1", "mrr@1", "recall@20", "mrr@20", "test_events",
                                "eval_seconds", "fit_seconds"}


# ---------------------------------------------------------------------------------------------
# ANCHORS.md: the original's baselines on rsc15_100k (train_full -> test, all training items).

ANCHORS = {  # (name, tie mode): (Recall@20, MRR@20)
    ("pop", "conservative"): (0.0894, 0.0264),
    ("pop", "standard"): (0.0894, 0.0264),
    ("spop", "conservative"): (0.3807, 0.2493),
    ("spop", "standard"): (0.3816, 0.2824),
    ("itemknn", "conservative"): (0.3982, 0.1798),
    ("itemknn", "standard"): (0.4733, 0.1931),
}


@pytest.fixture(scope="module")
def rsc15_logs(rsc15_paths):
    from tf_gru4rec.data.io import read_events

    train_path, test_path = rsc15_paths
    train = read_events(train_path)
    vocab = ItemVocabulary.from_events(train["ItemId"].to_numpy())
    return (SessionLog.from_events(train, vocab),
            SessionLog.from_events(read_events(test_path), vocab))


@pytest.mark.parametrize("mode", ["conservative", "standard"])
def test_rsc15_100k_matches_anchors(rsc15_logs, mode):
    train_log, test_log = rsc15_logs
    results = run_baselines(train_log, test_log, names=("pop", "spop", "itemknn"),
                            cutoffs=(20,), tie_mode=mode)
    for name, metrics in results.items():
        recall, mrr = ANCHORS[name, mode]
        assert metrics["recall@20"] == pytest.approx(recall, rel=0.01), (name, mode)
        assert metrics["mrr@20"] == pytest.approx(mrr, rel=0.01), (name, mode)
        assert metrics["eval_seconds"] < 30


# ---------------------------------------------------------------------------------------------
# CLI.

def test_cli_baselines(tmp_path, capsys):
    from tf_gru4rec.cli import main

    def write(path, sessions, first_session):
        rows = [(first_session + s, 100 + item, 10 * s + t)
                for s, items in enumerate(sessions) for t, item in enumerate(items)]
        pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(
            path, sep="\t", index=False)

    write(tmp_path / "train.tsv", TRAIN, 1)
    write(tmp_path / "test.tsv", TEST + [[5, 99]], 100)  # item 199 is unknown: dropped
    code = main(["baselines", "--train", str(tmp_path / "train.tsv"),
                 "--test", str(tmp_path / "test.tsv"), "--names", "pop", "spop", "itemknn",
                 "--cutoffs", "1", "5", "--json"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"pop", "spop", "itemknn"}
    # POP conservative ranks 2, 6, 6, 1 (test_pop_hand_computed).
    assert results["pop"]["test_events"] == 4
    assert results["pop"]["recall@5"] == 0.5
    assert results["pop"]["mrr@5"] == pytest.approx(0.375)
    # S-POP conservative ranks 3, 6, 1, 2.
    assert results["spop"]["mrr@5"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 4)
    # Without --json: a table, one row per baseline, the same numbers to 4 decimals.
    assert main(["baselines", "--train", str(tmp_path / "train.tsv"), "--test",
                 str(tmp_path / "test.tsv"), "--names", "pop", "spop", "--cutoffs", "1",
                 "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Recall@1", "Recall@5", "MRR@1", "MRR@5", "test", "events"]
    assert lines[1].split() == ["pop", f"{results['pop']['recall@1']:.4f}", "0.5000",
                                f"{results['pop']['mrr@1']:.4f}", "0.3750", "4"]
    assert lines[2].split()[0] == "spop" and len(lines) == 3


def test_cli_module_is_light_and_in_sync():
    import subprocess
    import sys

    from tf_gru4rec.cli import baselines as cli_baselines
    assert cli_baselines.NAMES == BASELINE_NAMES and cli_baselines.TIE_MODES == TIE_MODES
    code = ("import sys, tf_gru4rec.cli.baselines; "
            "sys.exit(int(any(m in sys.modules for m in ('numpy', 'tensorflow'))))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
