"""Checking the allocator replay against a GPU: replay the allocator's own recorded trace, compare segments.

`torch.cuda.memory._record_memory_history()` records every action of the real allocator; its snapshot
(`torch.cuda.memory._snapshot()`) holds the trace and the segments reserved at the end. Replaying the
trace's requests ("alloc", "free_completed") through allocator_replay.py must reproduce the segments the
real allocator created ("segment_alloc"), in order and size, and the segments it holds at the end; any
difference is a rule the replay gets wrong (benchmarks/allocator_check.py runs this on a GPU).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .allocator_replay import AllocatorSettings, CachingAllocator, OutOfMemory


def trace_of(snapshot: dict[str, Any], device: int = 0) -> list[dict[str, Any]]:
    traces = snapshot.get("device_traces") or []
    return traces[device] if device < len(traces) else []


def replay_trace(snapshot: dict[str, Any], settings: AllocatorSettings | None = None,
                 device: int = 0) -> dict[str, Any]:
    """Replay a snapshot's recorded requests; compare segment allocations and final segments with the real ones."""
    allocator = CachingAllocator(settings)
    created: list[int] = []  # sizes of the segments the replay creates, in order
    new_segment = allocator.new_segment

    def logged(pool: Any, size: int, retry: bool = False) -> Any:
        block = new_segment(pool, size, retry)
        if block:
            created.append(block.size)
        return block

    allocator.new_segment = logged  # type: ignore[method-assign]
    held: dict[int, tuple[Any, int]] = {}
    real_created: list[int] = []
    unknown_frees = 0
    for entry in trace_of(snapshot, device):
        action = entry.get("action")
        if action == "segment_alloc":
            real_created.append(entry["size"])
        elif action == "alloc":
            try:
                held[entry["addr"]] = (allocator.malloc(entry["size"]), entry["size"])
            except OutOfMemory:
                break
        elif action == "free_completed":
            if entry["addr"] in held:
                allocator.free(*held.pop(entry["addr"]))
            else:  # allocated before recording began: the replay cannot know it
                unknown_frees += 1
    real_final = Counter(s["total_size"] for s in snapshot.get("segments", []) if s.get("device", device) == device)
    replay_final = Counter(s["total_size"] for s in allocator.segment_list())
    return {
        "requests": sum(1 for e in trace_of(snapshot, device) if e.get("action") == "alloc"),
        "unknown_frees": unknown_frees,
        "segment_allocs_real": len(real_created),
        "segment_allocs_replayed": len(created),
        "segment_allocs_equal": created == real_created,
        "first_difference": first_difference(real_created, created),
        "final_segments_equal": real_final == replay_final,
        "reserved_real": sum(s["total_size"] for s in snapshot.get("segments", [])),
        "reserved_replayed": allocator.reserved.current,
        "max_reserved_replayed": allocator.reserved.peak,
        "max_allocated_replayed": allocator.allocated.peak,
    }


def first_difference(real: list[int], replayed: list[int]) -> dict[str, Any] | None:
    """Where two segment-size sequences first differ (index and both sizes), or None."""
    for i, (a, b) in enumerate(zip(real, replayed, strict=False)):
        if a != b:
            return {"index": i, "real": a, "replayed": b}
    if len(real) != len(replayed):
        i = min(len(real), len(replayed))
        return {"index": i, "real": real[i] if i < len(real) else None,
                "replayed": replayed[i] if i < len(replayed) else None}
    return None
