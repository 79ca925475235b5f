"""The data stage: click-log reading, item vocabulary, session logs, preprocessing and
synthetic data, and what feeds the model: the session-parallel layout (`session_parallel`),
negative sampling (`sampling`) and the `tf.data` training input (`input_pipeline`)."""
