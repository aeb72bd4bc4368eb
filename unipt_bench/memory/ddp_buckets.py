"""What DistributedDataParallel allocates per GPU: its gradient buckets, laid out as DDP's reducer lays them out.

DDP's reducer allocates one flat tensor per bucket when it is built and keeps it for the whole run
(torch/nn/parallel/distributed.py, `_ddp_init_helper`): a bucket holds the gradients of parameters of
one dtype, up to a size cap. At construction (find_unused_parameters=False) each dtype gets a single
bucket; at the second forward the reducer frees them and allocates the steady-state buckets, in the
order the gradients became ready, capped at 1 MiB for the first (`dist._DEFAULT_FIRST_BUCKET_BYTES`,
only when bucket_cap_mb is left at its default) and bucket_cap_mb (25 MiB) for the others. The total
is the trainable parameters' bytes either way; the layout matters for the CUDA allocator's 512-byte
rounding of each bucket. The ready order is modelled as DDP assumes it: the parameters in reverse.

With gradient_as_bucket_view=False (DDP's default) every gradient is a tensor of its own that the
reducer copies into its bucket: the buckets come on top of the gradients. With True, gradients are
views into the buckets: the estimate counts gradients as 0 bytes (memory/estimate.py) and adds the
buckets, which then hold them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._tools.mem_tracker import _MemRefType, _WeakRefInfo

CATEGORY = "ddp_buckets"  # a category of its own, beside base.CATEGORIES, in results of runs on several GPUs
MIB = 1 << 20
DEFAULT_BUCKET_CAP_MB = 25  # torch/nn/parallel/distributed.py: _DEFAULT_BUCKET_CAP_MB


def reducer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters DDP hands its reducer: each module's own trainable ones, modules in `named_modules`
    order, a shared parameter once (DistributedDataParallel._build_params_for_reducer)."""
    seen: set[int] = set()
    out = []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def bucket_limits(settings: dict[str, Any]) -> list[int]:
    """Byte caps of the steady-state buckets: [first, the rest] as DDP's _BucketCapacityConfig sets them."""
    cap = int(settings.get("bucket_cap_mb", DEFAULT_BUCKET_CAP_MB) * MIB)
    first = dist._DEFAULT_FIRST_BUCKET_BYTES if "bucket_cap_mb" not in settings else cap
    return [first, cap] if first < cap else [cap]


def bucket_layout(model: nn.Module, settings: dict[str, Any]) -> list[tuple[torch.dtype, int]]:
    """(dtype, elements) of each steady-state bucket, from DDP's own assignment function."""
    params = list(reversed(reducer_parameters(model)))  # the order gradients become ready, as DDP assumes it
    if not params:
        return []
    groups, _ = dist._compute_bucket_assignment_by_size(params, bucket_limits(settings), [False] * len(params))
    return [(params[group[0]].dtype, sum(params[i].numel() for i in group)) for group in groups]


def allocated_bytes(dtype: torch.dtype, numel: int) -> int:
    """Bytes of one bucket as the tensor tracker counts a storage: exact, or in the CUDA allocator's 512-byte
    blocks inside estimate.cuda_allocator_blocks (calibration)."""
    element = torch.empty((), dtype=dtype, device="meta").element_size()
    return _WeakRefInfo(numel, element, torch.device("cpu"), _MemRefType.GRAD).mem_consumed


def bucket_bytes(model: nn.Module, settings: dict[str, Any]) -> tuple[int, int]:
    """(bytes of every bucket of one GPU, number of buckets)."""
    layout = bucket_layout(model, settings)
    return sum(allocated_bytes(dtype, numel) for dtype, numel in layout), len(layout)


def add_buckets(figures: dict[str, Any], nbytes: int, trainable_by_owner: dict[str, int]) -> dict[str, Any]:
    """A tensor tracker's result with the buckets added to every peak (they live from construction on) and
    as a category of their own; by owner they split as gradients do, by trainable bytes."""
    from .estimate import split  # estimate.py imports this module

    out = {**figures, "peak_bytes": figures["peak_bytes"] + nbytes,
           "by_category": {**figures["by_category"], CATEGORY: nbytes},
           "by_phase": {phase: {"peak_bytes": v["peak_bytes"] + nbytes, "by_category": {**v["by_category"], CATEGORY: nbytes}}
                        for phase, v in figures["by_phase"].items()},
           "step_peak_bytes": [peak + nbytes for peak in figures["step_peak_bytes"]]}
    if "by_owner" in figures:
        shares = split(nbytes, {owner: trainable_by_owner.get(owner, 0) for owner in figures["by_owner"]})
        out["by_owner"] = {owner: {**cats, CATEGORY: shares[owner]} for owner, cats in figures["by_owner"].items()}
    return out


def settings_protocol(settings: dict[str, Any]) -> dict[str, Any]:
    """What the protocol records about DDP's settings: each one's value (DDP's default where the suite sets none)."""
    return {
        "bucket_cap_mb": settings.get("bucket_cap_mb", DEFAULT_BUCKET_CAP_MB),
        "first_bucket_mb": bucket_limits(settings)[0] / MIB,
        "gradient_as_bucket_view": settings.get("gradient_as_bucket_view", False),
        "set_in_suite": sorted(settings),
    }


def describe(settings: dict[str, Any], nbytes: int, buckets: int) -> dict[str, Any]:
    """The protocol's record of a modelled DDP: its settings and the buckets counted."""
    return {**settings_protocol(settings), "buckets": buckets, "bucket_bytes": nbytes,
            "measured": "modelled: gradient buckets added to the tensor tracker's figures (memory/ddp_buckets.py)"}
