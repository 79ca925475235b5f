"""Runs the official GRU4Rec PyTorch port on prepared files; called by `parity.py` with the
port's own Python (its venv, outside this repository). Written here, not taken from the port:
it only calls the port's public API (`GRU4Rec.set_params`, `fit`, `evaluation.batch_eval`).

    <port venv>/bin/python benchmarks/parity_original.py --original DIR --train T --test S \
        --params loss=cross-entropy,layers=100,... --seed 0 [--eval-batch 512]

Differences from the port's own `run.py`, each needed to run it on a small log:
  - torch's generators are seeded with --seed (the port seeds only its initial weights, with
    42), so a run can be repeated; different seeds give the port's run-to-run spread;
  - the evaluation batch is min(512, test sessions): `batch_eval` fails when the test set has
    fewer sessions than its batch (one GRU state per session: the batch does not change the
    result);
  - device "cpu".
Prints one JSON line: recall@20, mrr@20, train_seconds, epoch_seconds, train_events.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--original", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--params", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-batch", type=int, default=512)
    args = parser.parse_args()

    sys.path.insert(0, args.original)
    import evaluation
    import pandas as pd
    import torch
    from gru4rec_pytorch import GRU4Rec

    torch.manual_seed(args.seed)
    params = dict(item.split("=", 1) for item in args.params.split(","))
    columns = ["SessionId", "ItemId", "Time"]
    dtypes = {"SessionId": "int32", "ItemId": "str"}  # as the port's run.py reads a file
    train = pd.read_csv(args.train, sep="\t", usecols=columns, dtype=dtypes)
    test = pd.read_csv(args.test, sep="\t", usecols=columns, dtype=dtypes)
    gru = GRU4Rec(device=torch.device("cpu"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gru.set_params(**params)
        start = time.perf_counter()
        gru.fit(train)
        train_seconds = time.perf_counter() - start
        eval_batch = min(args.eval_batch, test["SessionId"].nunique())
        start = time.perf_counter()
        recall, mrr = evaluation.batch_eval(gru, test, cutoff=[20], batch_size=eval_batch,
                                            mode="conservative")
        eval_seconds = time.perf_counter() - start
    text = printed.getvalue()
    epoch_seconds = [float(s) for s in re.findall(r"Epoch\d+ --> loss: \S+ \t\((\S+)s\)", text)]
    losses = [float(s) for s in re.findall(r"Epoch\d+ --> loss: (\S+)", text)]
    sizes = train.groupby("SessionId").size()
    print(json.dumps({
        "recall@20": float(recall[20]), "mrr@20": float(mrr[20]),
        "train_seconds": train_seconds, "epoch_seconds": epoch_seconds,
        "printed_epoch_loss": losses, "train_events": int((sizes - 1).sum()),
        "eval_seconds": eval_seconds, "eval_batch": eval_batch,
        "nan": bool(gru.error_during_train)}))


if __name__ == "__main__":
    main()
