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
from .attention import SdpaCalls, attention_that_ran, configure_attention
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
    check_trainable(spec, options)
    saved = load_checkpoint(Path(options.checkpoints)) if options.resume else None
    run = TrainingRun(spec, options, report, rank, world, saved)
    if saved is not None and not run.restore(saved):
        run = TrainingRun(spec, options, report, rank, world, None)  # a fresh model, optimizer and schedule
    return run.train(wrap)


def check_trainable(spec: RunSpec, options: RunOptions) -> None:
    """Refuse, in one line, a run that cannot train here."""
    if not options.checkpoints:
        raise UserError("training needs a checkpoint folder")
    if spec.mode == "estimate":
        raise UserError("training needs real tensors: run it with --mode cpu or cuda (auto picks one)")
    if spec.mode == "cuda" and not torch.cuda.is_available():
        raise UserError("cuda mode needs a CUDA GPU and none is visible; use --mode cpu")


class TrainingRun:
    """One training run's model, data, optimizer, schedule and trackers, and what it has done so far.

    `state` is what a checkpoint carries from an earlier process of the same run (its step, best
    validation, history, timed steps, seconds and last loss); `seconds` and `losses` are this process's.
    """

    def __init__(self, spec: RunSpec, options: RunOptions, report: Callable[[dict[str, Any]], None], rank: int,
                 world: int, saved: dict[str, Any] | None) -> None:
        self.spec, self.report, self.rank, self.world = spec, report, rank, world
        self.train_spec = train = TrainSpec.from_options(spec.train)
        self.data = TASKS.get(spec.task).from_options(spec.task_options).load_data(
            train, Path(options.data_root), spec.seed, tower_modalities(spec))
        share = self.data.size("train") // world  # each rank's share of an epoch (data-parallel: world ranks)
        self.train_spec = train = resolve_budget(train, spec, share)
        self.hardest_from = hardest_from_step(train, spec, share)
        self.built = built = build(RunSpec.from_dict({**spec.to_dict(),
                                                      "task_options": {**spec.task_options, **self.data.task_options()}}))
        self.device = torch.device("cuda" if spec.mode == "cuda" else "cpu")
        built.model.to(self.device)
        # the configuration's attention kernel, as profiling traces it: on the CPU fused SDPA needs attention
        # dropout off (otherwise the math path stores [B, H, N, N] probabilities no GPU kernel keeps)
        self.attention = configure_attention(built.model, spec.attention, traced_on_cpu=spec.mode != "cuda")
        self.inputs = {t.name: TowerInputs(t, built.towers[t.name].backbone, weights_source(t.backbone, t.weights),
                                           train.padding, train.max_len) for t in spec.towers}
        self.caches = attach_caches(built, train)
        self.optimizer, self.params = build_optimizer(built, train)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule(train))
        if train.amp == "fp16" and spec.mode != "cuda":
            raise UserError("train.amp = fp16 needs a GPU; use bf16 on the CPU")
        self.scaler = torch.amp.GradScaler("cuda") if train.amp == "fp16" else None
        self.selection = train.select_on or self.data.selection
        self.test_splits = tuple(getattr(self.data, "test_splits", ("test",)))
        self.checkpoints = Path(options.checkpoints)
        self.state: dict[str, Any] = {"step": 0, "best": None, "history": [], "resumed_from": None,
                                      "seconds": [], "train_seconds": 0.0, "final_loss": None}
        self.saved_memory = bool(saved and (saved.get("tracking") or saved.get("memory")))
        context = TrackerContext(spec.mode, built.model, self.optimizer, [], module_owner(built),
                                 options.nvml_interval)
        # the same trackers as profiling (NVML too on a GPU), over the steps StepTracking picks
        self.tracking = StepTracking(spec.mode, lambda: build_trackers(context, options.trackers),
                                     saved.get("tracking") or {"memory": saved.get("memory")} if saved else None)
        self.seconds: list[float] = []
        self.losses: list[float] = []
        self.sdpa = SdpaCalls()
        self.started = time.perf_counter()

    def restore(self, saved: dict[str, Any]) -> bool:
        """Continue from a checkpoint; False (its files set aside) when it does not fit this run's model."""
        try:
            load_trainable(self.built.model, saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
        except (UserError, ValueError, KeyError, RuntimeError) as exc:
            set_aside(self.checkpoints, str(exc).splitlines()[0])
            return False
        torch.set_rng_state(saved["rng"])
        self.state.update({k: saved[k] for k in ("step", "best", "history")}, resumed_from=saved["step"])
        self.state.update({k: saved[k] for k in ("seconds", "train_seconds", "final_loss") if k in saved})
        return True

    def autocast(self) -> Any:
        amp = self.train_spec.amp
        if amp == "none":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def timed(self) -> list[float]:
        """Seconds of every timed step of the run, earlier processes' first."""
        return [*self.state["seconds"], *self.seconds]

    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else self.state["final_loss"]

    def train(self, wrap: Callable[[torch.nn.Module], torch.nn.Module] | None) -> dict[str, Any]:
        """Step to the end (validating and checkpointing on rank 0), then test the best checkpoint."""
        runs = wrap(self.built.model) if wrap is not None else self.built.model
        lead = self.rank == 0  # validates, checkpoints and tests (on the model itself: DDP's forward is collective)
        self.built.model.train()
        clip = grad_clip(self.train_spec, self.built)
        try:
            with self.sdpa:  # what attention ran, whatever the configuration switched
                while self.state["step"] < self.train_spec.steps:
                    self.step(runs, clip)
                    if lead and (self.state["step"] % self.train_spec.eval_every == 0
                                 or self.state["step"] == self.train_spec.steps):
                        self.validate()
                        self.checkpoint()
            train_seconds = self.state["train_seconds"] + self.elapsed()
            if not lead:
                return self.rank_result(train_seconds)
            tests = self.test()
        finally:
            self.tracking.close(self.state["step"])
        return self.result(tests, train_seconds)

    def step(self, runs: torch.nn.Module, clip: float | None) -> None:
        """One training step, tracked when StepTracking wants it, timed when tracking does not slow it."""
        spec, step = self.spec, self.state["step"]
        rows = batch_rows(self.data.size("train"), spec.batch, step, spec.seed, self.rank, self.world)
        batch = to_device(self.data.batch("train", rows, self.inputs), self.device)
        tracked = self.tracking.before_step(step, batch)
        # the hidden-state cache lives in host memory: on a GPU it never counts, on the CPU the tracker would
        # count its rows as the step's memory, so a tracked cpu step runs the backbone as profiling does
        use_cache(self.built, self.caches, not (tracked and spec.mode != "cuda"))
        task_state = getattr(self.built.model, "task", None)
        if self.train_spec.hardest_after > 0 and hasattr(task_state, "hardest_negatives"):
            task_state.hardest_negatives = step >= self.hardest_from  # all negatives first (VSE warm-up)
        sync = synchronizer(spec.mode)
        sync()
        begin = time.perf_counter()
        loss = train_step(runs, batch, self.optimizer, self.params, clip, self.tracking.tracker(),
                          autocast=self.autocast, scaler=self.scaler)
        self.losses.append(float(loss))
        sync()
        if not tracked or spec.mode == "cuda":
            self.seconds.append(time.perf_counter() - begin)
        self.scheduler.step()
        self.state["step"] += 1
        self.report({"event": "step", "step": self.state["step"], "steps": self.train_spec.steps,
                     "loss": self.losses[-1], "samples_per_s": spec.batch / (time.perf_counter() - begin)})

    def evaluate(self, split: str) -> dict[str, Any]:
        """The task's metrics on `split`, in eval mode, tracked as the "evaluation" phase."""
        model = self.built.model
        with self.tracking.evaluation(self.state["step"]):
            use_cache(self.built, self.caches, self.spec.mode == "cuda")  # as a tracked step runs (see `step`)
            model.eval()
            try:
                with self.autocast():
                    return self.data.evaluate(model, split, self.inputs, self.train_spec.eval_batch, self.device)
            finally:
                model.train()

    def validate(self) -> None:
        """Validate, record the history, and keep the best checkpoint by the selection metric."""
        metrics = self.evaluate("val")
        if self.selection not in metrics:
            raise UserError(f"train.select_on {self.selection!r} is not a validation metric of this task "
                            f"(it reports {', '.join(metrics)})")
        state = self.state
        state["history"].append({"step": state["step"], **metrics})
        score = metrics[self.selection]
        if state["best"] is None or score > state["best"]["score"]:
            state["best"] = {"step": state["step"], "score": score}
            save_atomic({"model": trainable_state(self.built.model)}, self.checkpoints / "best.pt")
        self.report({"event": "eval", "step": state["step"], self.selection: score})

    def checkpoint(self) -> None:
        state = self.state
        save_atomic({"model": trainable_state(self.built.model), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state(), "step": state["step"],
                     "best": state["best"], "history": state["history"],
                     "tracking": self.tracking.state(state["step"]), "seconds": self.timed(),
                     "train_seconds": state["train_seconds"] + self.elapsed(), "final_loss": self.final_loss()},
                    self.checkpoints / "last.pt")

    def test(self) -> dict[str, dict[str, Any]]:
        """Every test split's metrics, from the best validation checkpoint."""
        load_trainable(self.built.model, torch.load(self.checkpoints / "best.pt", weights_only=True)["model"])
        return {split: self.evaluate(split) for split in self.test_splits}

    def memory(self) -> dict[str, Any]:
        """Every counter's figures, each with where its peak happened."""
        tracking = self.tracking
        memory = tracking.memory or {}
        for figures in memory.values():
            where = peak_at(figures, tracking.tracked_steps, tracking.shapes_at)
            if where:
                figures["peak_at"] = where
        if self.state["resumed_from"] and not self.saved_memory:
            for figures in memory.values():  # a checkpoint that kept no memory figures
                figures["note"] = f"covers the steps after the resume at step {self.state['resumed_from']} only"
        return memory

    def timing(self, train_seconds: float) -> dict[str, Any]:
        timed = self.timed()
        return {"step_seconds": statistics.median(timed) if timed else None, "train_seconds": train_seconds,
                "steps_timed": len(timed)}

    def protocol(self) -> dict[str, Any]:
        """How the run was measured: the profile's fields where they hold, this run's own steps where they differ."""
        train = self.train_spec
        return {**protocol(self.spec, self.built), **recipe_protocol(train, self.built), "train": train.options(),
                "tracked_steps": len(self.tracking.tracked_steps), "timed_steps": len(self.timed()),
                "micro_batches_profiled": None}

    def result(self, tests: dict[str, dict[str, Any]], train_seconds: float) -> dict[str, Any]:
        first = self.test_splits[0]
        state, data = self.state, self.data
        return {
            "params": parameter_counts(self.built),
            "memory": self.memory(),
            "timing": self.timing(train_seconds),
            "protocol": {**self.protocol(), **attention_that_ran(self.attention, self.sdpa.count),
                         "amp": None if self.train_spec.amp == "none" else self.train_spec.amp},
            "metrics": {"test": tests[first], "splits": tests, "best": state["best"], "history": state["history"],
                        "baseline": data.baseline(first), "selection": self.selection, "data": data.describe(),
                        "final_loss": self.final_loss(), "resumed_from_step": state["resumed_from"],
                        "tracked_steps": self.tracking.tracked_steps, "batch_shapes": self.tracking.shape_counts(),
                        "tracked_shapes": self.tracking.shapes_at,  # str(step) -> each tower's input shape
                        "tokenizer": {name: i.description for name, i in self.inputs.items() if i.modality == "text"},
                        "cache": {name: c.stats() for name, c in self.caches.items()},
                        "weights": {t.name: weights_source(t.backbone, t.weights) for t in self.spec.towers}},
        }

    def rank_result(self, train_seconds: float) -> dict[str, Any]:
        """What a data-parallel rank other than 0 returns: its memory and step times; rank 0 has the metrics."""
        self.tracking.close(self.state["step"])
        return {"params": parameter_counts(self.built), "memory": self.tracking.memory or {},
                "timing": self.timing(train_seconds), "protocol": self.protocol(), "metrics": None}
