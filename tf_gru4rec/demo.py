"""The main job end to end on the bundled synthetic data: generate, train, evaluate against
the baselines, export a SavedModel, serve it with the development server, send a few requests.
"""

from __future__ import annotations

import dataclasses
import logging
import os

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoOptions:
    workdir: str = "runs/demo"
    export_base: str = "export/gru4rec"
    n_items: int = 2000
    n_sessions: int = 20000
    preset: str = "quick"
    seed: int = 0
    verbose: object = "auto"


def run_demo(options: DemoOptions) -> dict:
    """Runs every stage and returns a summary dict (metrics, export path, served answers)."""
    from tf_gru4rec.config import load_preset
    from tf_gru4rec.data.io import write_events
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.synthetic import (
        SyntheticConfig,
        generate_sessions,
        train_test_split_synthetic,
    )
    from tf_gru4rec.data.vocabulary import ItemVocabulary
    from tf_gru4rec.evaluation import evaluate
    from tf_gru4rec.evaluation.baselines import run_baselines
    from tf_gru4rec.serving.export import export_model
    from tf_gru4rec.training.model_dir import save_model_dir
    from tf_gru4rec.training.run import train

    os.makedirs(options.workdir, exist_ok=True)
    events = generate_sessions(SyntheticConfig(n_items=options.n_items,
                                               n_sessions=options.n_sessions, seed=options.seed))
    train_events, test_events = train_test_split_synthetic(events, test_days=1.0)
    write_events(train_events, os.path.join(options.workdir, "train.tsv"))
    write_events(test_events, os.path.join(options.workdir, "test.tsv"))
    vocabulary = ItemVocabulary.from_events(train_events["ItemId"].to_numpy())
    train_log = SessionLog.from_events(train_events, vocabulary)
    test_log = SessionLog.from_events(test_events, vocabulary)
    logger.info("synthetic data: %d train events, %d test events, %d items",
                train_log.n_events, test_log.n_events, len(vocabulary))

    config = load_preset(options.preset).replace(seed=options.seed)
    result = train(config, train_log, verbose=options.verbose)
    model_dir = os.path.join(options.workdir, "model")
    save_model_dir(model_dir, result.model, vocabulary, config)
    table = {"gru4rec": evaluate(result.model, test_log, config.cutoffs, config.tie_mode)}
    table.update(run_baselines(train_log, test_log, cutoffs=config.cutoffs,
                               tie_mode=config.tie_mode))
    export_path = export_model(result.model, vocabulary, options.export_base, k=10)
    served = _serve_a_session(options.export_base, test_events)
    return {
        "train_events_per_second": result.events_per_second,
        "metrics": {name: {k: round(v, 4) for k, v in m.items() if "@" in k}
                    for name, m in table.items()},
        "model_dir": model_dir,
        "export": export_path,
        "served": served,
    }


def _serve_a_session(export_base: str, test_events) -> list[dict]:
    """Start the development server on a free loopback port and click through one test
    session over gRPC; returns what the server answered after each click."""
    from tf_gru4rec.serving.client import PredictionClient
    from tf_gru4rec.serving.dev_server import DevServer

    first = test_events["SessionId"].iloc[0]
    clicks = test_events.loc[test_events["SessionId"] == first, "ItemId"].astype(str).tolist()
    server = DevServer(export_base, model_name="gru4rec", port=0).start()
    answers = []
    try:
        with PredictionClient(f"127.0.0.1:{server.port}", "gru4rec", timeout=30) as client:
            for item in clicks[:4]:
                reply = client.click(["demo-session"], [item])
                answers.append({"clicked": item,
                                "recommended": [x.decode() if isinstance(x, bytes) else str(x)
                                                for x in reply["item_ids"][0][:5]]})
            client.end_sessions(["demo-session"])
    finally:
        server.stop(0)
    return answers


def format_summary(summary: dict) -> str:
    """A Markdown table of the metrics plus the served answers."""
    names = list(summary["metrics"])
    keys = [k for k in next(iter(summary["metrics"].values())) if k.endswith("@20")]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{summary['metrics'][name][k]:.4f}"
                                               for k in keys) + " |")
    lines.append("")
    lines.append(f"training: {summary['train_events_per_second']:,.0f} events/s; "
                 f"model: {summary['model_dir']}; SavedModel: {summary['export']}")
    for answer in summary["served"]:
        lines.append(f"clicked {answer['clicked']} -> top 5 {answer['recommended']}")
    return "\n".join(lines)
