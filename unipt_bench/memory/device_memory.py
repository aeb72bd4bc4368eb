"""Predicted device memory: what `nvidia-smi` shows for a training process, from its replayed allocator.

device memory = reserved (the caching allocator's segments, from the replay; the cuBLAS workspace is
                 allocated through the allocator, so it is inside)
              + the CUDA context (driver, kernels loaded on first use)
              + a bound for cuDNN's convolution workspaces (convolutional models only)

Every part that is not replayed is an assumption, stated with its source in ASSUMPTIONS, and every figure
carries `verified_on_gpu = False` until benchmarks/gpu-check.sh has measured it (docs/gpu-calibration.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..errors import UserError
from .allocator_replay import AllocatorSettings, Replayer, stream_of

MiB = 1 << 20

# aten/src/ATen/cuda/CublasHandlePool.cpp, parseChosenWorkspaceSize (pytorch/pytorch): ":4096:2:16:8"
# (8 MiB + 128 KiB) by default, ":4096:8" (32 MiB) on compute capability 9.x (Hopper) and, in newer
# releases, 10.x-12.x (Blackwell); CUBLAS_WORKSPACE_CONFIG=":SIZE_KIB:COUNT..." overrides it.
CUBLAS_DEFAULT = 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLAS_LARGE = 4096 * 8 * 1024
CUBLAS_LARGE_MAJORS = frozenset({9, 10, 11, 12})

# The CUDA context with lazy module loading (PyTorch sets CUDA_MODULE_LOADING=LAZY since 1.13,
# pytorch/pytorch#86509, which measured 287,047,680 B lazy against 666,632,192 B eager on its test GPU).
# Kernels load on first use, so a training process holds more than the bare context: 512 MiB is
# assumed here and measured by benchmarks/gpu-check.sh (nvidia-smi's process memory minus reserved).
CUDA_CONTEXT = 512 * MiB

ASSUMPTIONS = {
    "cuda_context": "CUDA context with lazy module loading, 512 MiB assumed (pytorch/pytorch#86509 measured "
                    "274 MiB lazy, 636 MiB eager, on one GPU); unverified on a GPU",
    "cublas_workspace": "one cuBLAS workspace per (handle, stream), allocated through the caching allocator at the "
                        "first matmul: 32 MiB on compute capability 9.x-12.x, else 8.125 MiB "
                        "(CublasHandlePool.cpp parseChosenWorkspaceSize), or CUBLAS_WORKSPACE_CONFIG",
    "cudnn_workspace": "cuDNN convolution workspace bounded by the largest convolution's im2col buffer "
                       "(batch x C_in/groups x kh x kw x H_out x W_out elements); unverified on a GPU",
    "kernels": "the replayed stream is the CPU trace of the same step: GPU kernels (flash or memory-efficient "
               "attention, cuDNN) may keep other temporaries",
}


def cublas_workspace_bytes(major: int, config: str | None = None) -> int:
    """The cuBLAS workspace of one (handle, stream) on a GPU of compute capability `major`.x."""
    if config:
        pairs = re.findall(r":([0-9]+):([0-9]+)", config)
        if not pairs:
            raise UserError(f"cannot read CUBLAS_WORKSPACE_CONFIG {config!r}; write :SIZE_KIB:COUNT, e.g. :4096:8")
        return sum(int(size) * 1024 * int(count) for size, count in pairs)
    return CUBLAS_LARGE if major in CUBLAS_LARGE_MAJORS else CUBLAS_DEFAULT


@dataclass
class DeviceMemory:
    """Predicted device memory of one run, by part (bytes)."""

    reserved: int  # the replayed allocator's max_memory_reserved (cuBLAS workspace inside)
    cublas_workspace: int  # the part of `reserved` that is the cuBLAS workspace
    cuda_context: int
    cudnn_workspace_bound: int  # 0 for models without convolutions
    verified_on_gpu: bool = False
    assumptions: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.reserved + self.cuda_context + self.cudnn_workspace_bound

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def predict(reserved: int, workspace: int, cudnn_bound: int = 0, context: int = CUDA_CONTEXT) -> DeviceMemory:
    """The parts, with the assumptions that apply to them."""
    names = ["cuda_context", "cublas_workspace", "kernels"] + (["cudnn_workspace"] if cudnn_bound else [])
    return DeviceMemory(reserved, workspace, context, cudnn_bound, assumptions=[ASSUMPTIONS[n] for n in names])


@contextmanager
def largest_im2col(model: nn.Module) -> Iterator[list[int]]:
    """While entered, the largest im2col buffer (bytes) of the model's 2-d convolutions, in a one-item list
    (0 for a model without convolutions): the cuDNN workspace bound of device memory."""
    largest = [0]

    def seen(conv: nn.Conv2d, inputs: Any, output: Any) -> None:  # output: [B, C_out, H_out, W_out]
        batch, _, height, width = output.shape
        nbytes = im2col_bytes(batch, conv.in_channels, conv.groups, conv.kernel_size, (height, width),
                              output.element_size())
        largest[0] = max(largest[0], nbytes)

    handles = [m.register_forward_hook(seen) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        yield largest
    finally:
        for handle in handles:
            handle.remove()


def im2col_bytes(batch: int, in_channels: int, groups: int, kernel: tuple[int, int], out_hw: tuple[int, int],
                 element_size: int) -> int:
    """Bytes of one convolution's im2col buffer: the workspace GEMM-based cuDNN algorithms may ask for."""
    return batch * (in_channels // groups) * kernel[0] * kernel[1] * out_hw[0] * out_hw[1] * element_size


WORKSPACE_STORAGE = -2  # a storage id no recorded storage has


class GpuMemoryReplay:
    """A run's predicted GPU memory from its recorded events (memory/events.py), replayed on the caching
    allocator of a GPU of compute capability `gpu_major`.x: fed whole (a profile) or one tracked stretch
    at a time (training), the allocator's state carrying over. The cuBLAS workspace is allocated where the
    first matmul runs (the first event of the first forward pass) and never freed."""

    def __init__(self, gpu_major: int = 9, settings: AllocatorSettings | None = None,
                 device_bytes: int | None = None) -> None:
        self.gpu_major = gpu_major
        self.workspace = cublas_workspace_bytes(gpu_major)
        self.replayer = Replayer(settings, device_bytes)
        self.placed = False
        self.cudnn_bound = 0

    def with_workspace(self, stream: Iterable[tuple[str, int, int, str, int]]
                       ) -> Iterator[tuple[str, int, int, str, int]]:
        for event in stream:
            if not self.placed and event[3] == "forward":
                self.placed = True
                yield "alloc", WORKSPACE_STORAGE, self.workspace, "forward", event[4]
            yield event

    def feed(self, events: Any, first_step: int = 0, nbytes: Any = None, stretch: bool = False,
             cudnn_bound: int = 0) -> None:
        """Replay one recording; `stretch`: a tracked stretch of a longer run, whose storages are released at
        its end (the next stretch registers those that live on)."""
        self.cudnn_bound = max(self.cudnn_bound, cudnn_bound)
        self.replayer.feed(self.with_workspace(stream_of(events, nbytes)), first_step)
        if stretch:
            self.replayer.release_all(keep=(WORKSPACE_STORAGE,))

    def result(self) -> dict[str, Any]:
        replayed = self.replayer.result()
        device = predict(replayed.max_reserved, self.workspace, self.cudnn_bound)
        replayer = self.replayer
        return {"allocator": replayed.to_dict(), "device_memory": device.to_dict(), "gpu_major": self.gpu_major,
                **{name: {str(step): steps[step] for step in sorted(steps)} for name, steps in (
                    ("step_reserved", replayer.step_reserved), ("step_allocated", replayer.step_allocated),
                    ("evaluation_reserved", replayer.evaluation_reserved))},
                "verified_on_gpu": False}


def predict_from_events(events: Any, gpu_major: int = 9, settings: AllocatorSettings | None = None,
                        device_bytes: int | None = None, cudnn_bound: int = 0,
                        nbytes: Any = None) -> dict[str, Any]:
    """Replay one traced run's recorded events: the allocator's figures and the predicted device memory by part."""
    replay = GpuMemoryReplay(gpu_major, settings, device_bytes)
    replay.feed(events, nbytes=nbytes, cudnn_bound=cudnn_bound)
    return replay.result()
