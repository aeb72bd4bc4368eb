"""Profile one run: a few AdamW training steps at the task's full shapes under the memory trackers.

The step itself holds no measurement code: trackers are marked at phase boundaries. Modes:
- estimate: built on the meta device, materialised as fake tensors; MemTracker counts exact bytes.
- cpu: the same tracker on real CPU tensors, plus process RSS, plus timed steps.
- cuda: allocator peaks per phase on the GPU, plus timed steps.
After the tracked steps, one forward of the same batch in eval mode without gradients is the
"evaluation" phase: what validation of a batch costs beside the trained state.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import SdpaCalls, attention_that_ran, configure_attention
from .build import Built, build, example_batch, module_owner, parameter_counts
from .config import RunSpec
from .errors import UserError
from .memory import ddp_buckets
from .memory import events as allocation_events
from .memory.allocations import AllocationCounter, beyond_tensors
from .memory.base import Trackers
from .memory.cuda import library_workspace_bytes, other_processes_bytes
from .memory.device_memory import largest_im2col, predict_from_events
from .memory.estimate import cuda_allocator_blocks, fake_materialise
from .memory.registry import TrackerContext, build_trackers

TIMED_STEPS = 3  # untracked steps timed after the tracked ones (cpu and cuda modes)
MAX_MICRO_BATCHES = 2  # accumulation's steady-state peak already shows with two micro-batches


class NullTracker:
    """A tracker that measures nothing: untracked steps run the same code."""

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def mark(self, phase: str) -> None:
        pass

    def end_step(self) -> None:
        pass


def train_step(
    model: nn.Module,
    batch: dict[str, dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    grad_clip: float | None,
    tracker: Any,
    micro_batches: int = 1,
    autocast: Callable[[], Any] = nullcontext,
    scaler: Any = None,
    update: bool = True,
) -> torch.Tensor:
    """(forward -> backward) x micro_batches -> (clip) optimizer step -> zero_grad(set_to_none).

    Phases are marked for the trackers. With gradient accumulation the gradients of the first
    micro-batch stay alive through the next forward, which is where accumulation's peak lies.
    `autocast` wraps the forward (AMP); an fp16 `scaler` scales the loss and unscales before clipping.
    update=False: the optimizer phase only drops the gradients (a curve's grid point, see `RunOptions`).
    Returns the last micro-batch's loss, detached.
    """
    for _ in range(micro_batches):
        tracker.mark("forward")
        with autocast():
            loss = model(batch)
        tracker.mark("backward")
        (scaler.scale(loss) if scaler is not None else loss).backward()
    tracker.mark("optimizer")
    if update:
        if scaler is not None:
            scaler.unscale_(optimizer)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tracker.end_step()
    return loss.detach()


def evaluation_pass(model: nn.Module, batch: dict[str, dict[str, torch.Tensor]], tracker: Any) -> None:
    """One forward of `batch` in eval mode under no_grad, marked as the "evaluation" phase."""
    tracker.mark("evaluation")
    model.eval()
    with torch.no_grad():
        model(batch)
    model.train()


def make_optimizer(built: Built) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """AdamW over the trainable parameters only, with the task recipe; foreach as CUDA uses by default."""
    params = [p for p in built.model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing trains in this run (no parameter requires grad)")
    recipe = built.task.recipe
    own = built.method.optimizer(built.model, recipe.lr, recipe.betas, recipe.weight_decay)  # e.g. LoRA-FA's
    if own is not None:
        return own, params
    optimizer = torch.optim.AdamW(
        params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay, foreach=True
    )
    return optimizer, params


def flat_inputs(batch: dict[str, dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    return [t for tower in batch.values() for t in tower.values()]


def protocol(spec: RunSpec, built: Built) -> dict[str, Any]:
    """How the figures were measured; reports compare results only when protocols match."""
    recipe = built.task.recipe
    return {
        "mode": spec.mode,
        "dtype": "float32",
        "amp": None,
        "optimizer": "AdamW(foreach=True)",
        "lr": recipe.lr,
        "weight_decay": recipe.weight_decay,
        "grad_clip": recipe.grad_clip,
        "zero_grad": "set_to_none",
        "batch_per_device": spec.batch,
        "gpus": spec.gpus,
        "shapes": {t.name: {**t.shape} for t in spec.towers},
        "tracked_steps": spec.steps,
        "accumulate": spec.accumulate,
        "micro_batches_profiled": min(spec.accumulate, MAX_MICRO_BATCHES),
        "timed_steps": 0 if spec.mode == "estimate" else TIMED_STEPS,
        "seed": spec.seed,
        "torch_threads": torch.get_num_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "allocator_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "empty_cache": "never; each cuda run starts in a fresh process",
        **built.method.recorded(),
    }


def synchronizer(mode: str) -> Callable[[], None]:
    """What waits for the device before a clock is read: the GPU in cuda mode, nothing otherwise."""
    return torch.cuda.synchronize if mode == "cuda" else (lambda: None)


@dataclass
class Prepared:
    """A run ready to step: the model in train mode on its device, one batch, the optimizer."""

    built: Built
    batch: dict[str, dict[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    attention: dict[str, object]  # what the protocol records about the attention kernel
    sync: Callable[[], None]
    module: nn.Module | None = None  # what the steps call when it is not the model itself (DDP's wrapper)

    @property
    def runs(self) -> nn.Module:
        return self.module if self.module is not None else self.built.model

    def step(self, tracker: Any, micro_batches: int = 1, update: bool = True) -> None:
        train_step(self.runs, self.batch, self.optimizer, self.params, self.built.task.recipe.grad_clip,
                   tracker, micro_batches, update=update)

    def trace(self, tracker: Any, steps: int, micro_batches: int = 1, update: bool = True) -> None:
        """What a profile tracks: `steps` training steps, then the evaluation forward of the same batch."""
        for _ in range(steps):
            self.step(tracker, micro_batches, update)
        evaluation_pass(self.runs, self.batch, tracker)

    def timed_step(self, tracker: Any) -> float:
        """Seconds of one training step, the device synchronised on both sides."""
        self.sync()
        start = time.perf_counter()
        self.step(tracker)
        self.sync()
        return time.perf_counter() - start


def prepare(spec: RunSpec, stack: ExitStack) -> Prepared:
    """Materialise the spec's model (see `materialise`), switch its attention kernel, make a batch and AdamW."""
    built = materialise(spec, stack)
    built.model.train()
    attention = configure_attention(built.model, spec.attention, traced_on_cpu=spec.mode != "cuda")
    batch = example_batch(built, spec)
    optimizer, params = make_optimizer(built)
    return Prepared(built, batch, optimizer, params, attention, synchronizer(spec.mode))


@dataclass
class RunOptions:
    """How to run, not what: never part of a spec's digest."""

    busy_threshold: int | None = 1 << 30  # cuda: refuse to start when other processes hold more than this
    snapshot: str | None = None  # cuda: save the allocator's memory snapshot (Python stacks) to this path
    snapshot_entries: int = 100_000  # bound on recorded allocator events, so snapshots stay small
    calibrate: bool = True  # cuda: also estimate the same spec on fake tensors and store the ratio
    nvml_interval: float = 0.01  # seconds between NVML samples
    data_root: str = "data"  # training: where datasets live
    checkpoints: str | None = None  # training: this run's checkpoint folder (resumed when it holds one)
    resume: bool = True  # training: resume from the checkpoint folder; False (--force): train from scratch
    trackers: list[str] | None = None  # trackers to run (the mode's primary one always runs); None: all
    torchrun: bool = False  # cpu: run gpus > 1 as that many gloo processes under torchrun (cuda always does)
    # cpu: also count every CPU allocation from model build on (torch.profiler): what the tensor tracker cannot see
    count_allocations: bool = True
    replay_allocator: bool = True  # estimate, cpu: replay the CUDA caching allocator on the traced allocations
    # estimate, a memory curve's grid point: one step whose optimizer phase drops the gradients without updating,
    # then the evaluation; the phases whose memory depends on the shape (memory/splice.py; figures partial)
    shape_phases_only: bool = False


def materialise(spec: RunSpec, stack: ExitStack) -> Built:
    """Build the run's model where the mode needs it: fake tensors (estimate), CPU, or the GPU."""
    if spec.mode == "estimate":
        with torch.device("meta"):
            built = build(spec, weights=False)
        fake_materialise(built.model, stack)
        return built
    built = build(spec)
    if spec.mode == "cuda":
        built.model.to("cuda")
        stack.enter_context(torch.device("cuda"))
    return built


def profile(spec: RunSpec, options: RunOptions | None = None,
            wrap: Callable[[nn.Module], nn.Module] | None = None) -> dict[str, Any]:
    """Run the spec's profile; returns params, memory (per counter), timing, protocol and calibration.

    `wrap` (one rank of a data-parallel run, ddp.py) wraps the model in DDP before the steps; without it,
    a spec on several GPUs in estimate or cpu mode gets DDP's gradient buckets from their model.
    """
    options = options or RunOptions()
    if spec.mode == "cuda":
        check_gpu_idle(options.busy_threshold)
    modelled = spec.gpus > 1 and wrap is None  # DDP's buckets counted from their model, not measured
    started = time.perf_counter()
    with ExitStack() as stack:
        counter = stack.enter_context(AllocationCounter()) if options.count_allocations and spec.mode == "cpu" else None
        run = prepare(spec, stack)
        built = run.built
        if wrap is not None:
            run.module = wrap(built.model)
        built_seconds = time.perf_counter() - started
        # one process on one device: its recorded allocations are what a GPU's allocator would be asked for
        replayed = options.replay_allocator and spec.mode != "cuda" and spec.gpus == 1 and wrap is None
        # a caller already recording (a shape curve's trace) gets the same events
        events = allocation_events.active() if replayed else None
        if replayed and events is None:
            events = stack.enter_context(allocation_events.recording())
        convolutions = stack.enter_context(largest_im2col(built.model)) if replayed else None
        trackers = make_trackers(spec, run, options,
                                 grads_in_buckets=modelled and spec.ddp.get("gradient_as_bucket_view", False))
        traced = time.perf_counter()
        with allocator_history(options.snapshot if spec.mode == "cuda" else None, options.snapshot_entries):
            with trackers, SdpaCalls() as sdpa:
                if options.shape_phases_only:
                    run.trace(trackers, 1, min(spec.accumulate, MAX_MICRO_BATCHES), update=False)
                else:
                    run.trace(trackers, spec.steps, min(spec.accumulate, MAX_MICRO_BATCHES))
        timing: dict[str, Any] = {"build_seconds": built_seconds, "tracked_seconds": time.perf_counter() - traced}
        if spec.mode != "estimate":
            seconds = [run.timed_step(NullTracker()) for _ in range(TIMED_STEPS)]
            timing.update(step_seconds=statistics.median(seconds), step_seconds_all=seconds)
        else:
            timing["step_seconds"] = None  # fake tensors run no kernels: no step time to report
        workspace = library_workspace_bytes() if spec.mode == "cuda" else None
    memory = trackers.results()
    if counter is not None:
        counted = counter.result()
        tensors = memory.get("memtracker_real", {}).get("peak_bytes")
        memory[counter.counter] = {**counted, **beyond_tensors(counted["peak_bytes"], tensors, built.model)}
    if events is not None:  # what a GPU would show, predicted (unverified on a GPU: docs/allocator.md)
        primary = next(name for name in memory if name.startswith("memtracker"))
        memory[primary]["allocator_replay"] = predict_from_events(events, cudnn_bound=convolutions[0])
    out = {
        "params": parameter_counts(built),
        "memory": memory,
        "timing": timing,
        "protocol": {**protocol(spec, built), **attention_that_ran(run.attention, sdpa.count)},
    }
    if modelled:
        nbytes, buckets = ddp_buckets.bucket_bytes(built.model, spec.ddp)
        for name, figures in memory.items():
            if name.startswith("memtracker"):
                memory[name] = ddp_buckets.add_buckets(figures, nbytes, trainable_bytes_by_owner(built))
        out["protocol"]["ddp"] = ddp_buckets.describe(spec.ddp, nbytes, buckets)
    if spec.mode == "cuda" and options.snapshot:
        memory["cuda_allocator"]["snapshot"] = options.snapshot
    if wrap is not None:  # a rank: the launcher calibrates the merged peak once
        out["library_workspace_bytes"] = workspace
    elif spec.mode == "cuda" and options.calibrate:
        out["calibration"] = calibrate(spec, memory["cuda_allocator"]["peak_bytes"], workspace)
    return out


def trainable_bytes_by_owner(built: Built) -> dict[str, int]:
    """Trainable parameter bytes per owner (backbone, method, head, other): how gradients, and so DDP's
    buckets, split between them."""
    owner_of = module_owner(built)
    out: dict[str, int] = {}
    for name, p in built.model.named_parameters():
        if p.requires_grad:
            owner = owner_of(name.rpartition(".")[0])
            out[owner] = out.get(owner, 0) + p.numel() * p.element_size()
    return out


def calibrate(spec: RunSpec, measured: int, workspace: int | None = None) -> dict[str, Any]:
    """Estimate the same spec on fake tensors and compare with the allocator's measured peak.

    The estimate counts storages in the allocator's 512-byte blocks, as `allocated_bytes` does.
    `workspace`: the cuBLAS workspaces' bytes, held in the allocator from the first matmul on and so
    inside every measured peak, though no tensor owns them; the second ratio leaves them out.
    """
    with cuda_allocator_blocks():
        estimate = profile(RunSpec.from_dict({**spec.to_dict(), "mode": "estimate"}))["memory"]["memtracker_fake"]
    tensors = measured - workspace if workspace is not None else None
    return {
        "estimate_peak_bytes": estimate["peak_bytes"],
        "estimate_counter": "memtracker_fake (storages rounded up to the CUDA allocator's 512-byte blocks)",
        "measured_peak_bytes": measured,
        "measured_counter": "cuda_allocator (max_memory_allocated over phases)",
        "ratio": estimate["peak_bytes"] / measured if measured else None,
        "library_workspace_bytes": workspace,
        "ratio_without_workspace": estimate["peak_bytes"] / tensors if tensors else None,
    }


@contextmanager
def allocator_history(path: str | None, entries: int) -> Iterator[None]:
    """Record the CUDA allocator's history (Python stacks, at most `entries` events) and dump it to `path`."""
    if path is None:
        yield
        return
    torch.cuda.memory._record_memory_history(max_entries=entries, stacks="python")
    try:
        yield
        torch.cuda.memory._dump_snapshot(path)
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)


def check_gpu_idle(threshold: int | None) -> None:
    """Refuse (a UserError, so the run records why) when other processes hold more GPU memory than threshold."""
    if not torch.cuda.is_available():
        raise UserError("cuda mode needs a CUDA GPU and none is visible; use --mode estimate or cpu")
    if threshold is None:
        return
    busy, how = other_processes_bytes()
    if busy > threshold:
        raise UserError(
            f"the GPU is busy: {busy / 2**30:.2f} GiB held {how}, above the {threshold / 2**30:.2f} GiB threshold; "
            "free it or raise --busy-threshold"
        )


def make_trackers(spec: RunSpec, run: Prepared, options: RunOptions, grads_in_buckets: bool = False) -> Trackers:
    """The registered trackers of the run's mode (memory/registry.py), less those switched off."""
    model = run.built.model
    context = TrackerContext(spec.mode, model, run.optimizer, flat_inputs(run.batch), module_owner(run.built),
                             options.nvml_interval, grads_in_buckets)
    return build_trackers(context, options.trackers)
