"""StepProgress: training progress in steps with a known total (not blocks, not "Unknown")."""

from __future__ import annotations

import sys
import types

from tf_gru4rec.training.progress import StepProgress


def _source(steps=120, block=50, skip=0):
    return types.SimpleNamespace(steps_per_epoch=lambda epoch: steps, steps_per_block=block,
                                 skip_steps=skip)


def _run(progress, blocks):
    progress.on_epoch_begin(0)
    seen = []
    for b in range(blocks):
        progress.on_train_batch_end(b, {"loss": 1.0})
        seen.append(progress.done)
    progress.on_epoch_end(0, {"loss": 1.0})
    return seen


def test_steps_are_counted_with_the_total_known_from_the_first_block(capsys):
    progress = StepProgress(_source(), epochs=2, verbose=1)
    assert _run(progress, 3) == [50, 100, 120]  # the last block is short
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "50/120" in out and "120/120" in out
    assert "Unknown" not in out  # Keras 3 shows the ETA (bold seconds) while current < total


def test_one_line_per_epoch_with_verbose_2(capsys):
    _run(StepProgress(_source(), epochs=1, verbose=2), 3)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("120/120 - ") and "loss: 1.0" in lines[0]


def test_a_resumed_epoch_starts_at_its_skipped_steps():
    assert _run(StepProgress(_source(skip=100), epochs=1, verbose=0), 1) == [120]


def test_auto_is_one_plain_line_per_epoch_when_not_a_terminal(capsys):
    """Written to a log file, Keras' bar would be thousands of characters with colour codes."""
    _run(StepProgress(_source(), epochs=1, verbose="auto"), 3)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("120/120 - ")
    assert "\x1b" not in out and "\r" not in out and "\b" not in out


def test_auto_draws_the_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert StepProgress(_source(), epochs=1, verbose="auto").verbose == 1
