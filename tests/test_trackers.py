"""Trackers: CudaTracker through an injected stats reader, p99, the Trackers fan-out, RssTracker."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn

from unipt_bench.memory.allocations import AllocationCounter
from unipt_bench.memory.base import Trackers
from unipt_bench.memory.cpu import RssTracker
from unipt_bench.memory.cuda import CudaTracker, p99
from unipt_bench.memory.estimate import TensorMemoryTracker


def reading(allocated: int, reserved: int, active: int, retries: int = 0, ooms: int = 0) -> dict[str, int]:
    return {"max_memory_allocated": allocated, "max_memory_reserved": reserved, "active_bytes_peak": active,
            "num_alloc_retries": retries, "num_ooms": ooms}


class FakeStats:
    """Scripted allocator: each read() returns the next dict; reset_peaks() is counted."""

    def __init__(self, readings: list[dict[str, int]]) -> None:
        self.readings = list(readings)
        self.resets = 0
        self.reads = 0

    def reset_peaks(self) -> None:
        self.resets += 1

    def read(self) -> dict[str, int]:
        self.reads += 1
        return self.readings.pop(0)


# One reading per phase, read when the phase closes: (forward, backward, optimizer) x 3 steps.
# num_alloc_retries / num_ooms are cumulative allocator counters, as torch reports them.
SCRIPT = [
    reading(100, 200, 110), reading(300, 400, 310), reading(250, 400, 260),              # step 1: peak 300
    reading(120, 220, 130), reading(280, 420, 290), reading(350, 500, 360, retries=1),   # step 2: peak 350
    reading(90, 200, 95), reading(310, 400, 320, retries=2), reading(200, 400, 210, retries=3, ooms=1),  # 310
]


def run_steps(tracker, steps: int = 3) -> None:
    with tracker:
        for _ in range(steps):
            tracker.mark("forward")
            tracker.mark("backward")
            tracker.mark("optimizer")
            tracker.end_step()


@pytest.fixture
def cuda_result():
    stats = FakeStats(SCRIPT)
    tracker = CudaTracker(stats)
    run_steps(tracker)
    return stats, tracker.result()


def test_cuda_tracker_resets_before_each_phase_and_reads_at_its_end(cuda_result):
    """One reset on entry and one per phase; one read per closed phase, none more."""
    stats, _ = cuda_result
    assert stats.resets == 1 + 3 * 3
    assert stats.reads == 3 * 3
    assert stats.readings == []


def test_cuda_tracker_phase_maxima(cuda_result):
    """Each phase keeps the maximum of each figure over the steps."""
    _, result = cuda_result
    assert result["by_phase"] == {
        "forward": {"max_memory_allocated": 120, "max_memory_reserved": 220, "active_bytes_peak": 130},
        "backward": {"max_memory_allocated": 310, "max_memory_reserved": 420, "active_bytes_peak": 320},
        "optimizer": {"max_memory_allocated": 350, "max_memory_reserved": 500, "active_bytes_peak": 360},
    }


def test_cuda_tracker_step_peaks_and_stats(cuda_result):
    _, result = cuda_result
    assert result["counter"] == "cuda_allocator"
    assert result["step_peak_bytes"] == [300, 350, 310]
    assert result["step_stats"] == {"max": 350, "mean": 320.0, "p99": 350}
    assert result["peak_bytes"] == 350
    assert result["max_memory_reserved"] == 500


def test_cuda_tracker_reports_the_last_retry_and_oom_counts(cuda_result):
    """Retries and OOMs are cumulative counters: the last reading is the total."""
    _, result = cuda_result
    assert (result["num_alloc_retries"], result["num_ooms"]) == (3, 1)


def test_cuda_tracker_closes_an_open_phase_on_exit():
    """A phase still open when the block ends (no end_step) is read on exit."""
    stats = FakeStats([reading(10, 20, 11), reading(40, 50, 41)])
    tracker = CudaTracker(stats)
    with tracker:
        tracker.mark("forward")
        tracker.mark("backward")
    result = tracker.result()
    assert stats.reads == 2
    assert result["by_phase"]["backward"]["max_memory_allocated"] == 40
    assert result["peak_bytes"] == 40
    assert result["step_peak_bytes"] == []


def test_cuda_tracker_without_steps_reports_zeros():
    tracker = CudaTracker(FakeStats([]))
    with tracker:
        pass
    result = tracker.result()
    assert result["peak_bytes"] == 0
    assert result["by_phase"] == {}
    assert result["step_stats"] == {"max": 0, "mean": 0, "p99": 0}
    assert (result["num_alloc_retries"], result["num_ooms"]) == (0, 0)


def test_cuda_tracker_counts_evaluation_in_the_peak_but_not_in_the_steps():
    """An evaluation between two steps (validation) has its own phase; step figures stay training-only."""
    stats = FakeStats([*SCRIPT[:3], reading(900, 1000, 910), *SCRIPT[3:6]])
    tracker = CudaTracker(stats)
    with tracker:
        for step in range(2):
            for phase in ("forward", "backward", "optimizer"):
                tracker.mark(phase)
            tracker.end_step()
            if step == 0:
                tracker.mark("evaluation")
    result = tracker.result()
    assert result["step_peak_bytes"] == [300, 350]
    assert result["by_phase"]["evaluation"] == {"max_memory_allocated": 900, "max_memory_reserved": 1000,
                                               "active_bytes_peak": 910}
    assert result["peak_bytes"] == 900  # what the run needed to fit, validation included
    assert [t["phase"] for t in result["trace"]][3] == "evaluation"
    assert stats.resets == 1 + 7


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([7], 7),
        ([3, 1, 2], 3),
        ([5, 5, 5, 5], 5),
        (list(range(1, 101)), 99),  # nearest rank: the 99th of 100
        (list(range(100, 0, -1)), 99),  # order does not matter
        (list(range(1000)), 989),  # index round(0.99 * 999) = 989
    ],
)
def test_p99(values, expected):
    assert p99(values) == expected


# ---------------------------------------------------------------- Trackers


class Recorder:
    """A tracker that logs what it was asked to do into a shared list."""

    def __init__(self, counter: str, log: list) -> None:
        self.counter = counter
        self.log = log

    def __enter__(self):
        self.log.append((self.counter, "enter"))
        return self

    def __exit__(self, *exc):
        self.log.append((self.counter, "exit"))

    def mark(self, phase: str) -> None:
        self.log.append((self.counter, phase))

    def end_step(self) -> None:
        self.log.append((self.counter, "end_step"))

    def result(self):
        return {"counter": self.counter, "events": sum(1 for c, _ in self.log if c == self.counter)}


def test_trackers_fan_out_in_order():
    """Every call reaches every tracker in list order; exits unwind in reverse."""
    log: list = []
    with Trackers([Recorder("a", log), Recorder("b", log)]) as trackers:
        trackers.mark("forward")
        trackers.end_step()
    assert log == [
        ("a", "enter"), ("b", "enter"),
        ("a", "forward"), ("b", "forward"),
        ("a", "end_step"), ("b", "end_step"),
        ("b", "exit"), ("a", "exit"),
    ]


def test_trackers_collect_results_by_counter():
    """results() maps each tracker's counter to its result, here a scripted CudaTracker beside a recorder."""
    log: list = []
    cuda = CudaTracker(FakeStats(SCRIPT))
    trackers = Trackers([Recorder("rec", log), cuda])
    run_steps(trackers)
    results = trackers.results()
    assert sorted(results) == ["cuda_allocator", "rec"]
    assert results["rec"] == {"counter": "rec", "events": 2 + 3 * 4}
    assert results["cuda_allocator"]["step_peak_bytes"] == [300, 350, 310]


def test_trackers_exit_even_when_the_steps_raise():
    log: list = []
    with pytest.raises(RuntimeError, match="step failed"):
        with Trackers([Recorder("a", log), Recorder("b", log)]):
            raise RuntimeError("step failed")
    assert log[-2:] == [("b", "exit"), ("a", "exit")]


# ---------------------------------------------------------------- RssTracker


def test_rss_tracker_reports_peaks_around_the_steps():
    """Peak RSS after the block is at least the peak before it, and both are real (positive) byte counts."""
    tracker = RssTracker()
    with Trackers([tracker]) as trackers:
        trackers.mark("forward")
        block = bytearray(8 << 20)  # touch some memory inside the tracked block
        block[::4096] = b"x" * len(block[::4096])
        trackers.end_step()
    result = trackers.results()["rss"]
    assert result["counter"] == "rss"
    assert result["peak_bytes"] >= result["peak_before_steps_bytes"] > 0
    assert isinstance(result["peak_bytes"], int)


def test_cuda_stats_read_the_allocators_nested_counters_without_synchronising(monkeypatch):
    """CudaStats against torch.cuda's own layout (patched in: no GPU here); it must never synchronise."""
    import torch

    from unipt_bench.memory.cuda import CudaStats

    def stat(current: int, peak: int) -> dict[str, dict[str, int]]:
        fields = {"current": current, "peak": peak, "allocated": 0, "freed": 0}
        return {"all": fields, "small_pool": dict(fields), "large_pool": dict(fields)}

    nested = {"allocated_bytes": stat(10, 300), "reserved_bytes": stat(20, 512), "active_bytes": stat(10, 310),
              "num_alloc_retries": 2, "num_ooms": 1}
    calls = []
    monkeypatch.setattr(torch.cuda, "memory_stats_as_nested_dict", lambda device: calls.append(device) or nested)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("the tracker synchronised the GPU"))
    stats = CudaStats(device=3)
    stats.reset_peaks()
    assert stats.read() == reading(300, 512, 310, retries=2, ooms=1)
    assert calls == [("reset", 3), 3]


# ---------------------------------------------------------------- the tensor tracker changes nothing it measures


class Product(nn.Module):
    """a * b: a module with two inputs that need gradients, which backward reaches at different times."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class Branches(nn.Module):
    """x -> a -> (a, second(a)) -> a * second(a): narrow layers on many rows, so backward's bytes are the
    gradients of the activations [4096, 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 16)
        self.second = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16))
        self.product = Product()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.first(x)  # [4096, 16]
        return self.product(a, self.second(a))


def backward_peak(tracked: bool) -> int:
    """Peak of the bytes backward allocates and still holds, counted from the CPU allocator by torch.profiler."""
    torch.manual_seed(0)
    model, x = Branches(), torch.randn(4096, 16)
    optimizer = torch.optim.AdamW(model.parameters())
    tracker = TensorMemoryTracker(model, optimizer, [x], "real", owner_of=lambda path: "head") if tracked else None
    with tracker or nullcontext():
        loss = model(x).sum()
        with AllocationCounter() as counter:
            loss.backward()
    return counter.result()["peak_bytes"]


def test_the_tensor_tracker_holds_no_byte_the_untracked_step_frees() -> None:
    """Its module hooks must not keep gradients alive: a backward hook in mode "all" on Product's inputs
    would keep b's gradient [4096, 16] until a's arrives, through the second branch's whole backward."""
    assert backward_peak(tracked=True) == backward_peak(tracked=False)


def test_an_evaluation_of_several_batches_is_tracked() -> None:
    """Validation and test run many batches inside one "evaluation" phase: each forward of the model is a new
    MemTracker iteration (MemTracker raises on a second root forward without a reset)."""
    import torch
    from torch import nn

    from unipt_bench.memory.estimate import TensorMemoryTracker

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters())
    tracker = TensorMemoryTracker(model, optimizer, [], "memtracker_real")
    with tracker, torch.no_grad():
        tracker.mark("evaluation")
        for _ in range(3):
            model(torch.randn(4, 8))
    assert tracker.result()["by_phase"]["evaluation"]["peak_bytes"] > 0
