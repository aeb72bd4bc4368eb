"""GPU-grade measurement without a GPU: NVML sampling and statistics through injected readers, the
refusals and errors of cuda mode, calibration up to where CUDA is needed, attribution, batch fitting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from unipt_bench.config import load_suite
from unipt_bench.errors import UserError
from unipt_bench.fit import fit_batch, parse_bytes
from unipt_bench.memory.nvml import NvmlTracker, PynvmlReader, Unavailable, normalise_uuid
from unipt_bench.profile import allocator_history, calibrate, check_gpu_idle, profile

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


def test_allocator_history_without_a_path_does_nothing() -> None:
    with allocator_history(None, 10):
        pass


def test_calibration_runs_the_estimate_and_forms_the_ratio(spec_factory) -> None:
    """Everything but the GPU measurement: the estimate of the same spec and the ratio to a measured peak."""
    spec = spec_factory("unipt", mode="cuda")
    estimate = profile(type(spec).from_dict({**spec.to_dict(), "mode": "estimate"}))
    peak = estimate["memory"]["memtracker_fake"]["peak_bytes"]
    cal = calibrate(spec, measured=peak * 2)
    assert cal["estimate_peak_bytes"] == peak
    assert cal["ratio"] == pytest.approx(0.5)


@pytest.mark.parametrize("spec", [s for s in load_suite("smoke").with_mode("estimate") if s.config in ("bert", "cnn")],
                         ids=lambda s: s.key)
def test_attribution_adds_up_to_the_peak(spec) -> None:
    from unipt_bench.errors import NotApplicable

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
    if spec.method in ("adapter", "lora", "lst", "unipt", "prompt"):
        assert owners["method"]["params"] == 4 * params["trainable_method_params"]
    else:
        assert owners["method"]["params"] == 0


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


def test_selfcheck_on_cpu_compares_estimate_and_cpu(tmp_path) -> None:
    from unipt_bench.results import ResultStore, RunResult
    from unipt_bench.runner import execute
    from unipt_bench.selfcheck import run_selfcheck

    def run(specs):
        return [RunResult(**execute(s.to_dict())) for s in specs]

    rows, tolerance = run_selfcheck(False, "unipt,lora", ResultStore(tmp_path), run)
    assert [r.key for r in rows] == ["smoke/bert/lora", "smoke/bert/unipt"]
    assert all(r.within(tolerance) and r.status == "ok" for r in rows)


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
