"""Serving a GRU4Rec: the exported graph, version directories, TF Serving client, development
server and replay.

`tf_gru4rec.serving.client` needs only `grpcio`, `numpy` and the `tensorflow-serving-api`
protos (no training code), so a web service can install and import it alone; its names are
also available here (`PredictionClient`, `RestClient`, `ServingError`, `StatelessSession`),
loaded on first use, so that importing another part of this package does not need gRPC.
`graph` is the served graph (`ServingModule` and its parts), `export` writes a trained model as
a SavedModel version of it (formerly `tf_gru4rec.export`), `version_dirs` writes versions
under a base path atomically. The development server (`dev_server`, with `servables` and
`rest`) and `replay` load TensorFlow and the data readers; import them explicitly. `capi`
loads a version through TensorFlow's C API (the C++ loader TF Serving runs), for tests and
benchmarks.
"""

from __future__ import annotations

import importlib

__all__ = ["PredictionClient", "RestClient", "ServingError", "StatelessSession"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("tf_gru4rec.serving.client"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
