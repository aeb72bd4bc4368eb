"""Train one run on real data: AdamW over what trains, warm-up then cosine or step decay, gradient
clipping, optional AMP, periodic validation keeping the best checkpoint, resume after interruption,
and the memory trackers on the steps that reach the run's peak (train_tracking.py). Seeded: on the CPU
two runs give the same numbers. The recipe comes from the suite (train_recipe.py).

The training step is the profiler's (`train_step`); this module adds data, schedule, evaluation and
checkpoints around it.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_file
from .attention import configure_attention
from .backbones import create_backbone, weights_source
from .build import Built, build, module_owner, parameter_counts
from .cache import HiddenCache
from .config import RunSpec, TrainSpec
from .data.inputs import TowerInputs
from .errors import UserError
from .memory.registry import TrackerContext, build_trackers
from .methods.base import SideTuned
from .profile import RunOptions, protocol, synchronizer, train_step
from .results import now, stamp
from .tasks import TASKS
from .tasks.vqa_data import to_device
from .train_recipe import build_optimizer, grad_clip, hardest_from_step, recipe_protocol, resolve_budget
from .train_tracking import StepTracking, peak_at


def tower_modalities(spec: RunSpec) -> dict[str, str]:
    """Each tower's input modality, from backbones built on the meta device (no weights loaded)."""
    with torch.device("meta"):
        return {t.name: create_backbone(t.backbone).modality for t in spec.towers}


def schedule(train: TrainSpec) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then cosine or linear to 0, a x0.1 step, or constant."""
    warmup = max(1, round(train.warmup * train.steps)) if train.warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, train.steps - warmup))
        if train.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if train.schedule == "linear":  # transformers' get_linear_schedule_with_warmup
            return 1.0 - progress
        if train.schedule == "step":
            return 0.1 if step >= train.decay_at * train.steps else 1.0
        return 1.0

    return factor


def batch_rows(size: int, batch: int, step: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """The rows of training step `step`: epoch e walks a permutation seeded by (seed, e), so any step
    can be reproduced without replaying the ones before it (what resuming needs).

    Data-parallel (world > 1 processes of `batch` rows each): step s takes the next world x batch rows of
    the permutation and rank r every world-th of them from the r-th, as DistributedSampler deals them out.
    """
    per_epoch = size // (batch * world)
    if per_epoch == 0:
        raise UserError(f"the training split has {size} examples, fewer than one batch of {batch * world}")
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[offset * batch * world : (offset + 1) * batch * world][rank::world].tolist()


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save through a unique temporary file, fsynced, then renamed: concurrent writers never collide
    and a kill never leaves half a checkpoint."""
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "rng", "step", "best", "history"}


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The last checkpoint in `folder`, or None when there is none or it (or the best one it names) does not
    load: such files are set aside with a warning, and the run starts over."""
    last, best = folder / "last.pt", folder / "best.pt"
    if not last.is_file():
        return None
    try:
        saved = torch.load(last, weights_only=True)
        missing = CHECKPOINT_KEYS - set(saved) if isinstance(saved, dict) else CHECKPOINT_KEYS
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        if saved["best"] is not None:
            torch.load(best, weights_only=True)["model"]  # noqa: B018  (the run ends by loading it)
        return saved
    except Exception as exc:  # noqa: BLE001  (any way a checkpoint fails to load means: start over)
        set_aside(folder, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return None


def set_aside(folder: Path, reason: str) -> None:
    """Rename a checkpoint folder's files to *.unusable-<time> and warn: the run trains from scratch."""
    suffix = f".unusable-{stamp(now())}"
    for path in (folder / "last.pt", folder / "best.pt"):
        if path.exists():
            path.rename(path.with_name(path.name + suffix))
    warnings.warn(f"checkpoint in {folder} does not load ({reason}); set aside as *{suffix}, training from scratch",
                  stacklevel=2)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: trainable parameters and the saved buffers (BatchNorm statistics)."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in keep}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing = model.load_state_dict(state, strict=False)
    if missing.unexpected_keys:
        raise UserError(f"checkpoint does not match the model: unexpected {missing.unexpected_keys[:3]}")


def attach_caches(built: Built, train: TrainSpec) -> dict[str, HiddenCache]:
    """A hidden-state cache on every side-method tower, unless switched off (inputs here are never augmented)."""
    caches = {}
    if train.cache == "off":
        return caches
    for name, tower in built.towers.items():
        if isinstance(tower.module, SideTuned):
            tower.module.cache = caches[name] = HiddenCache()
    return caches


def use_cache(built: Built, caches: dict[str, HiddenCache], on: bool) -> None:
    """Attach (or detach) each side-method tower's hidden-state cache."""
    for name, cache in caches.items():
        built.towers[name].module.cache = cache if on else None


def train_run(spec: RunSpec, options: RunOptions, report: Callable[[dict[str, Any]], None] = lambda info: None,
              wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None, rank: int = 0, world: int = 1
              ) -> dict[str, Any]:
    """Train and test `spec`; returns params, memory, timing, protocol and metrics for its result.

    Data come from options.data_root; checkpoints go to options.checkpoints (resumed when present).
    Data-parallel (ddp.py): `wrap` puts the model in DDP, each of the `world` ranks trains on its share of
    every step's rows, and rank 0 alone validates, checkpoints and tests (the others return no metrics).
    """
    if not options.checkpoints:
        raise UserError("training needs a checkpoint folder")
    data_root, checkpoints = Path(options.data_root), Path(options.checkpoints)
    if spec.mode == "estimate":
        raise UserError("training needs real tensors: run it with --mode cpu or cuda (auto picks one)")
    if spec.mode == "cuda" and not torch.cuda.is_available():
        raise UserError("cuda mode needs a CUDA GPU and none is visible; use --mode cpu")
    train = TrainSpec.from_options(spec.train)
    task = TASKS.get(spec.task).from_options(spec.task_options)
    data = task.load_data(train, data_root, spec.seed, tower_modalities(spec))
    share = data.size("train") // world  # each rank's share of an epoch (data-parallel: world ranks)
    train = resolve_budget(train, spec, share)
    hardest_from = hardest_from_step(train, spec, share)
    built = build(RunSpec.from_dict({**spec.to_dict(), "task_options": {**spec.task_options, **data.task_options()}}))
    device = torch.device("cuda" if spec.mode == "cuda" else "cpu")
    built.model.to(device)
    # the configuration's attention kernel, as profiling traces it: on the CPU fused SDPA needs attention
    # dropout off (otherwise the math path stores [B, H, N, N] probabilities no GPU kernel keeps)
    attention = configure_attention(built.model, spec.attention, traced_on_cpu=spec.mode != "cuda")
    inputs = {t.name: TowerInputs(t, built.towers[t.name].backbone, weights_source(t.backbone, t.weights),
                                  train.padding, train.max_len) for t in spec.towers}
    caches = attach_caches(built, train)
    optimizer, params = build_optimizer(built, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(train))
    amp = train.amp != "none"
    if train.amp == "fp16" and spec.mode != "cuda":
        raise UserError("train.amp = fp16 needs a GPU; use bf16 on the CPU")
    scaler = torch.amp.GradScaler("cuda") if train.amp == "fp16" else None
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16 if train.amp == "bf16" else torch.float16)) \
        if amp else nullcontext
    selection = train.select_on or data.selection
    test_splits = tuple(getattr(data, "test_splits", ("test",)))

    context = TrackerContext(spec.mode, built.model, optimizer, [], module_owner(built.model), options.nvml_interval)
    last, best_path = checkpoints / "last.pt", checkpoints / "best.pt"
    # earlier segments of this run (before a resume): their timed steps, seconds and last loss
    state: dict[str, Any] = {"step": 0, "best": None, "history": [], "resumed_from": None,
                             "seconds": [], "train_seconds": 0.0, "final_loss": None}
    saved = load_checkpoint(checkpoints) if options.resume else None
    if saved is not None:
        try:
            load_trainable(built.model, saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        except (UserError, ValueError, KeyError, RuntimeError) as exc:
            set_aside(checkpoints, str(exc).splitlines()[0])
            return train_run(spec, options, report, wrap, rank, world)  # a fresh model, optimizer and schedule
        torch.set_rng_state(saved["rng"])
        state.update({k: saved[k] for k in ("step", "best", "history")}, resumed_from=saved["step"])
        state.update({k: saved[k] for k in ("seconds", "train_seconds", "final_loss") if k in saved})
    # the same trackers as profiling (NVML too on a GPU), over the steps StepTracking picks
    tracking = StepTracking(spec.mode, lambda: build_trackers(context, options.trackers),
                            saved.get("tracking") or {"memory": saved.get("memory")} if saved else None)

    def checkpoint() -> None:
        save_atomic({"model": trainable_state(built.model), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "step": state["step"],
                     "best": state["best"], "history": state["history"], "tracking": tracking.state(state["step"]),
                     "seconds": [*state["seconds"], *seconds], "train_seconds": state["train_seconds"] + elapsed(),
                     "final_loss": losses[-1] if losses else state["final_loss"]}, last)

    def validate() -> None:
        tracking.tracker().mark("evaluation")
        built.model.eval()
        with autocast():
            metrics = data.evaluate(built.model, "val", inputs, train.eval_batch, device)
        built.model.train()
        if selection not in metrics:
            raise UserError(f"train.select_on {selection!r} is not a validation metric of this task "
                            f"(it reports {', '.join(metrics)})")
        state["history"].append({"step": state["step"], **metrics})
        score = metrics[selection]
        if state["best"] is None or score > state["best"]["score"]:
            state["best"] = {"step": state["step"], "score": score}
            save_atomic({"model": trainable_state(built.model)}, best_path)
        report({"event": "eval", "step": state["step"], selection: score})

    task_state = getattr(built.model, "task", None)
    lead = rank == 0  # validates, checkpoints and tests (on the model itself: DDP's forward is collective)
    runs = wrap(built.model) if wrap is not None else built.model
    built.model.train()
    seconds: list[float] = []
    losses: list[float] = []
    clip = grad_clip(train, built)
    sync = synchronizer(spec.mode)
    started = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - started
    try:
        while state["step"] < train.steps:
            step = state["step"]
            rows = batch_rows(data.size("train"), spec.batch, step, spec.seed, rank, world)
            batch = to_device(data.batch("train", rows, inputs), device)
            tracked = tracking.before_step(step, batch)
            # the hidden-state cache lives in host memory: on a GPU it never counts, on the CPU the tracker would
            # count its rows as the step's memory, so a tracked cpu step runs the backbone as profiling does
            use_cache(built, caches, not (tracked and spec.mode != "cuda"))
            if train.hardest_after > 0 and hasattr(task_state, "hardest_negatives"):
                task_state.hardest_negatives = step >= hardest_from  # all negatives first (VSE warm-up)
            sync()
            begin = time.perf_counter()
            loss = train_step(runs, batch, optimizer, params, clip, tracking.tracker(),
                              autocast=autocast, scaler=scaler)
            losses.append(float(loss))
            sync()
            if not tracked or spec.mode == "cuda":
                seconds.append(time.perf_counter() - begin)
            scheduler.step()
            state["step"] += 1
            report({"event": "step", "step": state["step"], "steps": train.steps, "loss": losses[-1],
                    "samples_per_s": spec.batch / (time.perf_counter() - begin)})
            if lead and (state["step"] % train.eval_every == 0 or state["step"] == train.steps):
                validate()
                checkpoint()
        train_seconds = state["train_seconds"] + elapsed()
        if not lead:
            return rank_out(spec, built, train, tracking, state["step"], [*state["seconds"], *seconds], train_seconds)
        load_trainable(built.model, torch.load(best_path, weights_only=True)["model"])
        if spec.mode == "cuda" and tracking.open:  # the allocator's counters cost nothing: test evaluation tracked too
            tracking.tracker().mark("evaluation")
        else:  # the tensor tracker would slow the whole test set 8-10x
            tracking.close(state["step"])
        built.model.eval()
        with autocast():
            tests = {split: data.evaluate(built.model, split, inputs, train.eval_batch, device) for split in test_splits}
    finally:
        tracking.close(state["step"])
    memory = tracking.memory or {}
    for figures in memory.values():
        where = peak_at(figures, tracking.tracked_steps, tracking.shapes_at)
        if where:
            figures["peak_at"] = where
    if state["resumed_from"] and saved is not None and not (saved.get("tracking") or saved.get("memory")):
        for figures in memory.values():  # a checkpoint that kept no memory figures
            figures["note"] = f"covers the steps after the resume at step {state['resumed_from']} only"
    timed = [*state["seconds"], *seconds]
    first = test_splits[0]
    return {
        "params": parameter_counts(built),
        "memory": memory,
        "timing": {"step_seconds": statistics.median(timed) if timed else None,
                   "train_seconds": train_seconds, "steps_timed": len(timed)},
        "protocol": {**protocol(spec, built), **attention, **recipe_protocol(train, built), "train": train.options(),
                     "amp": None if not amp else train.amp},
        "metrics": {"test": tests[first], "splits": tests, "best": state["best"], "history": state["history"],
                    "baseline": data.baseline(first), "selection": selection, "data": data.describe(),
                    "final_loss": losses[-1] if losses else state["final_loss"],
                    "resumed_from_step": state["resumed_from"], "tracked_steps": tracking.tracked_steps,
                    "batch_shapes": tracking.shape_counts(),
                    "tokenizer": {name: i.description for name, i in inputs.items() if i.modality == "text"},
                    "cache": {name: c.stats() for name, c in caches.items()},
                    "weights": {t.name: weights_source(t.backbone, t.weights) for t in spec.towers}},
    }


def rank_out(spec: RunSpec, built: Built, train: TrainSpec, tracking: StepTracking, step: int, timed: list[float],
             train_seconds: float) -> dict[str, Any]:
    """What a data-parallel rank other than 0 returns: its memory and step times; rank 0 has the metrics."""
    tracking.close(step)
    return {"params": parameter_counts(built), "memory": tracking.memory or {},
            "timing": {"step_seconds": statistics.median(timed) if timed else None, "train_seconds": train_seconds,
                       "steps_timed": len(timed)},
            "protocol": {**protocol(spec, built), **recipe_protocol(train, built), "train": train.options()},
            "metrics": None}
