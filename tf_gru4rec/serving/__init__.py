"""Talking to a served GRU4Rec: TF Serving client, development server and replay.

`tf_gru4rec.serving.client` needs only `grpcio`, `numpy` and the `tensorflow-serving-api`
protos (no training code), so a web service can install and import it alone. The development
server (`dev_server`) and `replay` load TensorFlow and the data readers; import them explicitly.
`capi` loads a version through TensorFlow's C API (the C++ loader TF Serving runs), for tests
and benchmarks.
"""

from tf_gru4rec.serving.client import (
    PredictionClient,
    RestClient,
    ServingError,
    StatelessSession,
)

__all__ = ["PredictionClient", "RestClient", "ServingError", "StatelessSession"]
