"""Exact live tensor bytes by category and phase, from PyTorch's MemTracker (torch.distributed._tools).

Works on fake tensors (`estimate` mode: paper-scale models with no GPU and no memory) and on real CPU
tensors (`cpu` mode). Two workarounds, both for torch 2.13-2.14: frozen parameters get a no-op grad
hook handle (MemTracker would hook every parameter and fail on frozen ones), and module stats are
reset after each step (a second iteration would otherwise raise).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from torch import nn, optim
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

from .base import CATEGORIES

TOTAL = "Total"
CATEGORY_OF = {
    _MemRefType.PARAM: "params",
    _MemRefType.BUFFER: "buffers",
    _MemRefType.GRAD: "grads",
    _MemRefType.ACT: "activations",
    _MemRefType.TEMP: "temporaries",
    _MemRefType.OPT: "optimizer_state",
    _MemRefType.OTH: "inputs",  # only the batch is registered as an external tensor
}


class _NoHook:
    def remove(self) -> None:
        pass


class PhasedMemTracker(MemTracker):
    """MemTracker that also keeps the peak snapshot of each phase and the peak of each step.

    It also replaces MemTracker's per-op scan of every module's stats (O(modules) per op, most of
    the tracing time on a 100-layer CNN) by a lookup of the few modules currently running.
    """

    def __init__(self) -> None:
        super().__init__()
        self._by_fqn: dict[str, list[Any]] = {}
        self._indexed = -1
        self.phase: str | None = None
        self.phase_peaks: dict[str, dict[str, int]] = {}
        self.step_peak = 0
        self.step_peaks: list[int] = []

    def current(self) -> dict[str, int]:
        """Live bytes by MemTracker category (summed over devices), with the total under "Total"."""
        out: dict[str, int] = {}
        for snap in self._curr_mem_snap.values():
            for key, value in snap.items():
                out[key] = out.get(key, 0) + value
        return out

    def note_peak(self) -> None:
        now = self.current()
        total = now.get(TOTAL, 0)
        self.step_peak = max(self.step_peak, total)
        if self.phase is not None and total > self.phase_peaks.get(self.phase, {}).get(TOTAL, -1):
            self.phase_peaks[self.phase] = deepcopy(now)

    def _update_peak_stats(self, peak_state: Any) -> None:
        """Called by MemTracker after every op; same updates as the original, for active modules only."""
        if len(self.memory_tracking) != self._indexed:
            self._by_fqn = {}
            for stats in self.memory_tracking.values():
                self._by_fqn.setdefault(stats.mod_fqn, []).append(stats)
            self._indexed = len(self.memory_tracking)
        current = self._curr_mem_snap
        for fqn in self._mod_tracker.parents:
            for stats in self._by_fqn.get(fqn, ()):
                if peak_state in stats.snapshots:
                    for dev, snap in current.items():
                        if stats.local_peak.get(dev, 0) < snap[TOTAL]:
                            stats.local_peak[dev] = snap[TOTAL]
                            stats.snapshots[peak_state][-1][dev] = deepcopy(snap)
        for dev, snap in current.items():
            if self._peak_mem.get(dev, 0) < snap[TOTAL]:
                self._peak_mem[dev] = snap[TOTAL]
                self._peak_mem_snap[dev] = deepcopy(snap)
        self.note_peak()


def by_category(snapshot: dict[Any, int]) -> dict[str, int]:
    cats = dict.fromkeys(CATEGORIES, 0)
    for key, value in snapshot.items():
        if key != TOTAL:
            cats[CATEGORY_OF[key]] += value
    return cats


class TensorMemoryTracker:
    """Tracker over MemTracker; `counter` says whether it saw fake or real tensors."""

    def __init__(self, model: nn.Module, optimizer: optim.Optimizer, inputs: list, counter: str) -> None:
        self.counter = counter
        self.tracker = PhasedMemTracker()
        for p in model.parameters():
            if not p.requires_grad:  # MemTracker cannot hook a frozen parameter
                self.tracker._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
        self.tracker.track_external(model, optimizer, *inputs)

    def __enter__(self) -> TensorMemoryTracker:
        self.tracker.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tracker.__exit__(*exc)

    def mark(self, phase: str) -> None:
        if phase == "forward":  # each forward (step or micro-batch) is a new MemTracker iteration
            self.tracker.reset_mod_stats()
        self.tracker.phase = phase
        self.tracker.note_peak()

    def end_step(self) -> None:
        self.tracker.step_peaks.append(self.tracker.step_peak)
        self.tracker.step_peak = 0
        self.tracker.phase = None

    def result(self) -> dict[str, Any]:
        peak = {}
        for snap in self.tracker.get_tracker_snapshot("peak").values():
            for key, value in snap.items():
                peak[key] = peak.get(key, 0) + value
        return {
            "counter": self.counter,
            "peak_bytes": peak.get(TOTAL, 0),
            "by_category": by_category(peak),
            "by_phase": {
                phase: {"peak_bytes": snap.get(TOTAL, 0), "by_category": by_category(snap)}
                for phase, snap in self.tracker.phase_peaks.items()
            },
            "step_peak_bytes": list(self.tracker.step_peaks),
        }
