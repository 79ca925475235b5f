"""The small synthetic log and settings that the distributed replay runners share (no
TensorFlow device set-up here: each runner sets its own before importing this)."""

from tf_gru4rec.config import TrainConfig

SETTINGS = {"batch_size": "8", "n_sample": "16", "layers": "12", "n_epochs": "1",
            "steps_per_execution": "7", "loss": "bpr-max", "bpreg": "0.5", "momentum": "0.3",
            "dropout_p_hidden": "0.0", "embedding": "0", "constrained_embedding": "true"}


def replay_log_and_config(**overrides):
    """(SessionLog of 250 synthetic sessions over 120 items, TrainConfig of SETTINGS with
    `overrides`)."""
    from tf_gru4rec.data.session_log import SessionLog
    from tf_gru4rec.data.synthetic import SyntheticConfig, generate_sessions
    from tf_gru4rec.data.vocabulary import ItemVocabulary

    events = generate_sessions(SyntheticConfig(n_items=120, n_sessions=250, seed=5))
    log = SessionLog.from_events(events, ItemVocabulary.from_events(events["ItemId"].to_numpy()))
    values = {**SETTINGS, **{key: str(value) for key, value in overrides.items()}}
    return log, TrainConfig().with_overrides(values)
