"""Cost of the allocation-event recorder: an estimate with recording off (the default) must cost what it cost
before the recorder existed, and recording on stays a small fraction of a trace. pytest-benchmark, not a
test of behaviour: run with `pytest benchmarks/test_event_recording_overhead.py`."""

from __future__ import annotations

import pytest

from unipt_bench.config import RunSpec, TowerSpec
from unipt_bench.memory import events as allocation_events
from unipt_bench.profile import RunOptions, profile


def spec() -> RunSpec:
    return RunSpec(suite="bench", config="c", label="lora", method="lora", method_options={}, task="retrieval",
                   task_options={"embed_dim": 16}, batch=4, gpus=1, steps=1, seed=0, mode="estimate",
                   towers=[TowerSpec("a", "tiny-bert", shape={"seq_len": 8}, pooling="mean"),
                           TowerSpec("b", "tiny-regions", tuned=False, pooling="mean")])


@pytest.mark.parametrize("recording", [False, True], ids=["off", "on"])
def test_estimate_with_and_without_event_recording(benchmark, recording: bool) -> None:
    def run() -> None:
        if recording:
            with allocation_events.recording():
                profile(spec(), RunOptions(trackers=[]))
        else:
            profile(spec(), RunOptions(trackers=[]))

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
