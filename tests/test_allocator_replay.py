"""The caching-allocator replay on crafted allocation sequences, each expected figure derived by hand from
the allocator's rules (c10/cuda/CUDACachingAllocator.cpp; the function each case exercises is named)."""

from __future__ import annotations

import pytest

from unipt_bench.errors import UserError
from unipt_bench.memory.allocator_replay import (
    AllocatorSettings,
    CachingAllocator,
    OutOfMemory,
    allocation_size,
    replay,
    round_size,
    roundup_power2_next_division,
)

KiB, MiB = 1 << 10, 1 << 20
DEFAULT = AllocatorSettings()


def test_rounding_follows_round_size():
    """`round_size`: 512 B minimum, then multiples of 512 B; `roundup_power2_next_division`'s own example."""
    assert round_size(1, DEFAULT) == 512
    assert round_size(513, DEFAULT) == 1024
    assert round_size(MiB + 1, DEFAULT) == MiB + 512
    assert roundup_power2_next_division(1200, 4) == 1280  # the example in the allocator's comment
    assert roundup_power2_next_division(1024, 4) == 1024  # a power of 2 stays
    four = AllocatorSettings.parse("roundup_power2_divisions:4")
    assert round_size(1200 * KiB, four) == 1280 * KiB  # between 1 and 2 MiB in steps of 256 KiB
    assert round_size(1200, four) == 1536  # not above 512 x 4 B: plain 512 B rounding


def test_segment_sizes_follow_get_allocation_size():
    """`get_allocation_size`: 2 MiB for small requests, 20 MiB up to 10 MiB, else rounded up to 2 MiB."""
    assert allocation_size(512) == 2 * MiB
    assert allocation_size(MiB) == 2 * MiB
    assert allocation_size(MiB + 512) == 20 * MiB
    assert allocation_size(10 * MiB - 512) == 20 * MiB
    assert allocation_size(10 * MiB) == 10 * MiB
    assert allocation_size(11 * MiB + 512) == 12 * MiB


def test_small_and_large_pools_split_at_one_mebibyte():
    """`get_pool` and `should_split`: 1 MiB is small (a 2 MiB segment, the rest kept); 1 MiB + 1 B is large
    (a 20 MiB segment, split because more than 1 MiB remains); a small request reuses the small remainder."""
    alloc = CachingAllocator()
    alloc.malloc(MiB)
    assert (alloc.reserved.current, alloc.allocated.current) == (2 * MiB, MiB)
    alloc.malloc(MiB + 1)
    assert (alloc.reserved.current, alloc.allocated.current) == (22 * MiB, 2 * MiB + 512)
    alloc.malloc(100)  # served from the small segment's 1 MiB remainder
    assert (alloc.reserved.current, alloc.allocated.current) == (22 * MiB, 2 * MiB + 1024)
    sizes = sorted((s["pool"], s["total_size"]) for s in alloc.segment_list())
    assert sizes == [("large", 20 * MiB), ("small", 2 * MiB)]


def test_a_split_keeps_its_remainder_only_above_one_mebibyte():
    """`should_split` (large pool): a 5 MiB request splits a 20 MiB segment (15 MiB remains and then serves
    a 15 MiB request); an 11 MiB + 1 B request takes a 12 MiB segment whole (under 1 MiB would remain)."""
    alloc = CachingAllocator()
    alloc.malloc(5 * MiB)
    alloc.malloc(15 * MiB)
    assert (alloc.reserved.current, alloc.allocated.current) == (20 * MiB, 20 * MiB)
    alloc.malloc(11 * MiB + 1)
    assert (alloc.reserved.current, alloc.allocated.current) == (32 * MiB, 32 * MiB)


def test_a_freed_block_is_reused_by_best_fit_and_merged_with_free_neighbours():
    """`get_free_block` (smallest block that fits) and `free_block`/`try_merge_blocks`."""
    alloc = CachingAllocator()
    a = alloc.malloc(30 * MiB)
    alloc.free(a, 30 * MiB)
    alloc.malloc(29 * MiB)  # the cached 30 MiB block fits; 1 MiB would remain: not split
    assert (alloc.reserved.current, alloc.allocated.current) == (30 * MiB, 30 * MiB)
    first, second = alloc.malloc(2 * MiB), alloc.malloc(3 * MiB)  # both from one 20 MiB segment
    assert alloc.reserved.current == 50 * MiB
    alloc.free(first, 2 * MiB)
    alloc.free(second, 3 * MiB)  # merges with the free block before it and the 15 MiB after it
    assert [s["blocks"] for s in alloc.segment_list() if s["total_size"] == 20 * MiB] == [
        [{"size": 20 * MiB, "allocated": False}]]


def test_a_too_large_request_frees_the_cache_and_retries_then_runs_out_of_memory():
    """`malloc`'s fallbacks: cudaMalloc fails, `release_cached_blocks` frees the whole cached segment,
    `alloc_block` retries (num_alloc_retries); when nothing is left to free, out of memory."""
    alloc = CachingAllocator(device_bytes=100 * MiB)
    alloc.free(alloc.malloc(60 * MiB), 60 * MiB)
    alloc.malloc(70 * MiB)  # 60 + 70 > 100: the cached 60 MiB segment goes, then the retry succeeds
    assert (alloc.reserved.current, alloc.num_alloc_retries, alloc.reserved.peak) == (70 * MiB, 1, 70 * MiB)
    with pytest.raises(OutOfMemory):
        alloc.malloc(50 * MiB)
    assert alloc.num_ooms == 1


def test_max_split_size_keeps_oversize_blocks_whole():
    """`get_free_block` with max_split_size_mb:40: an oversize cached block never serves a small request
    and serves an oversize one only within max_non_split_rounding (20 MiB) of its size."""
    alloc = CachingAllocator(AllocatorSettings.parse("max_split_size_mb:40"))
    alloc.free(alloc.malloc(50 * MiB), 50 * MiB)
    alloc.malloc(20 * MiB)  # the 50 MiB block is oversize: a new 20 MiB segment
    assert alloc.reserved.current == 70 * MiB
    alloc.malloc(45 * MiB)  # 50 < 45 + 20: the oversize block serves it whole
    assert (alloc.reserved.current, alloc.allocated.current) == (70 * MiB, 70 * MiB)


def test_release_available_cached_blocks_frees_oversize_segments_first():
    """`release_available_cached_blocks`: with max_split_size set, a failed cudaMalloc frees oversize cached
    segments (here the largest ones, none alone covering the request) without a retry being counted."""
    alloc = CachingAllocator(AllocatorSettings.parse("max_split_size_mb:20"), device_bytes=100 * MiB)
    a, b = alloc.malloc(30 * MiB), alloc.malloc(40 * MiB)
    alloc.free(a, 30 * MiB)
    alloc.free(b, 40 * MiB)
    alloc.malloc(60 * MiB)  # no cached block serves it, and 70 + 60 > 100 fails cudaMalloc
    # key = max(60, 20) MiB: no cached block is that large, so the largest oversize ones go until 60 MiB
    # are released (40 MiB, then 30 MiB); then cudaMalloc of 60 MiB succeeds, no retry counted
    assert (alloc.reserved.current, alloc.num_alloc_retries) == (60 * MiB, 0)


def test_expandable_segments_grow_one_segment_instead_of_adding_segments():
    """`try_allocate_expandable_block`/`map_block`: 20 MiB granules mapped at the end of one segment. Two
    24 MiB requests map 60 MiB (3 granules) where plain segments take 48 MiB; after both are freed, two
    26 MiB requests fit in the same 60 MiB, where plain segments need 52 MiB more."""

    def run(settings: AllocatorSettings) -> tuple[int, int]:
        alloc = CachingAllocator(settings)
        first = [alloc.malloc(24 * MiB) for _ in range(2)]
        before = alloc.reserved.current
        for block in first:
            alloc.free(block, 24 * MiB)
        for _ in range(2):
            alloc.malloc(26 * MiB)
        return before, alloc.reserved.current

    assert run(DEFAULT) == (48 * MiB, 100 * MiB)
    assert run(AllocatorSettings(expandable_segments=True)) == (60 * MiB, 60 * MiB)


def test_expandable_segments_give_back_whole_free_granules():
    """`release_blocks`/`unmap_block`: emptying the cache unmaps every free granule."""
    alloc = CachingAllocator(AllocatorSettings(expandable_segments=True))
    blocks = [alloc.malloc(24 * MiB) for _ in range(2)]
    alloc.free(blocks[1], 24 * MiB)
    alloc.empty_cache()  # [0, 24) allocated, [24, 60) free: the granule [40, 60) goes
    assert alloc.reserved.current == 40 * MiB
    alloc.free(blocks[0], 24 * MiB)
    alloc.empty_cache()
    assert alloc.reserved.current == 0


def test_fragmentation_grows_with_varying_shapes():
    """A stream whose shapes grow each step (padded batches) reserves new segments each time; the same
    stream at a constant shape reuses the cache. Allocated peaks are equal to the requests' rounding."""

    def stream(sizes: list[int]) -> list[tuple[str, int, int, str, int]]:
        events, storage = [], 0
        for step, size in enumerate(sizes):
            ids = [storage, storage + 1]
            storage += 2
            events += [("alloc", i, size, "forward", step) for i in ids]
            events += [("free", i, size, "backward", step) for i in ids]
        return events

    growing = replay(stream([24 * MiB, 26 * MiB, 28 * MiB]))
    constant = replay(stream([28 * MiB] * 3))
    assert growing.max_allocated == constant.max_allocated == 56 * MiB
    assert growing.step_max_reserved == [48 * MiB, 100 * MiB, 156 * MiB]
    assert constant.step_max_reserved == [56 * MiB] * 3
    assert growing.fragmentation_at_peak == 156 * MiB - 56 * MiB  # allocated peaks (56 MiB) in step 2
    assert constant.fragmentation_at_peak == 0


def test_replay_reports_where_a_budget_is_exceeded():
    events = [("alloc", 0, 30 * MiB, "forward", 0), ("alloc", 1, 30 * MiB, "backward", 0),
              ("free", 0, 30 * MiB, "backward", 0)]
    result = replay(events, device_bytes=50 * MiB)
    assert result.oom == {"event": 1, "requested": 30 * MiB, "phase": "backward", "step": 0,
                          "allocated": 30 * MiB, "reserved": 30 * MiB}
    assert replay(events, device_bytes=60 * MiB).oom is None


def test_preallocated_workspace_counts_in_reserved_memory():
    result = replay([("alloc", 0, MiB, "forward", 0)], preallocated=[32 * MiB])
    assert (result.max_allocated, result.max_reserved) == (33 * MiB, 34 * MiB)


@pytest.mark.parametrize("text, message", [
    ("max_split_size_mb:10", "at least 20"),
    ("roundup_power2_divisions:3", "power of 2"),
    ("expandable_segments:yes", "True or False"),
    ("garbage_collection_threshold:1.5", "(0, 1)"),
    ("colour:blue", "unknown allocator option"),
])
def test_bad_allocator_options_are_one_line(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AllocatorSettings.parse(text)


def test_interval_divisions_follow_the_parser():
    """`parseRoundUpPower2Divisions`: "[256:4,>:1]": the first value also fills the intervals below it;
    ">" fills from the last named interval on, that one included (so 256 MiB ends with 1, as in the parser)."""
    settings = AllocatorSettings.parse("roundup_power2_divisions:[256:4,>:1]")
    assert settings.roundup_power2_divisions == (4,) * 8 + (1,) * 8
    assert settings.divisions(200 * MiB) == 4 and settings.divisions(300 * MiB) == 1


def test_a_recorded_trace_replays_to_the_same_segments():
    """snapshot_replay on a trace written as the real allocator records it (alloc, free_completed and
    segment_alloc entries; sizes as requested): the replay creates the same segments in the same order."""
    from unipt_bench.memory.snapshot_replay import replay_trace

    trace = [
        {"action": "segment_alloc", "addr": 0, "size": 20 * MiB}, {"action": "alloc", "addr": 0, "size": 5 * MiB},
        {"action": "alloc", "addr": 5 * MiB, "size": 15 * MiB},
        {"action": "segment_alloc", "addr": 64 * MiB, "size": 2 * MiB},
        {"action": "alloc", "addr": 64 * MiB, "size": 100},
        {"action": "free_completed", "addr": 0, "size": 5 * MiB},
        {"action": "alloc", "addr": 0, "size": 4 * MiB},  # reuses the freed 5 MiB block: no new segment
        {"action": "free_completed", "addr": 99, "size": 8},  # allocated before recording: not ours
    ]
    segments = [{"device": 0, "total_size": 20 * MiB}, {"device": 0, "total_size": 2 * MiB}]
    check = replay_trace({"device_traces": [trace], "segments": segments})
    assert check["segment_allocs_equal"] and check["final_segments_equal"]
    assert (check["requests"], check["unknown_frees"], check["first_difference"]) == (4, 1, None)
    assert check["reserved_replayed"] == check["reserved_real"] == 22 * MiB
    # a real allocator that made a 10 MiB segment for the 5 MiB request: the replay (20 MiB) disagrees
    wrong = replay_trace({"device_traces": [[{"action": "segment_alloc", "size": 10 * MiB}, trace[1]]],
                          "segments": [{"device": 0, "total_size": 10 * MiB}]})
    assert wrong["first_difference"] == {"index": 0, "real": 10 * MiB, "replayed": 20 * MiB}
    assert not wrong["final_segments_equal"]


def test_device_memory_parts_and_cublas_workspace():
    from unipt_bench.memory.device_memory import CUDA_CONTEXT, cublas_workspace_bytes, predict

    assert cublas_workspace_bytes(9) == 32 * MiB
    assert cublas_workspace_bytes(8) == 8 * MiB + 128 * KiB
    assert cublas_workspace_bytes(8, ":4096:2:16:8") == 8 * MiB + 128 * KiB
    with pytest.raises(UserError, match="CUBLAS_WORKSPACE_CONFIG"):
        cublas_workspace_bytes(9, "4096")
    device = predict(reserved=100 * MiB, workspace=32 * MiB, cudnn_bound=10 * MiB)
    assert device.total == 110 * MiB + CUDA_CONTEXT and not device.verified_on_gpu
    assert any("cuDNN" in a for a in device.assumptions)


def test_an_estimate_replays_its_own_allocations():
    """An estimate records its allocations and replays them: the bytes the replayed allocator is asked for
    peak exactly at the tracker's peak (plus the cuBLAS workspace), and every predicted figure says it is
    unverified on a GPU. A convolutional model also gets a cuDNN workspace bound."""
    from unipt_bench.profile import RunOptions, profile
    from unipt_bench.suite_file import load_suite

    specs = {s.config: s for s in load_suite("smoke").with_mode("estimate") if s.label == "adapter"}
    for config in ("bert", "cnn"):
        memory = profile(specs[config], RunOptions())["memory"]["memtracker_fake"]
        replayed = memory["allocator_replay"]
        device = replayed["device_memory"]
        assert replayed["allocator"]["max_requested"] == memory["peak_bytes"] + device["cublas_workspace"]
        assert replayed["allocator"]["max_allocated"] <= replayed["allocator"]["max_reserved"]
        assert device["total"] == device["reserved"] + device["cuda_context"] + device["cudnn_workspace_bound"]
        assert not replayed["verified_on_gpu"]
        assert (device["cudnn_workspace_bound"] > 0) == (config == "cnn")


def test_evaluations_and_setup_are_kept_apart_from_the_training_steps():
    """A validation after step 2 is recorded at "2 steps done", as the next training step's events would be: its
    reserved memory goes under `evaluation_reserved`, so it never passes for training step 3 (0-based key 2).
    Events outside every phase ("setup": the next batch made before its step turns out untracked, a stretch's
    start registering what lives on) give no step of their own. Per step the highest allocated comes with the
    highest reserved; the allocator's state carries over to a later stretch."""
    from unipt_bench.memory.allocator_replay import Replayer

    replayer = Replayer()
    train = [("alloc", 0, 4 * MiB, "forward", 0), ("free", 0, 4 * MiB, "backward", 0),  # step 0: one 20 MiB segment
             ("alloc", 1, 30 * MiB, "forward", 1), ("free", 1, 30 * MiB, "backward", 1),  # step 1: +30 MiB
             ("alloc", 2, 1 * MiB, "setup", 2)]  # step 2's batch (a 2 MiB small segment); step 2 is untracked
    evaluation = [("alloc", 3, 40 * MiB, "setup", 0), ("alloc", 4, 40 * MiB, "evaluation", 0),  # +80 MiB
                  ("free", 4, 40 * MiB, "evaluation", 0)]
    replayer.feed(train)
    replayer.release_all()
    replayer.feed(evaluation, first_step=2)
    replayer.release_all()
    replayer.feed([("alloc", 5, 2 * MiB, "forward", 0), ("free", 5, 2 * MiB, "backward", 0)], first_step=5)
    assert replayer.step_reserved == {0: 20 * MiB, 1: 50 * MiB, 5: 132 * MiB}  # step 5 reuses the cache
    assert replayer.step_allocated == {0: 4 * MiB, 1: 30 * MiB, 5: 2 * MiB}
    assert replayer.evaluation_reserved == {2: 132 * MiB}
