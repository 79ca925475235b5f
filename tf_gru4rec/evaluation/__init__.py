"""The evaluation stage: full-catalogue ranks and Recall@K / MRR@K (`metrics`), the
session-parallel evaluation of a model (`model_eval`) and the baselines of the GRU4Rec papers
with their NumPy evaluation (`baselines`).

`evaluate`, `naive_ranks` and `DEFAULT_CUTOFFS` of `model_eval` are also available here,
loaded on first use, so that importing `baselines` alone does not load TensorFlow.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CUTOFFS", "evaluate", "naive_ranks"]


def __getattr__(name: str):
    if name in __all__:
        from tf_gru4rec.evaluation import model_eval

        return getattr(model_eval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
