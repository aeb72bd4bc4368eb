"""Runs side by side (--jobs): the same result files as one at a time, each lane with its own environment."""

from __future__ import annotations

import pytest

from unipt_bench import launch
from unipt_bench.results import ResultStore
from unipt_bench.runner import run_specs
from unipt_bench.suite_file import load_suite

RUNS = {"bert/unipt", "bert/lora", "cnn/lora", "vit-clip/adapter"}


def figures(store: ResultStore) -> dict:
    return {key: (r.status, r.memory, r.params) for key, r in store.latest("smoke").items()}


@pytest.mark.slow
def test_two_lanes_store_the_same_figures_as_one(tmp_path) -> None:
    specs = [s for s in load_suite("smoke").with_mode("estimate") if f"{s.config}/{s.label}" in RUNS]
    one, two = ResultStore(tmp_path / "one"), ResultStore(tmp_path / "two")
    run_specs(specs, one)
    started = []
    results = run_specs(specs, two, jobs=2, on_start=started.append)
    assert sorted(s.key for s in started) == sorted(s.key for s in specs) and len(results) == len(specs)
    assert figures(two) == figures(one) and len(figures(one)) == len(RUNS)


def test_cuda_lanes_each_see_their_own_gpu(monkeypatch) -> None:
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["3", "5"])
    envs = launch.lane_env("cuda", 2)
    assert [envs[k]["CUDA_VISIBLE_DEVICES"] for k in (0, 1)] == ["3", "5"]
    assert launch.default_jobs("cuda") == 2 and launch.default_jobs("cpu") == 1
    assert launch.lane_env("estimate", 1) == {0: {}}
