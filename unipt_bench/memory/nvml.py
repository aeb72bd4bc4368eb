"""NVML sampler: the GPU's used memory and this process's own GPU memory, read by a background thread.

What the driver sees (allocator caches, CUDA context, other processes) complements the allocator's
own counters. The NVML device is matched to the torch device by UUID, so a reordering by
CUDA_VISIBLE_DEVICES cannot mislabel it. Where per-process figures are unavailable (containers often
hide other PIDs, or the driver reports no per-process usage) the sampler keeps device-only figures and
records why; with no GPU or no NVML it reports "unavailable" with the reason and never fails a run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .registry import TrackerContext, register_tracker


class Unavailable(Exception):
    """A figure NVML cannot give here; the message says why."""


class MemoryReader(Protocol):
    def device_used(self) -> int: ...

    def process_used(self) -> int:  # raises Unavailable
        ...


def normalise_uuid(uuid: object) -> str:
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    return text.lower().removeprefix("gpu-")


class PynvmlReader:
    """Reads one device through nvidia-ml-py, the one whose UUID matches torch's device `index`
    (default: torch's current device)."""

    def __init__(self, index: int | None = None) -> None:
        try:
            import pynvml
            import torch
        except ImportError as exc:
            raise Unavailable(f"nvidia-ml-py is not installed ({exc})") from None
        if not torch.cuda.is_available():
            raise Unavailable("no CUDA device is visible to torch")
        index = torch.cuda.current_device() if index is None else index
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise Unavailable(f"NVML did not initialise: {exc}") from None
        wanted = normalise_uuid(torch.cuda.get_device_properties(index).uuid)
        self.nvml = pynvml
        self.handle = None
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            if normalise_uuid(pynvml.nvmlDeviceGetUUID(handle)) == wanted:
                self.handle = handle
                break
        if self.handle is None:
            raise Unavailable(f"no NVML device has torch device {index}'s UUID {wanted}")
        self.pid = os.getpid()

    def device_used(self) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def process_used(self) -> int:
        try:
            processes = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except self.nvml.NVMLError as exc:
            raise Unavailable(f"NVML lists no processes here: {exc}") from None
        for proc in processes:
            if proc.pid == self.pid:
                if proc.usedGpuMemory is None:
                    raise Unavailable("the driver reports no per-process memory (common in containers)")
                return int(proc.usedGpuMemory)
        raise Unavailable(f"this process (pid {self.pid}) is not in NVML's list (a container's PID namespace?)")


class NvmlTracker:
    """Samples every `interval` seconds between enter and exit; peaks overall, per phase and per step."""

    counter = "nvml"

    def __init__(self, reader: Callable[[], MemoryReader] | MemoryReader | None = None, interval: float = 0.01) -> None:
        self.interval = interval
        self.reason: str | None = None
        self.process_reason: str | None = None
        self.reader: MemoryReader | None = None
        try:
            self.reader = reader() if callable(reader) else (reader or PynvmlReader())
        except Unavailable as exc:
            self.reason = str(exc)
        self.phase = "setup"
        self.step = 0
        self.samples: list[tuple[float, str, int, int, int | None]] = []  # (time, phase, step, device, process)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        assert self.reader is not None
        device = self.reader.device_used()
        process = None
        if self.process_reason is None:
            try:
                process = self.reader.process_used()
            except Unavailable as exc:
                self.process_reason = str(exc)
        self.samples.append((time.perf_counter(), self.phase, self.step, device, process))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> NvmlTracker:
        if self.reader is not None:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.sample()

    def mark(self, phase: str) -> None:
        self.phase = phase

    def end_step(self) -> None:
        self.step += 1

    def result(self) -> dict[str, Any]:
        if self.reader is None:
            return {"counter": self.counter, "available": False, "reason": self.reason}
        by_phase: dict[str, dict[str, int | None]] = {}
        for _, phase, _, device, process in self.samples:
            seen = by_phase.setdefault(phase, {"device_used_peak_bytes": 0, "process_used_peak_bytes": None})
            seen["device_used_peak_bytes"] = max(seen["device_used_peak_bytes"] or 0, device)
            if process is not None:
                seen["process_used_peak_bytes"] = max(seen["process_used_peak_bytes"] or 0, process)
        processes = [s[4] for s in self.samples if s[4] is not None]
        return {
            "counter": self.counter,
            "available": True,
            "interval_s": self.interval,
            "samples": len(self.samples),
            "device_used_peak_bytes": max(s[3] for s in self.samples),
            "device_used_start_bytes": self.samples[0][3],
            "process_used_peak_bytes": max(processes) if processes and self.process_reason is None else None,
            "process_reason": self.process_reason,
            "by_phase": by_phase,
            "peak_bytes": max(s[3] for s in self.samples),
        }


@register_tracker("nvml", {"cuda"}, description="device and process memory sampled by NVML every --nvml-interval",
                  default=True)
def nvml(context: TrackerContext) -> NvmlTracker:
    return NvmlTracker(interval=context.nvml_interval)
