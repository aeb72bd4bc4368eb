"""A replay of PyTorch's CUDA caching allocator: what `max_memory_reserved` would show, without a GPU.

An estimate counts live tensor bytes. A GPU user meets the caching allocator's reserved memory: every
request rounded up, small requests packed into 2 MiB segments, large ones into 20 MiB or rounded
segments, free blocks split and merged, and memory that stays reserved once a shape grows. This module
replays an allocation stream (each storage's allocation and free, in order) through the same rules,
written from the allocator's source (docs/allocator.md gives the rules with their sources):

- c10/cuda/CUDACachingAllocator.cpp, class DeviceCachingAllocator (pytorch/pytorch, read at commit
  001074d2): the constants (kMinBlockSize, kSmallSize, kSmallBuffer, kMinLargeAlloc, kRoundLarge),
  `round_size`, `roundup_power2_next_division`, `get_pool`, `get_allocation_size`, `get_free_block`,
  `should_split`, `alloc_found_block`, `free_block`, `try_merge_blocks`, `alloc_block`,
  `release_available_cached_blocks`, `release_cached_blocks`, `release_blocks`,
  `garbage_collect_cached_blocks` and the expandable-segment functions `find_expandable_block`,
  `map_block`, `try_allocate_expandable_block`, `unmap_block`;
- c10/core/AllocatorConfig.{h,cpp} (kLargeBuffer, `roundup_power2_divisions(size)`, the option parser).

One device, one stream, no CUDA graphs and no cross-stream uses (training here runs on the default
stream), so events never delay a free. cudaMalloc is modelled as succeeding while the reserved bytes
stay within `device_bytes` (the memory the allocator can get); addresses are handed out in increasing
order, which only decides ties between free blocks of equal size.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UserError
from .base import TRAINING_PHASES

MIN_BLOCK = 512  # kMinBlockSize: every request is rounded up to a multiple of 512 B
SMALL_SIZE = 1 << 20  # kSmallSize: requests up to 1 MiB use the small pool
SMALL_BUFFER = 2 << 20  # kSmallBuffer: small requests are packed into 2 MiB segments
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc: requests between 1 and 10 MiB get a 20 MiB segment
LARGE_BUFFER = 20 << 20  # kLargeBuffer (AllocatorConfig.h)
ROUND_LARGE = 2 << 20  # kRoundLarge: larger requests are rounded up to 2 MiB segments
UNLIMITED = (1 << 64) - 1  # max_split_size's default: every block may be split
POWER2_INTERVALS = 16  # kRoundUpPowerOfTwoIntervals: 1 MiB .. 64 GiB, one division count per power of 2
POWER2_START_LOG = 20  # log2(kRoundUpPowerOfTwoStart = 1 MiB)
EVENT_ALLOC, EVENT_FREE, EVENT_RESIZE = 0, 1, 2  # memory/events.py's kinds of storage events


@dataclass(frozen=True)
class AllocatorSettings:
    """The allocator's options (PYTORCH_CUDA_ALLOC_CONF), with the allocator's defaults."""

    max_split_size: int = UNLIMITED  # max_split_size_mb: larger blocks are never split
    max_non_split_rounding_size: int = LARGE_BUFFER  # max_non_split_rounding_mb
    roundup_power2_divisions: tuple[int, ...] = (0,) * POWER2_INTERVALS  # per power-of-2 interval from 1 MiB
    expandable_segments: bool = False
    garbage_collection_threshold: float = 0.0  # acts only under a memory fraction (as in the allocator)

    def divisions(self, size: int) -> int:
        """`roundup_power2_divisions(size)`: the division count of the interval holding `size`."""
        index = min(max(0, size.bit_length() - 1 - POWER2_START_LOG), POWER2_INTERVALS - 1)
        return self.roundup_power2_divisions[index]

    @classmethod
    def parse(cls, text: str) -> AllocatorSettings:
        """Read a PYTORCH_CUDA_ALLOC_CONF string (`AllocatorConfig::parseArgs`), e.g.
        "max_split_size_mb:128,roundup_power2_divisions:[256:4,>:1],expandable_segments:True"."""
        values: dict[str, Any] = {}
        for key, value in split_options(text):
            if key == "max_split_size_mb":
                values["max_split_size"] = megabytes(key, value)
            elif key == "max_non_split_rounding_mb":
                values["max_non_split_rounding_size"] = megabytes(key, value)
            elif key == "roundup_power2_divisions":
                values[key] = parse_divisions(value)
            elif key == "expandable_segments":
                values[key] = boolean(key, value)
            elif key == "garbage_collection_threshold":
                threshold = number(key, value, float)
                if not 0 < threshold < 1:
                    raise UserError(f"allocator option {key} must lie in (0, 1), got {value!r}")
                values[key] = threshold
            elif key not in ("backend", "release_lock_on_cudamalloc", "pinned_use_cuda_host_register",
                             "pinned_num_register_threads", "pinned_use_background_threads"):
                raise UserError(f"unknown allocator option {key!r} in {text!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["roundup_power2_divisions"] = list(self.roundup_power2_divisions)
        return out


def split_options(text: str) -> list[tuple[str, str]]:
    """"a:1,b:[x:2,>:3]" -> [("a", "1"), ("b", "x:2,>:3")] (brackets keep their commas)."""
    items, depth, current = [], 0, ""
    for ch in text.replace(" ", ""):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    out = []
    for item in filter(None, items):
        key, sep, value = item.partition(":")
        if not sep or not value:
            raise UserError(f"allocator option {item!r} needs a value (key:value)")
        out.append((key, value.strip("[]")))
    return out


def number(key: str, value: str, kind: Callable[[str], Any] = int) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise UserError(f"allocator option {key} needs a number, got {value!r}") from None


def megabytes(key: str, value: str) -> int:
    mb = number(key, value)
    if mb < LARGE_BUFFER >> 20:  # both options refuse less than 20 MiB (AllocatorConfig.cpp)
        raise UserError(f"allocator option {key} must be at least {LARGE_BUFFER >> 20}, got {mb}")
    return mb << 20


def boolean(key: str, value: str) -> bool:
    if value not in ("True", "False"):
        raise UserError(f"allocator option {key} must be True or False, got {value!r}")
    return value == "True"


def is_power2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def parse_divisions(value: str) -> tuple[int, ...]:
    """`parseRoundUpPower2Divisions`: one count for all intervals, or "[size_mb:count,...,>:count]"."""
    divisions = [0] * POWER2_INTERVALS
    if ":" not in value:  # one count for every interval
        count = number("roundup_power2_divisions", value)
        if not is_power2(count):
            raise UserError(f"roundup_power2_divisions must be a power of 2, got {count}")
        return (count,) * POWER2_INTERVALS
    first, last = True, 0
    for pair in value.split(","):
        interval, _, raw = pair.partition(":")
        count = number("roundup_power2_divisions", raw)
        if count and not is_power2(count):
            raise UserError(f"roundup_power2_divisions counts must be 0 or a power of 2, got {count}")
        if interval == ">":  # every interval from the last named one on
            divisions[last:] = [count] * (POWER2_INTERVALS - last)
            continue
        size_mb = number("roundup_power2_divisions", interval)
        if not is_power2(size_mb):
            raise UserError(f"roundup_power2_divisions intervals must be powers of 2 (MiB), got {size_mb}")
        index = min(size_mb.bit_length() - 1, POWER2_INTERVALS - 1)
        if first:  # the first interval named also sets every interval below it
            divisions[:index] = [count] * index
            first = False
        divisions[index] = count
        last = index
    return tuple(divisions)


def round_size(size: int, settings: AllocatorSettings) -> int:
    """`round_size`: at least 512 B, a multiple of 512 B, or the next power-of-2 division when asked."""
    if size < MIN_BLOCK:
        return MIN_BLOCK
    divisions = settings.divisions(size)
    if divisions > 1 and size > MIN_BLOCK * divisions:
        return roundup_power2_next_division(size, divisions)
    return MIN_BLOCK * math.ceil(size / MIN_BLOCK)


def roundup_power2_next_division(size: int, divisions: int) -> int:
    """Round `size` up to the next of `divisions` equal steps between two powers of 2 (1200, 4 -> 1280)."""
    if is_power2(size):
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    rounded = size & ~(step - 1)
    return size if rounded == size else rounded + step


def allocation_size(size: int) -> int:
    """`get_allocation_size`: the segment cudaMalloc'ed for a request no cached block serves."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * math.ceil(size / ROUND_LARGE)


class Block:
    """A range of device memory: part of a segment, allocated or cached (free), or unmapped address space."""

    __slots__ = ("size", "ptr", "pool", "allocated", "prev", "next", "expandable", "mapped", "gc_base")

    def __init__(self, size: int, ptr: int, pool: Pool, expandable: Expandable | None = None) -> None:
        self.size, self.ptr, self.pool = size, ptr, pool
        self.allocated = False
        self.prev: Block | None = None
        self.next: Block | None = None
        self.expandable = expandable  # the expandable segment this block lies in, if any
        self.mapped = True
        self.gc_base = 0  # the pool's free-block search count when this block was cached

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class SortedBlocks:
    """A set of blocks ordered by a key (std::set with a comparator), with lower_bound."""

    def __init__(self, key: Callable[[Block], tuple[int, ...]]) -> None:
        self.key = key
        self.keys: list[tuple[int, ...]] = []
        self.blocks: list[Block] = []

    def add(self, block: Block) -> None:
        k = self.key(block)
        i = bisect.bisect_left(self.keys, k)
        self.keys.insert(i, k)
        self.blocks.insert(i, block)

    def remove(self, block: Block) -> None:
        i = bisect.bisect_left(self.keys, self.key(block))
        assert self.blocks[i] is block, "block not in the set"
        del self.keys[i], self.blocks[i]

    def lower_bound(self, key: tuple[int, ...]) -> int:
        return bisect.bisect_left(self.keys, key)

    def __len__(self) -> int:
        return len(self.blocks)


class Pool:
    """`BlockPool`: the cached free blocks of one size class (by size, then address), and unmapped ranges."""

    def __init__(self, small: bool) -> None:
        self.small = small
        self.blocks = SortedBlocks(lambda b: (b.size, b.ptr))
        self.unmapped = SortedBlocks(lambda b: (b.ptr,))
        self.free_block_searches = 0  # get_free_blocks_call_count (garbage collection ages)

    def cache(self, block: Block) -> None:
        """`insert_into_blocks`: cache a free block, noting when (for garbage collection)."""
        block.gc_base = self.free_block_searches
        self.blocks.add(block)


@dataclass
class Expandable:
    """An expandable segment: address space for the whole device, mapped in granules as it grows."""

    granule: int  # 2 MiB in the small pool, 20 MiB in the large one
    ptr: int
    size: int


class OutOfMemory(Exception):
    """The replayed allocator could not get memory for a request (the CUDA out-of-memory error)."""

    def __init__(self, requested: int, allocated: int, reserved: int) -> None:
        super().__init__(f"out of memory allocating {requested} B ({allocated} B allocated, {reserved} B reserved)")
        self.requested, self.allocated, self.reserved = requested, allocated, reserved


@dataclass
class Stat:
    current: int = 0
    peak: int = 0

    def add(self, amount: int) -> None:
        self.current += amount
        self.peak = max(self.peak, self.current)


class CachingAllocator:
    """`DeviceCachingAllocator` for one device and one stream: malloc, free, empty_cache and statistics.

    device_bytes: memory cudaMalloc can hand out (None: unlimited); memory_fraction: the limit
    `torch.cuda.set_per_process_memory_fraction` sets, as a fraction of device_bytes (it also enables
    the garbage collection threshold).
    """

    def __init__(self, settings: AllocatorSettings | None = None, device_bytes: int | None = None,
                 memory_fraction: float | None = None) -> None:
        self.settings = settings or AllocatorSettings()
        self.device_bytes = device_bytes
        self.allowed = None if memory_fraction is None or device_bytes is None else int(memory_fraction * device_bytes)
        self.small, self.large = Pool(small=True), Pool(small=False)
        self.allocated = Stat()  # allocated_bytes: rounded sizes of live blocks (max_memory_allocated)
        self.reserved = Stat()  # reserved_bytes: segments (max_memory_reserved)
        self.requested = Stat()  # requested_bytes: the sizes asked for
        self.segments = Stat()
        self.num_alloc_retries = 0
        self.num_ooms = 0
        self.next_address = 1 << 32  # where the next cudaMalloc'ed range starts (monotonic)
        self.expandables: list[Expandable] = []
        self.live: set[Block] = set()  # allocated blocks (active_blocks)
        self.fragmentation_at_peak = 0  # reserved - allocated when allocated peaked

    # -- the public operations ------------------------------------------------------------------------

    def malloc(self, nbytes: int) -> Block:
        """`malloc`: a block of at least `nbytes`, from the cache or a new segment; OutOfMemory otherwise."""
        size = round_size(nbytes, self.settings)
        pool = self.small if size <= SMALL_SIZE else self.large
        block = self.cached_block(pool, size)
        if block is None:
            if self.allowed is not None and self.settings.garbage_collection_threshold > 0:
                self.garbage_collect()
            block = (self.new_segment(pool, size)
                     or (self.release_available_cached_blocks(pool, size) and self.new_segment(pool, size))
                     or (self.release_cached_blocks() and self.new_segment(pool, size, retry=True)))
        if not block:
            self.num_ooms += 1
            raise OutOfMemory(nbytes, self.allocated.current, self.reserved.current)
        before = self.allocated.peak
        block = self.hand_out(block, pool, size, nbytes)
        if self.allocated.current > before:  # a new allocated peak: how much reserved memory lies unused
            self.fragmentation_at_peak = self.reserved.current - self.allocated.current
        return block

    def free(self, block: Block, nbytes: int) -> None:
        """`free` then `free_block`: cache the block, merged with free neighbours of its segment."""
        block.allocated = False
        self.live.discard(block)
        self.allocated.add(-block.size)
        self.requested.add(-nbytes)
        pool = block.pool
        for neighbour in (block.prev, block.next):
            self.try_merge(block, neighbour, pool)
        pool.cache(block)

    def empty_cache(self) -> None:
        """`emptyCache`: release every cached segment that holds no allocation."""
        self.release_cached_blocks()

    # -- finding a block --------------------------------------------------------------------------------

    def cached_block(self, pool: Pool, size: int) -> Block | None:
        """`get_free_block`: the smallest cached block that fits (best fit), within the oversize rules."""
        settings = self.settings
        if self.allowed is not None and settings.garbage_collection_threshold > 0:
            pool.free_block_searches += 1
        i = pool.blocks.lower_bound((size, 0))
        if i == len(pool.blocks):
            return None
        block = pool.blocks.blocks[i]
        if block.expandable is not None and settings.expandable_segments:
            # a block at the end of an expandable segment counts as the size it can grow to
            def grown(b: Block) -> int:
                return b.size + (b.next.size if b.next is not None and not b.next.mapped else 0)

            while (block.expandable is not None and i + 1 < len(pool.blocks)
                   and grown(pool.blocks.blocks[i + 1]) < grown(block)):
                i += 1
                block = pool.blocks.blocks[i]
        if size < settings.max_split_size <= block.size:
            return None  # never hand out an oversize block for a smaller request
        if size >= settings.max_split_size and block.size >= size + settings.max_non_split_rounding_size:
            return None  # an oversize block serves only requests close to its size
        pool.blocks.remove(block)
        return block

    def should_split(self, block: Block, size: int) -> bool:
        """`should_split`: small-pool and expandable blocks keep any remainder of 512 B or more; large
        blocks only a remainder over 1 MiB, and never when the request is oversize."""
        remaining = block.size - size
        if block.pool.small or self.settings.expandable_segments:
            return remaining >= MIN_BLOCK
        return size < self.settings.max_split_size and remaining > SMALL_SIZE

    def hand_out(self, block: Block, pool: Pool, size: int, nbytes: int) -> Block:
        """`alloc_found_block`: split off the remainder when worth it, mark the block allocated."""
        if self.should_split(block, size):
            remaining = block
            block = Block(size, remaining.ptr, pool, remaining.expandable)
            block.prev = remaining.prev
            if block.prev is not None:
                block.prev.next = block
            block.next = remaining
            remaining.prev = block
            remaining.ptr += size
            remaining.size -= size
            pool.cache(remaining)
        block.allocated = True
        self.live.add(block)
        self.allocated.add(block.size)
        self.requested.add(nbytes)
        return block

    def try_merge(self, dst: Block, src: Block | None, pool: Pool) -> int:
        """`try_merge_blocks`: absorb a free neighbour of the same mapping state; its size, or 0."""
        if src is None or src.allocated or dst.mapped != src.mapped:
            return 0
        if dst.prev is src:  # [src dst]
            dst.ptr = src.ptr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:  # [dst src]
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        (pool.blocks if src.mapped else pool.unmapped).remove(src)
        return src.size

    # -- getting and releasing device memory ------------------------------------------------------------

    def can_get(self, nbytes: int) -> bool:
        """Whether cudaMalloc (or mapping) of nbytes more succeeds: within the fraction and the device."""
        total = self.reserved.current + nbytes
        if self.allowed is not None and total > self.allowed:
            return False
        return self.device_bytes is None or total <= self.device_bytes

    def new_segment(self, pool: Pool, size: int, retry: bool = False) -> Block | None:
        """`alloc_block`: a new segment (cudaMalloc), or growth of an expandable segment."""
        if retry:
            self.num_alloc_retries += 1
        if self.settings.expandable_segments:
            return self.grow_expandable(pool, size)
        alloc = allocation_size(size)
        if not self.can_get(alloc):
            return None
        block = Block(alloc, self.next_address, pool)
        self.next_address += ROUND_LARGE * math.ceil(alloc / ROUND_LARGE)
        self.add_reserved(alloc)
        self.segments.add(1)
        return block

    def add_reserved(self, nbytes: int) -> None:
        self.reserved.add(nbytes)

    def release_block(self, block: Block) -> None:
        """`release_block`: cudaFree a cached segment."""
        self.add_reserved(-block.size)
        self.segments.add(-1)
        block.pool.blocks.remove(block)

    def release_available_cached_blocks(self, pool: Pool, size: int) -> bool:
        """`release_available_cached_blocks`: with max_split_size set, free oversize cached segments,
        the smallest one that covers the request, else the largest ones until they do."""
        limit = self.settings.max_split_size
        if limit == UNLIMITED:
            return False
        key = max(size, limit)
        blocks = pool.blocks
        i = blocks.lower_bound((key, 0))
        if i < len(blocks):
            self.release_block(blocks.blocks[i])
            return True
        released = 0
        i -= 1
        while i >= 0 and released < key and blocks.blocks[i].size >= limit:
            released += blocks.blocks[i].size
            self.release_block(blocks.blocks[i])
            i -= 1
        return released >= key

    def release_cached_blocks(self) -> bool:
        """`release_cached_blocks`: free every cached segment that is whole (not split), both pools;
        expandable segments give back their free granules."""
        for pool in (self.large, self.small):
            to_unmap = [b for b in pool.blocks.blocks if b.expandable is not None]
            for block in [b for b in pool.blocks.blocks if b.expandable is None and not b.is_split()]:
                self.release_block(block)
            for block in to_unmap:
                self.unmap(block)
                if not block.is_split() and not block.mapped:
                    pool.unmapped.remove(block)
                    self.expandables.remove(block.expandable)
        return True

    def garbage_collect(self) -> None:
        """`garbage_collect_cached_blocks`: above the threshold, free whole cached large segments, oldest
        (least recently reused) first, until the excess is reclaimed."""
        threshold = int(self.settings.garbage_collection_threshold * self.allowed)
        if self.reserved.current <= threshold:
            return
        target = self.reserved.current - threshold
        pool = self.large

        def age(b: Block) -> int:
            return pool.free_block_searches - b.gc_base

        freeable = [b for b in pool.blocks.blocks if not b.is_split()]
        total_age = sum(age(b) for b in freeable)
        reclaimed, freed = 0, True
        while reclaimed < target and freed and freeable:
            average = total_age / len(freeable)
            freed = False
            for block in list(pool.blocks.blocks):
                if not block.is_split() and age(block) >= average:
                    freed = True
                    reclaimed += block.size
                    total_age -= age(block)
                    freeable.remove(block)
                    self.release_block(block)

    # -- expandable segments ------------------------------------------------------------------------------

    def grow_expandable(self, pool: Pool, size: int) -> Block | None:
        """`try_allocate_expandable_block`: map granules of an expandable segment until a free range fits."""
        candidate = self.expandable_candidate(pool, size)
        if not candidate.mapped and not self.map(candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            following = candidate.next
            if following is None or not self.map(following, min(size - candidate.size, following.size)):
                return None
            candidate = following  # map() merged it with the free block before it
        pool.blocks.remove(candidate)
        return candidate

    def expandable_candidate(self, pool: Pool, size: int) -> Block:
        """`find_expandable_block`: the lowest unmapped range (with the free block before it) that fits,
        or a new segment's whole address space."""

        def free(b: Block | None) -> bool:
            return b is not None and not b.allocated

        for unmapped in pool.unmapped.blocks:
            start = unmapped.prev if free(unmapped.prev) else unmapped
            room, b = 0, start
            while room < size and free(b):
                room += b.size
                b = b.next
            if room >= size:
                return start
        granule = SMALL_BUFFER if pool.small else LARGE_BUFFER
        limit = self.device_bytes if self.device_bytes is not None else 1 << 44
        span = granule * math.ceil((limit + limit // 8) / granule)  # 1 1/8 of the device's memory
        segment = Expandable(granule, self.next_address, span)
        self.next_address += span
        self.expandables.append(segment)
        block = Block(span, segment.ptr, pool, segment)
        block.mapped = False
        pool.unmapped.add(block)
        return block

    def map(self, block: Block, size: int) -> bool:
        """`map_block`: back the first `size` bytes of an unmapped range with granules."""
        granule = block.expandable.granule
        start = block.ptr - block.expandable.ptr
        mapped = granule * math.ceil((start + size) / granule) - start  # whole granules from the start
        if mapped == 0 or not self.can_get(mapped):
            return False
        pool = block.pool
        pool.unmapped.remove(block)
        block.mapped = True
        if mapped < block.size:  # the rest stays unmapped, after this block
            rest = Block(block.size - mapped, block.ptr + mapped, pool, block.expandable)
            rest.mapped = False
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            pool.unmapped.add(rest)
            block.size = mapped
        self.try_merge(block, block.prev, pool)
        self.try_merge(block, block.next, pool)
        pool.cache(block)
        self.add_reserved(mapped)
        return True

    def unmap(self, block: Block) -> None:
        """`unmap_block`: give back the whole granules inside a cached expandable block."""
        segment, pool = block.expandable, block.pool
        offset = block.ptr - segment.ptr
        begin = segment.granule * math.ceil(offset / segment.granule)
        end = segment.granule * ((offset + block.size) // segment.granule)
        if begin >= end:
            return
        pool.blocks.remove(block)
        before, after = begin - offset, offset + block.size - end
        if before > 0:
            head = Block(before, block.ptr, pool, segment)
            head.prev, head.next = block.prev, block
            if block.prev is not None:
                block.prev.next = head
            block.prev = head
            pool.cache(head)
        if after > 0:
            tail = Block(after, segment.ptr + end, pool, segment)
            tail.prev, tail.next = block, block.next
            if block.next is not None:
                block.next.prev = tail
            block.next = tail
            pool.cache(tail)
        block.ptr, block.size, block.mapped = segment.ptr + begin, end - begin, False
        self.try_merge(block, block.prev, pool)
        self.try_merge(block, block.next, pool)
        pool.unmapped.add(block)
        self.add_reserved(-(end - begin))

    # -- what a snapshot shows -----------------------------------------------------------------------------

    def segment_list(self) -> list[dict[str, Any]]:
        """The segments now reserved, as `torch.cuda.memory_snapshot()` lists them: address order, each
        with its total size and its blocks (size, allocated); an expandable segment lists each mapped run."""
        heads: set[int] = set()
        blocks = [*self.live, *self.small.blocks.blocks, *self.large.blocks.blocks]
        by_id = {id(b): b for b in blocks}
        for b in blocks:
            head = b
            while head.prev is not None and head.prev.mapped:
                head = head.prev
            heads.add(id(head))
        out = []
        for head in sorted((by_id[h] for h in heads if h in by_id), key=lambda b: b.ptr):
            parts, b = [], head
            while b is not None and b.mapped:
                parts.append({"size": b.size, "allocated": b.allocated})
                b = b.next
            out.append({"address": head.ptr, "pool": "small" if head.pool.small else "large",
                        "expandable": head.expandable is not None,
                        "total_size": sum(p["size"] for p in parts),
                        "allocated_size": sum(p["size"] for p in parts if p["allocated"]), "blocks": parts})
        return out


@dataclass
class ReplayResult:
    """What the replayed allocator shows for one allocation stream (bytes)."""

    max_allocated: int  # max_memory_allocated: live blocks, rounded
    max_reserved: int  # max_memory_reserved: segments
    max_requested: int  # the live bytes asked for (the estimate's peak, when the stream is complete)
    fragmentation_at_peak: int  # reserved but not allocated when allocated peaked
    segments_at_end: int
    peak_segments: int
    num_alloc_retries: int
    oom: dict[str, Any] | None = None  # where a device budget was exceeded: event index, request, phase, step
    step_max_reserved: list[int] = field(default_factory=list)  # per step (in step order): its highest reserved
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Replayer:
    """One allocator fed an allocation stream, in one piece or stretch by stretch (a training run's tracked
    segments): the allocator's state carries over from one stretch to the next, as on a GPU."""

    def __init__(self, settings: AllocatorSettings | None = None, device_bytes: int | None = None,
                 memory_fraction: float | None = None) -> None:
        self.allocator = CachingAllocator(settings, device_bytes, memory_fraction)
        self.held: dict[int, tuple[Block, int]] = {}
        self.step_reserved: dict[int, int] = {}  # step -> highest reserved bytes in its training phases
        self.step_allocated: dict[int, int] = {}  # step -> highest allocated bytes in its training phases
        # steps done -> highest reserved bytes in the evaluations run after them (validation, test): kept apart,
        # or an evaluation after step k would pass for training step k + 1
        self.evaluation_reserved: dict[int, int] = {}
        self.oom: dict[str, Any] | None = None

    def feed(self, events: Iterable[tuple[str, int, int, str, int]], first_step: int = 0) -> bool:
        """Replay (kind "alloc" | "free", storage id, bytes, phase, step) in order, steps counted from
        `first_step`; False once a request could not be served (then `oom` says where)."""
        allocator, held = self.allocator, self.held
        for index, (kind, storage, nbytes, phase, step) in enumerate(events if self.oom is None else ()):
            if kind == "alloc":
                if storage in held:  # a storage re-allocated under the same id: the old one is gone
                    allocator.free(*held.pop(storage))
                try:
                    held[storage] = (allocator.malloc(nbytes), nbytes)
                except OutOfMemory as exc:
                    self.oom = {"event": index, "requested": nbytes, "phase": phase, "step": first_step + step,
                                "allocated": exc.allocated, "reserved": exc.reserved}
                    return False
            elif storage in held:  # a free of a storage allocated before the stream began is not ours
                allocator.free(*held.pop(storage))
            at = first_step + step
            if phase in TRAINING_PHASES:  # not "setup" (between phases): a stretch's start registering what
                # lives on, or the next batch made before its step is known to be untracked
                self.step_reserved[at] = max(self.step_reserved.get(at, 0), allocator.reserved.current)
                self.step_allocated[at] = max(self.step_allocated.get(at, 0), allocator.allocated.current)
            elif phase == "evaluation":
                self.evaluation_reserved[at] = max(self.evaluation_reserved.get(at, 0), allocator.reserved.current)
        return self.oom is None

    def release_all(self, keep: Iterable[int] = ()) -> None:
        """Free every storage the stream left allocated but those in `keep` (a tracked stretch ends; the next
        one's tracker registers the storages that live on as allocations of its own)."""
        for storage in [s for s in self.held if s not in set(keep)]:
            self.allocator.free(*self.held.pop(storage))

    def result(self) -> ReplayResult:
        allocator = self.allocator
        return ReplayResult(
            max_allocated=allocator.allocated.peak, max_reserved=allocator.reserved.peak,
            max_requested=allocator.requested.peak, fragmentation_at_peak=allocator.fragmentation_at_peak,
            segments_at_end=allocator.segments.current, peak_segments=allocator.segments.peak,
            num_alloc_retries=allocator.num_alloc_retries, oom=self.oom,
            step_max_reserved=[self.step_reserved[s] for s in sorted(self.step_reserved)],
            settings=allocator.settings.to_dict())


def replay(events: Iterable[tuple[str, int, int, str, int]], settings: AllocatorSettings | None = None,
           device_bytes: int | None = None, memory_fraction: float | None = None,
           preallocated: Iterable[int] = ()) -> ReplayResult:
    """Replay an allocation stream: (kind "alloc" | "free", storage id, bytes, phase, step) in order.

    `preallocated`: allocations made before the stream and never freed (the cuBLAS workspace, which the
    first matmul allocates through this allocator). With `device_bytes`, the first request that cannot
    be served stops the replay and is reported in `oom`.
    """
    replayer = Replayer(settings, device_bytes, memory_fraction)
    if replayer.feed(("alloc", -1 - i, nbytes, "setup", 0) for i, nbytes in enumerate(preallocated)):
        replayer.feed(events)
    return replayer.result()


def stream_of(events: Any, nbytes: Any = None) -> Iterable[tuple[str, int, int, str, int]]:
    """The allocation stream of a traced run's recorded events (memory/events.py): allocations, frees and
    resizes (a resized storage is freed and allocated again) with their phase and step. `nbytes`: one
    size per event in place of the recorded ones (a shape curve's sizes at another shape)."""
    kinds, serials = events.numpy("kind"), events.numpy("serial")
    sizes = events.numpy("nbytes") if nbytes is None else nbytes
    phases, steps = events.numpy("phase"), events.numpy("step")
    names = list(events.phases)
    for kind, serial, size, phase, step in zip(kinds.tolist(), serials.tolist(), sizes.tolist(),
                                               phases.tolist(), steps.tolist(), strict=True):
        label = names[phase] if phase >= 0 else "setup"
        if kind == EVENT_ALLOC:
            yield "alloc", serial, size, label, step
        elif kind == EVENT_FREE:
            yield "free", serial, size, label, step
        elif kind == EVENT_RESIZE:
            yield "free", serial, size, label, step
            yield "alloc", serial, size, label, step
