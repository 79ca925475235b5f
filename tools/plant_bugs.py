"""Plants each wiring bug of issues 12, 19, 21 and 22 in a copy of the tracked files and runs
default tests.

    python tools/plant_bugs.py            # ~10 min on 2 cores; prints the failing tests per bug
    python tools/plant_bugs.py cell loss  # only the bugs whose name contains a given word

Each bug must fail at least one default (non-slow) test. The copy lives in a temporary
directory; the working tree is never modified.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
TESTS = ["tests/test_sampled_loss.py", "tests/test_config_wiring.py", "tests/test_warm_start.py",
         "tests/test_port_step.py", "tests/test_layers_and_losses.py"]
# name: (file, original text, planted text[, the pytest arguments: default TESTS])
SHARDS = ["tests/test_shards.py", "-k", "not caps"]  # the memory-capped test takes a minute
PLANTS = {
    "bpreg not passed to bpr-max": (
        "tf_gru4rec/nn/model.py", "return self.loss_fn(positive, scores, mask, bpreg=self.bpreg)",
        "return self.loss_fn(positive, scores, mask)"),
    "train() does not pass sample_alpha": (
        "tf_gru4rec/training/distributed.py",
        "n_sample=config.n_sample, sample_alpha=config.sample_alpha,", "n_sample=config.n_sample,"),
    "elu dropped (activation)": (
        "tf_gru4rec/nn/model.py", 'if self.final_act == "elu":', "if False:"),
    "elu dropped (bpr-max default)": (
        "tf_gru4rec/nn/model.py",
        'final_act = "elu" if (loss == "bpr-max" and elu_param > 0) else "linear"',
        'final_act = "linear"'),
    "tanh dropped": ("tf_gru4rec/nn/model.py", 'if self.final_act == "tanh":', "if False:"),
    "target among its own negatives": (
        "tf_gru4rec/nn/model.py", "mask = column_valid[None, :] * (1.0 - eye)",
        "mask = column_valid[None, :] + 0.0 * eye"),
    "warm start drops old weights (grow_model)": (
        "tf_gru4rec/training/warm_start.py", "        if old is None:\n            continue",
        "        if True:\n            continue"),
    "warm start drops old weights (CLI)": (
        "tf_gru4rec/cli/train.py",
        "model = grow_model(previous.model, previous.vocabulary, vocabulary)", "model = None"),
    # Issue 19: the PyTorch port's cell and cross-entropy.
    "cell: reset gate before the recurrent product everywhere": (
        "tf_gru4rec/nn/layers/gru_stack.py",
        'return self.cell == "reset-after" and not (i == 0 and self.one_hot_items)',
        "return False"),
    "cell: candidate bias b_hn dropped": (
        "tf_gru4rec/nn/layers/gru_stack.py",
        "hidden = ops.matmul(state, recurrent) + recurrent_bias  # (B, 3h)",
        "hidden = ops.matmul(state, recurrent) + ops.concatenate(\n"
        "        [recurrent_bias[: 2 * h], 0.0 * recurrent_bias[2 * h :]])"),
    "cell: gru_cell not passed from the config": (
        "tf_gru4rec/training/build.py", "gru_cell=config.gru_cell,", ""),
    "loss: exact logsumexp instead of the port's softmax + 1e-24": (
        "tf_gru4rec/nn/losses.py", "return ops.log(ops.exp(centred) / total + _TINY)",
        "return centred - ops.log(total)"),
    # issue 21: each passed every default test before it
    "shards: only the last chunk decides a column's id type": (
        "tf_gru4rec/data/prepare_shards.py", "all_int[col] &= is_int", "all_int[col] = is_int",
        SHARDS),
    "shards: item vocabulary kept as text": (
        "tf_gru4rec/data/shards.py", "    ids = normalise_ids(raw_ids, path)",
        "    return raw_ids", SHARDS),
    "time-unit auto by the smallest time": (
        "tf_gru4rec/data/raw_log.py", "np.nanmedian(values)", "np.nanmin(values)",
        ["tests/test_prepare_log.py"]),
    "offsets in hours read as 6 minutes": (
        "tf_gru4rec/data/raw_log.py", '"h": 3600.0', '"h": 360.0', ["tests/test_prepare_log.py"]),
    "offsets in minutes read as 6 seconds": (
        "tf_gru4rec/data/raw_log.py", '"min": 60.0', '"min": 6.0', ["tests/test_prepare_log.py"]),
    "warm start: new item rows zeros": (
        "tf_gru4rec/training/warm_start.py", "fresh = weight.numpy()",
        "fresh = np.zeros(weight.shape, weight.dtype)", ["tests/test_warm_start.py"]),
    # issue 22: the training input's autotuning stalled every epoch's iterator teardown
    "input: tf.data autotuning back on (fit)": (
        "tf_gru4rec/data/input_pipeline.py", "options.autotune.enabled = False",
        "options.autotune.enabled = True", ["tests/test_session_parallel.py"]),
    "input: tf.data autotuning back on (the loop)": (
        "tf_gru4rec/data/distributed_input.py", "options.autotune.enabled = False",
        "options.autotune.enabled = True", ["tests/test_session_parallel.py"]),
    "a Keras optimizer ignores momentum": (
        "tf_gru4rec/training/build.py", 'options["momentum"] = config.momentum', "pass",
        ["tests/test_config_wiring.py"]),
}


def main() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    missed = []
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for name in filter(None, files):
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((REPO / name).read_bytes())
        env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
        for bug, (path, original, planted, *tests) in PLANTS.items():
            if sys.argv[1:] and not any(word in bug for word in sys.argv[1:]):
                continue
            source = root / path
            text = source.read_text()
            if text.count(original) != 1:
                raise SystemExit(f"{bug}: the code to plant it in has changed ({path})")
            source.write_text(text.replace(original, planted))
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                  *(tests[0] if tests else TESTS)], cwd=root, env=env,
                                 capture_output=True, text=True)
            source.write_text(text)
            if run.returncode not in (0, 1):  # not "tests ran": a broken copy or collection
                raise SystemExit(f"{bug}: pytest exited {run.returncode}\n{run.stdout[-3000:]}")
            failed = sorted({line.split()[1].split("[")[0] for line in run.stdout.splitlines()
                             if line.startswith(("FAILED", "ERROR"))})
            sys.stdout.write(f"{bug}: {len(failed)} failing test function(s)\n")
            sys.stdout.writelines(f"    {test}\n" for test in failed)
            if not failed:
                missed.append(bug)
    if missed:
        sys.stdout.write(f"NOT CAUGHT: {missed}\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
