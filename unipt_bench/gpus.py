"""Memory of common GPUs, so that a budget can be named by the card (`compare --gpu A100-80GB`).

Figures are the nominal memory in each card's name, taken as GiB; what a training process can use is
a little less (the driver reserves some, and the CUDA context takes a few hundred MiB): a budget, not a
promise. Give --budget for an exact figure.
"""

from __future__ import annotations

from .errors import UserError

GIB = 2**30
# name -> (memory in bytes, what the card is); names are matched case-insensitively
GPUS: dict[str, tuple[int, str]] = {
    "A100-40GB": (40 * GIB, "NVIDIA A100 40 GB (SXM or PCIe)"),
    "A100-80GB": (80 * GIB, "NVIDIA A100 80 GB (SXM or PCIe)"),
    "H100-80GB": (80 * GIB, "NVIDIA H100 80 GB (SXM or PCIe)"),
    "H200": (141 * GIB, "NVIDIA H200 141 GB"),
    "L4": (24 * GIB, "NVIDIA L4 24 GB"),
    "A10": (24 * GIB, "NVIDIA A10 24 GB"),
    "RTX-3090": (24 * GIB, "NVIDIA GeForce RTX 3090 24 GB"),
    "RTX-4090": (24 * GIB, "NVIDIA GeForce RTX 4090 24 GB"),
    "V100-16GB": (16 * GIB, "NVIDIA V100 16 GB"),
    "V100-32GB": (32 * GIB, "NVIDIA V100 32 GB"),
    "T4": (16 * GIB, "NVIDIA T4 16 GB"),
}
ALIASES = {"A100": "A100-80GB", "H100": "H100-80GB", "3090": "RTX-3090", "4090": "RTX-4090", "V100": "V100-32GB"}


def gpu_memory(name: str) -> tuple[str, int]:
    """(the table's name, memory in bytes) of GPU `name`; a UserError listing the table for an unknown one."""
    key = name.strip().upper().replace(" ", "-").replace("_", "-")
    key = {k.upper(): k for k in GPUS}.get(key) or ALIASES.get(key) or ALIASES.get(key.removeprefix("RTX-"))
    if key is None:
        raise UserError(f"unknown GPU {name!r}; known: {', '.join(GPUS)} (or give --budget, e.g. 24GiB)")
    return key, GPUS[key][0]


def gpu_lines() -> list[str]:
    """One line per GPU of the table: name, memory, what it is."""
    return [f"{name:<10} {memory // GIB:>4} GiB  {what}" for name, (memory, what) in GPUS.items()]
