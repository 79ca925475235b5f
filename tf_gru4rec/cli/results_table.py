"""Ranking metrics as a plain-text table, one row per model, for the command line.

  format_metrics({"gru4rec": {"recall@5": 0.41, "mrr@5": 0.22, "recall@20": 0.63, ...,
                              "test_events": 10152}})

             Recall@5  Recall@20   MRR@5  MRR@20  test events
    gru4rec    0.4100     0.6300  0.2200  0.2500        10152

Columns: Recall@K for every cutoff, then MRR@K, then the test events (when given).
"""

from __future__ import annotations

import re

_METRIC = re.compile(r"^(recall|mrr)@(\d+)$")


def format_metrics(results: dict[str, dict]) -> str:
    """`results`: row name -> a metrics dict (`evaluate`'s); other keys are left out."""
    keys = {k for metrics in results.values() for k in metrics if _METRIC.match(k)}
    order = sorted(keys, key=lambda k: (k.startswith("mrr"), int(k.split("@")[1])))
    names = [("Recall" if k.startswith("recall") else "MRR") + "@" + k.split("@")[1]
             for k in order]
    events = any("test_events" in metrics for metrics in results.values())
    header = [*names, *(["test events"] if events else [])]
    rows = []
    for name, metrics in results.items():
        cells = [f"{metrics[k]:.4f}" if k in metrics else "-" for k in order]
        if events:
            cells.append(str(metrics.get("test_events", "-")))
        rows.append((name, cells))
    first = max([len(name) for name, _ in rows] + [0])
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(header)]
    lines = ["  ".join([" " * first, *(h.rjust(w) for h, w in zip(header, widths,
                                                                   strict=True))])]
    lines += ["  ".join([name.ljust(first), *(c.rjust(w) for c, w in zip(cells, widths,
                                                                         strict=True))])
              for name, cells in rows]
    return "\n".join(line.rstrip() for line in lines)
