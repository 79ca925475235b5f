"""`benchmarks/step_profile.py`'s schedule of one step, on a made-up trace (no TensorFlow)."""

import importlib
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")


@pytest.fixture(scope="module")
def step_profile():
    sys.path.insert(0, BENCHMARKS)
    try:
        yield importlib.import_module("step_profile")
    finally:
        sys.path.remove(BENCHMARKS)


def test_one_step_takes_the_middle_step_and_counts_busy_time(step_profile):
    # (start us, duration us, thread, name); the step starts at each "fwd" (0, 100, 200).
    events = []
    for begin in (0.0, 100.0, 200.0):
        events += [
            (begin, 40.0, "A", "fwd"),                      # A: its own thunk, 0-40
            (begin + 10, 0.0, "B", "ThreadpoolListener::StartRegion"),  # B helps fwd 10-30
            (begin + 30, 0.0, "B", "ThreadpoolListener::StopRegion"),
            (begin + 20, 10.0, "A", "Pool::Await"),         # A waits 20-30: not busy
            (begin + 40, 0.5, "A", "end: fwd"),             # markers are not thunks
            (begin + 50, 30.0, "B", "loss"),                # B: 50-80
            (begin + 60, 10.0, "B", "while"),               # skipped by name
            (begin + 90, 5.0 + begin / 100, "C", "other"),  # differs step by step
        ]
    events.sort()
    step = step_profile.one_step(events, "fwd", skip=("while",))
    assert step["step_us"] == pytest.approx(100.0)
    assert step["thunks"] == {"thread 0": [(0.0, 40.0, "fwd")],
                              "thread 1": [(50.0, 30.0, "loss")],
                              "thread 2": [(90.0, 6.0, "other")]}  # the middle step's
    busy = step["busy_us"]
    assert busy["thread 0"] == pytest.approx(30.0, abs=0.3)  # 40 us less 10 us waiting
    assert busy["thread 1"] == pytest.approx(50.0, abs=0.3)  # 20 us helping + 30 us its own
    assert busy["thread 2"] == pytest.approx(6.0, abs=0.3)
