"""The graph of an exported GRU4Rec: the signatures TensorFlow Serving runs, in parts.

| module | job |
|---|---|
| `module.py` | `ServingModule`: the exported `tf.Module`, put together from the parts below |
| `signatures.py` | `Signatures`: the eight signatures, their inputs, outputs and semantics |
| `vocabulary.py` | `VocabularyTables`: raw item ids <-> item indices, inside the graph |
| `session_store.py` | `SessionStore`: sessions, their sweep and eviction; `apply_clicks` |
| `scoring.py` | `ItemScorer`: all items' scores by row blocks, precisions, top-K merge, ranks |
| `gru_step.py` | `GRUStep`: one GRU step of the model on flattened states |
| `checks.py` | input checks (shapes, limits, ranges), run first in every signature |
| `limits.py` | `ServingLimits` and the memory bound of a request |

Imports point one way: `module` -> `signatures` -> the parts -> `checks` -> `limits`. This
package imports nothing itself, so importing one part loads only what that part needs (and
never the gRPC client of `tf_gru4rec.serving`).
"""
