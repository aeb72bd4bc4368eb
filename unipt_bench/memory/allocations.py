"""Live bytes of every CPU allocation, from torch.profiler's memory events: a counter apart from the tensor tracker.

The profiler records each allocation and free of the CPU allocator, whoever makes it (an operator, a
kernel's scratch space, DDP's C++ reducer), so its running sum checks the estimate independently,
DDP's buckets included. It must start before the model is built: a tensor allocated earlier is unknown
to it. One blind spot: it records the frees of the threads it profiles only. A collective's staging
buffer (the flat copy `dist._broadcast_coalesced` makes of parameters and buffers to broadcast them) may
lose its last reference on the communication library's worker thread; such a buffer is taken as freed
when the broadcast call returns, the latest it can be needed.
"""

from __future__ import annotations

import bisect
from contextlib import ExitStack
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

COUNTER = "cpu_allocations"
STAGING = "unipt::broadcast_coalesced"  # the profiler range around each DDP broadcast


def staged(broadcast: Any) -> Any:
    """`dist._broadcast_coalesced` inside a profiler range, so the counter knows its staging buffers."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(STAGING):
            return broadcast(*args, **kwargs)

    return wrapped


class AllocationCounter:
    """Profiles CPU allocations while entered; `result()` gives the peak of live bytes."""

    counter = COUNTER

    def __enter__(self) -> AllocationCounter:
        self._stack = ExitStack()
        if dist.is_available():
            self._stack.enter_context(mock.patch.object(dist, "_broadcast_coalesced", staged(dist._broadcast_coalesced)))
        self.profiler = self._stack.enter_context(profile(activities=[ProfilerActivity.CPU], profile_memory=True))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def events(self) -> list[tuple[int, int, int, int]]:
        """(time ns, order, bytes: + allocated / - freed, address) of every allocation and free, in time order;
        an allocation made during a broadcast gets a free at the broadcast's end (ignored when already freed).

        Broadcasts are found by time, not by nesting: under a tensor-tracking dispatch mode the profiler's
        event tree does not always nest an operator under the range that called it."""
        allocations: list[tuple[int, int, int]] = []
        staging: list[tuple[int, int]] = []
        pending = list(self.profiler.profiler.kineto_results.experimental_event_tree())
        while pending:
            event = pending.pop()
            fields = event.extra_fields
            if isinstance(fields, torch._C._profiler._ExtraFields_Allocation):
                allocations.append((event.start_time_ns, fields.alloc_size, fields.ptr))
            elif event.name == STAGING:
                staging.append((event.start_time_ns, event.end_time_ns))
            pending.extend(event.children)
        staging.sort()
        starts = [begin for begin, _ in staging]
        out: list[tuple[int, int, int, int]] = []
        for when, nbytes, address in sorted(allocations):
            out.append((when, len(out), nbytes, address))
            k = bisect.bisect_right(starts, when) - 1
            if nbytes > 0 and k >= 0 and when <= staging[k][1]:
                out.append((staging[k][1], len(out), 0, address))  # 0: "freed by now, if not already"
        return sorted(out)

    def result(self) -> dict[str, Any]:
        live: dict[int, int] = {}  # address -> bytes
        total = peak = 0
        for _, _, nbytes, address in self.events():
            if nbytes > 0:
                total -= live.pop(address, 0)  # an address reused: its free happened on an unprofiled thread
                live[address] = nbytes
                total += nbytes
                peak = max(peak, total)
            else:
                total -= live.pop(address, 0)
        return {"counter": COUNTER, "peak_bytes": peak,
                "source": "torch.profiler memory events (profile_memory=True), every CPU allocation from model build on"}


CONVOLUTIONS_NOTE = ("the model has convolutions: on the CPU, oneDNN's convolution kernels allocate weight-sized "
                     "buffers that no tensor tracker sees (this counter includes them, the tensor tracker does not)")


def beyond_tensors(counted: int, tensors: int | None, model: nn.Module) -> dict[str, Any]:
    """How far the allocator's peak lies above the tensor tracker's, and why, for a result's figures.

    Arrays that numpy allocated (a batch's region features read from .npy files) are outside both."""
    if tensors is None:
        return {}
    out: dict[str, Any] = {"beyond_tensor_tracker_bytes": counted - tensors}
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        out["note"] = CONVOLUTIONS_NOTE
    return out
