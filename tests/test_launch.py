"""Runs side by side (--jobs): the same result files as one at a time, each lane with its own environment."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from unipt_bench import launch
from unipt_bench.launchers import LaunchSettings
from unipt_bench.results import ResultStore
from unipt_bench.runner import launch_runs
from unipt_bench.suite_file import load_suite

RUNS = {"bert/unipt", "bert/lora", "cnn/lora", "vit-clip/adapter"}


def figures(store: ResultStore) -> dict:
    return {key: (r.status, r.memory, r.params) for key, r in store.latest("smoke").items()}


@pytest.mark.slow
def test_two_lanes_store_the_same_figures_as_one(tmp_path) -> None:
    specs = [s for s in load_suite("smoke").with_mode("estimate") if f"{s.config}/{s.label}" in RUNS]
    one, two = ResultStore(tmp_path / "one"), ResultStore(tmp_path / "two")
    launch_runs(specs, one, settings=LaunchSettings("local", jobs=1))
    started = []
    results, _ = launch_runs(specs, two, settings=LaunchSettings("local", jobs=2), on_start=started.append)
    assert sorted(s.key for s in started) == sorted(s.key for s in specs) and len(results) == len(specs)
    assert figures(two) == figures(one) and len(figures(one)) == len(RUNS)


def test_cuda_lanes_each_see_their_own_gpu(monkeypatch) -> None:
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["3", "5"])
    envs = launch.lane_env("cuda", 2)
    assert [envs[k]["CUDA_VISIBLE_DEVICES"] for k in (0, 1)] == ["3", "5"]
    assert launch.default_jobs("cuda") == 2 and launch.default_jobs("cpu") == 1
    assert launch.lane_env("estimate", 1) == {0: {}}


def test_a_data_parallel_run_gets_a_lane_with_enough_gpus(monkeypatch) -> None:
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["0", "1", "2", "3", "4"])
    runs = [SimpleNamespace(mode="cuda", gpus=2), SimpleNamespace(mode="cuda", gpus=1)]
    per_run = launch.gpus_per_run(runs)
    assert per_run == 2 and launch.default_jobs("cuda", per_run) == 2
    envs = launch.lane_env("cuda", 2, per_run)
    assert [envs[k]["CUDA_VISIBLE_DEVICES"] for k in (0, 1)] == ["0,1", "2,3"]
    assert launch.lane_env("cuda", 3, 8)[2]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4"  # too few: every lane sees all


def test_an_error_in_a_lane_thread_reaches_the_caller_after_the_other_items() -> None:
    """A lane thread that fails (here: storing an outcome) never dies silently: the other lanes finish the
    remaining items, then the calling thread raises the error."""
    from unipt_bench.runner import Lane, serve_lanes

    finished = []

    def finish(item: int, out: int) -> None:
        if item == 2:
            raise OSError("the store is full")
        finished.append(out)

    with pytest.raises(OSError, match="the store is full"):
        serve_lanes([1, 2, 3, 4, 5], [Lane(isolate=False), Lane(isolate=False)], work=lambda lane, item: item * 10,
                    finish=finish, on_start=lambda item: None, interrupted=lambda item: None,
                    crashed=lambda item, exc: -1)
    assert sorted(finished) == [10, 30, 40, 50]
