"""GPU-grade measurement without a GPU: NVML sampling and statistics through injected readers, the
refusals and errors of cuda mode, calibration up to where CUDA is needed, attribution, batch fitting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from unipt_bench.errors import UserError
from unipt_bench.fit import fit_batch, parse_bytes
from unipt_bench.memory.nvml import NvmlTracker, PynvmlReader, Unavailable, normalise_uuid
from unipt_bench.profile import allocator_history, calibrate, check_gpu_idle, profile
from unipt_bench.suite_file import load_suite

from .helpers import slow_except

NO_GPU = not torch.cuda.is_available()


class ScriptedReader:
    """Device and process figures from lists (the last value repeats)."""

    def __init__(self, device: list[int], process: list[int] | None) -> None:
        self.device, self.process = list(device), None if process is None else list(process)

    def device_used(self) -> int:
        return self.device.pop(0) if len(self.device) > 1 else self.device[0]

    def process_used(self) -> int:
        if self.process is None:
            raise Unavailable("the driver reports no per-process memory")
        return self.process.pop(0) if len(self.process) > 1 else self.process[0]


def test_nvml_peaks_per_phase_from_samples() -> None:
    tracker = NvmlTracker(ScriptedReader([100, 300, 200, 500, 400], [10, 30, 20, 50, 40]))
    tracker.sample()  # phase "setup"
    tracker.mark("forward")
    tracker.sample()
    tracker.sample()
    tracker.mark("backward")
    tracker.sample()
    tracker.sample()
    result = tracker.result()
    assert result["available"] and result["samples"] == 5
    assert result["device_used_peak_bytes"] == 500 and result["device_used_start_bytes"] == 100
    assert result["process_used_peak_bytes"] == 50
    assert result["by_phase"]["forward"] == {"device_used_peak_bytes": 300, "process_used_peak_bytes": 30}
    assert result["by_phase"]["backward"] == {"device_used_peak_bytes": 500, "process_used_peak_bytes": 50}


def test_nvml_sampler_thread_samples_at_enter_and_exit() -> None:
    reader = ScriptedReader([7], [3])
    with NvmlTracker(reader, interval=0.001) as tracker:
        tracker.mark("forward")
    assert tracker.result()["samples"] >= 2  # one on entering, one on leaving, more in between
    assert tracker._thread is not None and not tracker._thread.is_alive()


def test_nvml_degrades_to_device_figures_with_a_reason() -> None:
    tracker = NvmlTracker(ScriptedReader([100, 200], None))
    tracker.sample()
    tracker.sample()
    result = tracker.result()
    assert result["device_used_peak_bytes"] == 200
    assert result["process_used_peak_bytes"] is None
    assert "per-process" in result["process_reason"]


def test_nvml_unavailable_is_reported_not_raised() -> None:
    def broken() -> ScriptedReader:
        raise Unavailable("NVML did not initialise: library not found")

    tracker = NvmlTracker(broken)
    with tracker:
        tracker.mark("forward")
        tracker.end_step()
    assert tracker.result() == {"counter": "nvml", "available": False,
                                "reason": "NVML did not initialise: library not found"}


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU path")
def test_real_nvml_reader_without_a_gpu_says_why() -> None:
    with pytest.raises(Unavailable, match="no CUDA device"):
        PynvmlReader()
    assert NvmlTracker().result()["available"] is False


def test_uuids_match_across_torch_and_nvml_spellings() -> None:
    assert normalise_uuid(b"GPU-1A2b") == normalise_uuid("1a2b") == "1a2b"


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU path")
def test_cuda_mode_without_a_gpu_is_a_clear_error(spec_factory) -> None:
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        check_gpu_idle(1 << 30)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        profile(spec_factory("unipt", mode="cuda"))


def test_allocator_history_records_and_dumps_only_with_a_path(monkeypatch) -> None:
    """Without a path the allocator's history is never switched on; with one it is recorded, dumped there
    and switched off again (the torch.cuda.memory calls are recorded instead of reaching a GPU)."""
    calls: list[tuple] = []
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", lambda **kw: calls.append(("record", kw)))
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", lambda path: calls.append(("dump", path)))
    with allocator_history(None, 10):
        pass
    assert calls == []
    with allocator_history("snap.pickle", 10):
        assert calls == [("record", {"max_entries": 10, "stacks": "python"})]
    assert calls[1:] == [("dump", "snap.pickle"), ("record", {"enabled": None})]


@pytest.mark.slow
def test_calibration_runs_the_estimate_and_forms_the_ratio(spec_factory) -> None:
    """Everything but the GPU measurement: the estimate of the same spec and the ratio to a measured peak."""
    spec = spec_factory("unipt", mode="cuda")
    estimate = profile(type(spec).from_dict({**spec.to_dict(), "mode": "estimate"}))
    peak = estimate["memory"]["memtracker_fake"]["peak_bytes"]
    cal = calibrate(spec, measured=peak * 2)
    rounded = cal["estimate_peak_bytes"]  # each storage in the allocator's 512-byte blocks
    assert peak < rounded < 1.5 * peak and rounded % 512 == 0
    assert cal["ratio"] == pytest.approx(rounded / (peak * 2))


def test_allocator_blocks_round_each_storage_up_to_512_bytes() -> None:
    from torch.distributed._tools.mem_tracker import _MemRefType, _WeakRefInfo

    from unipt_bench.memory.estimate import cuda_allocator_blocks

    def consumed(elements: int) -> int:
        return _WeakRefInfo(elements, 4, torch.device("cpu"), _MemRefType.ACT).mem_consumed

    with cuda_allocator_blocks():
        assert [consumed(n) for n in (0, 1, 128, 129, 1 << 20)] == [0, 512, 512, 1024, 4 << 20]
    assert consumed(1) == 4  # exact bytes again outside


@pytest.mark.parametrize("spec", slow_except([s for s in load_suite("smoke").with_mode("estimate")
                                              if s.config in ("bert", "cnn")], {"bert/unipt", "bert/adapter"}))
def test_attribution_adds_up_to_the_peak(spec) -> None:
    from unipt_bench.errors import NotApplicable
    from unipt_bench.methods import METHODS

    try:
        out = profile(spec)
    except NotApplicable:
        return
    mem = out["memory"]["memtracker_fake"]
    owners = mem["by_owner"]
    assert sum(sum(c.values()) for c in owners.values()) == mem["peak_bytes"]
    for cat in mem["by_category"]:
        assert sum(owners[o][cat] for o in owners) == mem["by_category"][cat]
    params = out["params"]
    assert owners["head"]["params"] == 4 * params["trainable_head_params"]  # heads train entirely
    if METHODS.get(spec.method).module_names:  # a method that adds modules owns what trains in its tower
        assert owners["method"]["params"] == 4 * params["trainable_method_params"]
    else:
        assert owners["method"]["params"] == 0


@pytest.mark.slow
def test_attribution_charges_backbone_activations_only_to_methods_that_backpropagate(spec_factory) -> None:
    def backbone_activations(method: str) -> int:
        return profile(spec_factory(method))["memory"]["memtracker_fake"]["by_owner"]["backbone"]["activations"]

    assert backbone_activations("bitfit") > 4 * backbone_activations("unipt")


@pytest.mark.parametrize(
    ("measure", "budget", "expected"),
    [
        (lambda b: 100 + 7 * b, 1000, 128),  # linear: (1000 - 100) // 7
        (lambda b: None if b > 50 else 10 * b * b, 10**9, 50),  # out of memory above 50
        (lambda b: 10 * b * b, 10_000, 31),  # not linear: the search still finds it
        (lambda b: None, 100, None),  # nothing fits
        (lambda b: 5, 100, 256),  # constant: up to the limit
    ],
)
def test_fit_batch(measure, budget: int, expected: int | None) -> None:
    result = fit_batch(measure, budget, start=16, limit=256)
    assert result.max_batch == expected
    fitting = [b for b, peak in result.probes if peak is not None and peak <= budget]
    assert max(fitting, default=None) == expected


def test_fit_records_the_line() -> None:
    result = fit_batch(lambda b: 1000 + 50 * b, 1 << 20, start=8, limit=1 << 20)
    assert result.fixed_bytes == 1000 and result.bytes_per_sample == 50
    assert result.max_batch == ((1 << 20) - 1000) // 50
    assert len(result.probes) == 4  # two for the line, the prediction and the one after it


@pytest.mark.parametrize(("text", "expected"), [("24GiB", 24 * 2**30), ("1.5 GB", 1_500_000_000), ("800MiB", 800 * 2**20),
                                                ("1024", 1024)])
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_parse_bytes_rejects_nonsense() -> None:
    with pytest.raises(UserError, match="as a size"):
        parse_bytes("lots")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unipt_bench.cli", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})


def test_selfcheck_gpu_without_a_gpu_exits_2_with_one_line() -> None:
    done = cli("selfcheck", "--gpu")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_selfcheck_on_cpu_compares_estimate_and_cpu(tmp_path) -> None:
    from unipt_bench.results import ResultStore, RunResult
    from unipt_bench.runner import execute
    from unipt_bench.selfcheck import run_selfcheck

    def run(specs):
        return [RunResult(**execute(s.to_dict())) for s in specs]

    rows, tolerance = run_selfcheck(False, "unipt,lora", ResultStore(tmp_path), run)
    assert [r.key for r in rows] == ["smoke/bert/lora", "smoke/bert/unipt"]
    assert all(r.within(tolerance) and r.status == "ok" for r in rows)


@pytest.mark.slow
def test_fit_command_in_estimate_mode(tmp_path) -> None:
    done = cli("fit", "--suite", "smoke", "--budget", "4MiB", "--methods", "unipt-pooled", "--out", str(tmp_path),
               "--limit", "64")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "max batch" in line]
    assert len(lines) == 1 and "video/unipt-pooled" in lines[0] and "/sample" in lines[0]
    (path,) = (tmp_path / "_fits" / "smoke" / "video").glob("unipt-pooled.estimate.*.json")
    record = json.loads(path.read_text())
    assert record["budget_bytes"] == 4 * 2**20 and record["max_batch"] >= 1
    peaks = {p["batch"]: p["peak_bytes"] for p in record["probes"]}
    assert peaks[record["max_batch"]] <= record["budget_bytes"]
    assert record["max_batch"] == 64 or peaks.get(record["max_batch"] + 1, 2**62) > record["budget_bytes"]


@pytest.mark.slow
def test_calibration_can_leave_the_cublas_workspace_out(spec_factory) -> None:
    spec = spec_factory("unipt", mode="cuda")
    peak = calibrate(spec, measured=1)["estimate_peak_bytes"]
    cal = calibrate(spec, measured=peak + 4096, workspace=4096)
    assert cal["library_workspace_bytes"] == 4096
    assert cal["ratio"] == pytest.approx(peak / (peak + 4096))
    assert cal["ratio_without_workspace"] == 1.0
    assert calibrate(spec, measured=peak)["ratio_without_workspace"] is None  # workspace unknown


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU path")
def test_library_workspace_is_unknown_without_a_gpu() -> None:
    from unipt_bench.memory.cuda import library_workspace_bytes

    assert library_workspace_bytes() is None


def test_selfcheck_rows_give_the_ratio_with_and_without_the_workspace() -> None:
    from unipt_bench.selfcheck import Comparison

    row = Comparison("s/c/m", estimate=97, measured=110, status="ok", workspace=10)
    assert row.ratio == pytest.approx(97 / 110) and not row.within(0.03)
    assert row.ratio_without_workspace == pytest.approx(0.97)
    assert Comparison("s/c/m", 97, 110, "ok").ratio_without_workspace is None


def test_overhead_is_the_ratio_of_medians() -> None:
    from unipt_bench.overhead import Overhead

    result = Overhead(untracked=[1.0, 2.0, 1.0], tracked=[1.01, 0.5, 1.02])
    assert (result.untracked_median, result.tracked_median) == (1.0, 1.01)
    assert result.percent == pytest.approx(1.0)


@pytest.mark.parametrize(("tracked", "within"), [(1.0, True), (1.0099, True), (1.0101, False), (1.5, False)])
def test_overhead_is_judged_against_the_one_percent_goal(tracked: float, within: bool) -> None:
    from unipt_bench.overhead import GOAL_PERCENT, Overhead

    assert GOAL_PERCENT == 1.0
    assert Overhead(untracked=[1.0] * 3, tracked=[tracked] * 3).within_goal is within


def test_overhead_interleaves_untracked_and_tracked_steps(spec_factory) -> None:
    """The overhead measurement up to where CUDA is needed: real steps, the cuda trackers with injected readers."""
    from tests.test_trackers import FakeStats, reading
    from unipt_bench.memory.base import Trackers
    from unipt_bench.memory.cuda import CudaTracker
    from unipt_bench.overhead import measure_overhead

    made: list[Trackers] = []

    def trackers() -> Trackers:
        cuda = CudaTracker(FakeStats([reading(100, 200, 100)] * 3))
        made.append(Trackers([cuda, NvmlTracker(ScriptedReader([5], [3]), interval=0.001)]))
        return made[-1]

    result = measure_overhead(spec_factory("unipt", mode="cpu"), rounds=3, trackers=trackers)
    assert len(result.untracked) == len(result.tracked) == 3 and len(made) == 3
    assert all(t > 0 for t in result.untracked + result.tracked)
    for each in made:  # each tracked round: a fresh set, one step of three phases, the sampler stopped
        cuda, nvml = each.results()["cuda_allocator"], each.results()["nvml"]
        assert cuda["step_peak_bytes"] == [100] and set(cuda["by_phase"]) == {"forward", "backward", "optimizer"}
        assert nvml["available"] and nvml["samples"] >= 2
    with pytest.raises(ValueError, match="real kernels"):
        measure_overhead(spec_factory("unipt", mode="estimate"))


def test_selfcheck_gpu_prints_both_ratios_and_the_overhead(monkeypatch) -> None:
    """The --gpu command's own work, with the GPU parts replaced: the table, the verdicts, the overhead line."""
    from click.testing import CliRunner

    from unipt_bench import cli as cli_module
    from unipt_bench import overhead, selfcheck
    from unipt_bench.overhead import Overhead
    from unipt_bench.selfcheck import Comparison

    rows = [Comparison("flickr30k/t5-bert/unipt", 1000, 1010, "ok", 8),
            Comparison("smoke/bert/unipt", 50, 100, "ok", 48)]
    monkeypatch.setattr(cli_module.selfcheck, "resolve_mode", lambda mode, trains=False: (mode, ""))
    monkeypatch.setattr(selfcheck, "run_selfcheck", lambda gpu, methods, store, run: (rows, 0.03))
    monkeypatch.setattr(overhead, "measure_overhead", lambda spec, rounds: Overhead([0.1] * rounds, [0.1005] * rounds))
    done = CliRunner().invoke(cli_module.cli, ["selfcheck", "--gpu", "--overhead-rounds", "4"])
    assert done.exit_code == 1, done.output  # one run misses the 3% goal
    lines = done.output.splitlines()
    assert "cuBLAS ws" in lines[0] and "w/o ws" in lines[0]
    assert lines[1].split()[-5:] == ["0.9901", "8", "B", "0.9980", "ok"]
    assert lines[2].split()[-5:] == ["0.5000", "48", "B", "0.9615", "MISS"]  # the verdict is on the raw ratio
    assert "1 of 2 within 3.0% of max_memory_allocated" in done.output
    assert "flickr30k/t5-bert/unipt" in lines[-2] and "overhead +0.50%" in lines[-1]
    assert lines[-1].endswith("(goal: at most 1%)  ok")


@pytest.mark.parametrize(("tracked", "exit_code", "verdict"), [(0.1005, 0, "ok"), (0.102, 1, "MISS")])
def test_selfcheck_gpu_fails_when_the_overhead_misses_its_goal(monkeypatch, tracked: float, exit_code: int,
                                                               verdict: str) -> None:
    """Every run within its ratio goal: the exit status is the overhead's verdict alone."""
    from click.testing import CliRunner

    from unipt_bench import cli as cli_module
    from unipt_bench import overhead, selfcheck
    from unipt_bench.overhead import Overhead
    from unipt_bench.selfcheck import Comparison

    rows = [Comparison("flickr30k/t5-bert/unipt", 1000, 1010, "ok", 8)]
    monkeypatch.setattr(cli_module.selfcheck, "resolve_mode", lambda mode, trains=False: (mode, ""))
    monkeypatch.setattr(selfcheck, "run_selfcheck", lambda gpu, methods, store, run: (rows, 0.03))
    monkeypatch.setattr(overhead, "measure_overhead", lambda spec, rounds: Overhead([0.1] * rounds, [tracked] * rounds))
    done = CliRunner().invoke(cli_module.cli, ["selfcheck", "--gpu", "--overhead-rounds", "4"])
    assert done.exit_code == exit_code, done.output
    assert done.output.splitlines()[-1].endswith(f"(goal: at most 1%)  {verdict}")



@pytest.mark.parametrize(("mode", "workers"), [("cpu", 4)])
def test_fit_probes_measured_runs_each_in_a_fresh_process(monkeypatch, tmp_path, mode: str, workers: int) -> None:
    """cpu and cuda probes each get their own worker process (nothing carried over, even after an
    out-of-memory probe), and no probe pays for a calibration estimate. (Estimate fits trace memory
    curves in the command's process: tests/test_curves.py.)"""
    from click.testing import CliRunner

    from unipt_bench import cli as cli_module
    from unipt_bench import runner
    from unipt_bench.results import RunResult

    made = []

    class CountingWorker:
        def __init__(self, env=None) -> None:
            made.append(self)
            self.closed, self.runs = False, []

        def run(self, spec, options=None, on_progress=None):
            assert not self.closed and options == {"calibrate": False}
            self.runs.append(spec.batch)
            memory = {"counter": "c", "peak_bytes": 1000 + 100 * spec.batch}
            result = RunResult(spec=spec.to_dict(), status="ok", digest=spec.digest(), started="", finished="",
                               memory={"memtracker_fake": memory, "memtracker_real": memory})
            return result.__dict__

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(runner, "Worker", CountingWorker)
    done = CliRunner().invoke(cli_module.cli, ["fit", "--suite", "smoke", "--budget", "1500", "--mode", mode,
                                               "--methods", "unipt-pooled", "--out", str(tmp_path), "--limit", "16"])
    assert done.exit_code == 0, done.output
    assert "max batch      5" in done.output  # (1500 - 1000) / 100
    assert len(made) == workers and sum(len(w.runs) for w in made) == 4 and all(w.closed for w in made)
