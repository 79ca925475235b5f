"""The paper's tables on a user's data: baselines (Table 1), the 2016 GRU4Rec settings
(Table 3: TOP1 / BPR / cross-entropy x 100 / 1000 units) and the tuned 2018 settings, each
trained on one click log, evaluated on another and written beside the published numbers.

  report = run_reproduction(train_events, test_events)
  markdown = format_markdown(report)

Every GRU setting is a preset (`tf_gru4rec/presets/`) with `layers` overridden; every model and
baseline is scored on the same test log with the same evaluation (all items ranked, the same tie
rule). The published numbers are for the full RSC15 set (31M training clicks, SPEC.md); on other
data only the ordering of the methods is comparable.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import platform
import time

import keras
import numpy as np
import pandas as pd

from tf_gru4rec.config import TrainConfig, load_preset
from tf_gru4rec.data.io import ITEM
from tf_gru4rec.data.preprocess import drop_short_sessions
from tf_gru4rec.data.session_log import SessionLog
from tf_gru4rec.data.vocabulary import ItemVocabulary
from tf_gru4rec.evaluation import evaluate
from tf_gru4rec.evaluation.baselines import run_baselines
from tf_gru4rec.training.run import train

logger = logging.getLogger(__name__)

CUTOFF = 20


@dataclasses.dataclass(frozen=True)
class Setting:
    """One GRU4Rec row of the table: a preset with `layers` set, and its published numbers."""

    key: str
    label: str
    preset: str
    units: int
    paper_recall: float | None
    paper_mrr: float | None
    source: str


# Table 3 of Hidasi et al. 2016 (RSC15) and the best published RSC15 results of the original
# implementation with the 2018 losses (SPEC.md, "What the follow-up reached").
SETTINGS = (
    Setting("top1-100", "GRU4Rec TOP1, 100 units", "paper2016-top1", 100, 0.5853, 0.2305,
            "2016 Table 3"),
    Setting("bpr-100", "GRU4Rec BPR, 100 units", "paper2016-bpr", 100, 0.6069, 0.2407,
            "2016 Table 3"),
    Setting("xe-100", "GRU4Rec cross-entropy, 100 units", "paper2016-xe", 100, 0.6074, 0.2430,
            "2016 Table 3"),
    Setting("top1-1000", "GRU4Rec TOP1, 1000 units", "paper2016-top1", 1000, 0.6206, 0.2693,
            "2016 Table 3"),
    Setting("bpr-1000", "GRU4Rec BPR, 1000 units", "paper2016-bpr", 1000, 0.6322, 0.2467,
            "2016 Table 3"),
    Setting("xe-1000", "GRU4Rec cross-entropy, 1000 units", "paper2016-xe", 1000, 0.5777,
            0.2153, "2016 Table 3"),
    Setting("rsc15-xe", "GRU4Rec 2018 cross-entropy + logQ (rsc15-xe)", "rsc15-xe", 100,
            0.7283, 0.3205, "2018 / original repo"),
    Setting("rsc15-bprmax", "GRU4Rec 2018 BPR-max (rsc15-bprmax)", "rsc15-bprmax", 100,
            0.7261, 0.3124, "2018 / original repo"),
)
SETTING_KEYS = tuple(s.key for s in SETTINGS)

# Table 1 of Hidasi et al. 2016 (RSC15): name -> (label, Recall@20, MRR@20).
BASELINES = {
    "pop": ("POP", 0.0050, 0.0012),
    "spop": ("S-POP", 0.2672, 0.1775),
    "itemknn": ("Item-KNN", 0.5065, 0.2048),
    "bprmf": ("BPR-MF", 0.2574, 0.0618),
}

# --quick: a smoke run of the whole table in seconds (the numbers mean nothing).
QUICK_UNITS = {100: 8, 1000: 16}
QUICK_N_SAMPLE = 64
QUICK_BASELINE_PARAMS = {"bprmf": {"n_factors": 8, "n_epochs": 1}}


def train_and_eval_logs(train_events: pd.DataFrame, eval_events: pd.DataFrame,
                        min_session_length: int = 2
                        ) -> tuple[ItemVocabulary, SessionLog, SessionLog]:
    """(vocabulary, train log, evaluation log) from two standard event frames.

    The vocabulary is the training items; evaluation events of other items are dropped, then
    evaluation sessions shorter than `min_session_length` (as `tf-gru4rec evaluate` does).
    """
    vocabulary = ItemVocabulary.from_events(train_events[ITEM].to_numpy())
    train_log = SessionLog.from_events(train_events, vocabulary)
    known = vocabulary.lookup(eval_events[ITEM].to_numpy()) >= 0
    if not known.all():
        logger.info("evaluation log: dropping %d events of items unknown to training",
                    int((~known).sum()))
    eval_events = drop_short_sessions(eval_events[known], min_session_length)
    if len(eval_events) == 0:
        raise ValueError("No evaluation session is left after dropping the items unknown to "
                         "training: are the two files from the same catalogue?")
    return vocabulary, train_log, SessionLog.from_events(eval_events, vocabulary)


def setting_config(setting: Setting, quick: bool = False, epochs: int | None = None,
                   seed: int = 0) -> TrainConfig:
    """The TrainConfig of one setting (`quick`: tiny layers and samples, 1 epoch, no XLA)."""
    config = load_preset(setting.preset).replace(layers=[setting.units], seed=seed)
    if quick:
        config = config.replace(layers=[QUICK_UNITS.get(setting.units, 8)], n_epochs=1,
                                n_sample=min(config.n_sample, QUICK_N_SAMPLE),
                                jit_compile=False, steps_per_execution=10)
    if epochs is not None:
        config = config.replace(n_epochs=int(epochs))
    return config


def run_reproduction(train_events: pd.DataFrame, test_events: pd.DataFrame,
                     settings=SETTING_KEYS, baselines=tuple(BASELINES), quick: bool = False,
                     epochs: int | None = None, seed: int = 0, tie_mode: str = "conservative",
                     verbose: int | str = 0) -> dict:
    """Train and evaluate every baseline and setting; returns a JSON-ready report.

    Args:
      train_events, test_events: standard event frames (`tf_gru4rec.data.io.read_events`).
      settings: keys of `SETTINGS` to run, in table order.
      baselines: names of `BASELINES` to run.
      quick: shrink the GRU settings and BPR-MF to a smoke run (tests, notebooks).
      epochs: override every GRU setting's `n_epochs` (default: the presets' 10).
      seed: seed of every GRU model and of BPR-MF.
      tie_mode: rank ties rule of the evaluation (see `tf_gru4rec.evaluation.metrics`).
      verbose: Keras `fit` verbosity.

    Returns:
      {"data": sizes, "rows": [{"key", "label", "kind", "recall@20", "mrr@20",
      "paper_recall@20", "paper_mrr@20", "source", "seconds", "config"}], "environment": ...}.
    """
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown}; settings: {list(SETTING_KEYS)}")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"Unknown baseline(s) {unknown}; baselines: {list(BASELINES)}")
    vocabulary, train_log, test_log = train_and_eval_logs(train_events, test_events)
    report = {
        "data": {"train_events": train_log.n_events, "train_sessions": train_log.n_sessions,
                 "items": len(vocabulary), "test_events": test_log.n_events,
                 "test_sessions": test_log.n_sessions,
                 "test_predictions": test_log.n_predictions},
        "tie_mode": tie_mode, "quick": bool(quick), "seed": int(seed),
        "environment": environment(), "rows": [],
    }
    names = [n for n in BASELINES if n in baselines]
    if names:
        params = {name: {"seed": seed} if name == "bprmf" else {} for name in names}
        if quick:
            for name, extra in QUICK_BASELINE_PARAMS.items():
                params.setdefault(name, {}).update(extra)
        results = run_baselines(train_log, test_log, names=names, cutoffs=(CUTOFF,),
                                tie_mode=tie_mode, params=params)
        for name in names:
            label, paper_recall, paper_mrr = BASELINES[name]
            metrics = results[name]
            report["rows"].append(_row(name, label, "baseline", metrics, paper_recall,
                                       paper_mrr, "2016 Table 1",
                                       metrics["fit_seconds"] + metrics["eval_seconds"],
                                       params.get(name, {})))
    for setting in (s for s in SETTINGS if s.key in settings):
        config = setting_config(setting, quick, epochs, seed)
        logger.info("%s: training %s", setting.key, config.to_dict())
        start = time.perf_counter()
        trained = train(config, train_log, verbose=verbose)
        metrics = evaluate(trained.model, test_log, (CUTOFF,), tie_mode,
                           config.eval_batch_size)
        seconds = time.perf_counter() - start
        metrics["final_loss"] = float(trained.history["loss"][-1])
        report["rows"].append(_row(setting.key, setting.label, "gru4rec", metrics,
                                   setting.paper_recall, setting.paper_mrr, setting.source,
                                   seconds, config.to_dict()))
        del trained
        keras.backend.clear_session()
    return report


def _row(key, label, kind, metrics, paper_recall, paper_mrr, source, seconds, config) -> dict:
    row = {"key": key, "label": label, "kind": kind,
           f"recall@{CUTOFF}": float(metrics[f"recall@{CUTOFF}"]),
           f"mrr@{CUTOFF}": float(metrics[f"mrr@{CUTOFF}"]),
           f"paper_recall@{CUTOFF}": paper_recall, f"paper_mrr@{CUTOFF}": paper_mrr,
           "source": source, "seconds": float(seconds), "config": config}
    if "final_loss" in metrics:
        row["final_loss"] = metrics["final_loss"]
    logger.info("%s: Recall@%d %.4f, MRR@%d %.4f (paper %s / %s)", key, CUTOFF,
                row[f"recall@{CUTOFF}"], CUTOFF, row[f"mrr@{CUTOFF}"], paper_recall, paper_mrr)
    return row


def environment() -> dict:
    """Where and when a report was made."""
    import tensorflow as tf

    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__}


def _num(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _ratio(value, reference) -> str:
    if value is None or not reference:
        return "—"
    return f"{100.0 * (value / reference - 1.0):+.0f}%"


def format_markdown(report: dict, title: str = "GRU4Rec reproduction",
                    command: str | None = None) -> str:
    """The report as Markdown: sizes, the table (ours beside the published numbers, and the
    Recall@20 gain over item-KNN in both) and how it was made."""
    rows = report["rows"]
    data = report["data"]
    env = report["environment"]
    knn = next((r for r in rows if r["key"] == "itemknn"), None)
    r_key, m_key = f"recall@{CUTOFF}", f"mrr@{CUTOFF}"
    lines = [f"# {title}", ""]
    if report.get("quick"):
        lines += ["**Quick smoke run** (`--quick`: tiny models, 1 epoch): the numbers below "
                  "only show that the pipeline runs.", ""]
    lines += [
        f"Training: {data['train_events']:,} events, {data['train_sessions']:,} sessions, "
        f"{data['items']:,} items. Test: {data['test_events']:,} events in "
        f"{data['test_sessions']:,} sessions ({data['test_predictions']:,} predictions), "
        "items unknown to training dropped. All items ranked; ties counted "
        f"{_TIE_WORDS.get(report['tie_mode'], report['tie_mode'])}.",
        "",
        f"| Method | Recall@{CUTOFF} | MRR@{CUTOFF} | Paper Recall@{CUTOFF} | "
        f"Paper MRR@{CUTOFF} | Recall@{CUTOFF} vs item-KNN | Paper: vs item-KNN | Paper source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours_vs = _ratio(row[r_key], knn[r_key]) if knn and row is not knn else "—"
        paper_vs = (_ratio(row[f"paper_{r_key}"], BASELINES["itemknn"][1])
                    if row["key"] != "itemknn" else "—")
        lines.append(f"| {row['label']} | {_num(row[r_key])} | {_num(row[m_key])} | "
                     f"{_num(row[f'paper_{r_key}'])} | {_num(row[f'paper_{m_key}'])} | "
                     f"{ours_vs} | {paper_vs} | {row['source']} |")
    lines += [
        "",
        "Paper numbers: RSC15 full set (31.6M training clicks, 37,483 items, 71,222 test "
        "events); 2016 = Hidasi et al., ICLR 2016 (Tables 1 and 3); 2018 = the tuned "
        "cross-entropy / BPR-max settings of the CIKM 2018 follow-up as published for the "
        "original implementation. GRU settings are the presets named in the table with "
        "`layers` overridden; epochs and parameters are in the JSON report.",
        "",
        f"Made {env['date']} on {env['host']} ({env['cpus']} CPUs, {env['machine']}), "
        f"Python {env['python']}, TensorFlow {env['tensorflow']}, Keras {env['keras']}, "
        f"seed {report['seed']}.",
    ]
    if command:
        lines += ["", "Command:", "", "```bash", command, "```"]
    return "\n".join(lines) + "\n"


_TIE_WORDS = {"conservative": "against the target (conservative)",
              "standard": "for the target (standard, optimistic)",
              "median": "half against the target (median)"}
