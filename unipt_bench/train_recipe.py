"""A training run's recipe resolved against its data and the command line: the step budget, the optimizer
with its per-part learning rates, gradient clipping, and when hardest negatives start.

The suite's `train` table states the reference recipe (docs/recipes/); the task's Recipe fills what it
leaves out; the spec's overrides (--max-steps, --eval-every) shorten it for a quick try.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .build import Built, module_owner
from .config import RunSpec, TrainSpec
from .errors import UserError


def batches_per_epoch(size: int, batch: int) -> int:
    """Full batches in one pass over `size` examples (the last partial batch is dropped, as `batch_rows` does)."""
    if size < batch:
        raise UserError(f"the training split has {size} examples, fewer than one batch of {batch}")
    return size // batch


def resolve_budget(train: TrainSpec, spec: RunSpec, train_size: int) -> TrainSpec:
    """`train` with its step budget in steps: epochs become steps, --max-steps caps them (the schedule then
    spans the shortened run), --eval-every replaces the validation interval."""
    steps = train.steps
    if train.epochs > 0:
        steps = max(1, round(train.epochs * batches_per_epoch(train_size, spec.batch)))
    overrides = spec.overrides or {}
    steps = min(steps, overrides.get("max_steps", steps))
    eval_every = min(overrides.get("eval_every", train.eval_every), steps)
    return dataclasses.replace(train, steps=steps, eval_every=eval_every)


def hardest_from_step(train: TrainSpec, spec: RunSpec, train_size: int) -> int:
    """The first step that uses hardest negatives only (VSE: after `hardest_after` epochs of all negatives)."""
    if train.hardest_after <= 0:
        return 0
    return round(train.hardest_after * batches_per_epoch(train_size, spec.batch))


def learning_rate(train: TrainSpec, built: Built) -> float:
    return train.lr or built.task.recipe.lr


def weight_decay(train: TrainSpec, built: Built) -> float:
    return built.task.recipe.weight_decay if train.weight_decay < 0 else train.weight_decay


def grad_clip(train: TrainSpec, built: Built) -> float | None:
    """Max gradient norm, or None for no clipping."""
    clip = built.task.recipe.grad_clip if train.grad_clip < 0 else train.grad_clip
    return clip or None


def parameter_groups(built: Built, lr: float, train: TrainSpec) -> list[dict[str, Any]]:
    """Trainable parameters in groups: each tower's pre-trained backbone weights at lr x its factor
    (`tower_lr_scales`, else `backbone_lr_scale`: VSE-infinity's BERT at 0.1x, its ResNeXt at 0.01x) and
    everything else (method modules, heads, task encoders) at lr."""
    unknown = sorted(set(train.tower_lr_scales) - set(built.towers))
    if unknown:
        raise UserError(f"train.tower_lr_scales names no tower of this configuration: {', '.join(unknown)}")
    owner = module_owner(built)
    parts: dict[str, list[nn.Parameter]] = {"other": []}
    for name, param in built.model.named_parameters():
        if param.requires_grad:
            path = name.rpartition(".")[0]
            part = f"backbone:{path.split('.')[1]}" if owner(path) == "backbone" else "other"
            parts.setdefault(part, []).append(param)
    groups = []
    for part, params in parts.items():
        tower = part.partition(":")[2]
        scale = train.tower_lr_scales.get(tower, train.backbone_lr_scale) if tower else 1.0
        groups.append({"params": params, "lr": lr * scale, "part": part})
    return [g for g in groups if g["params"]]


def build_optimizer(built: Built, train: TrainSpec) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """The recipe's optimizer over the trainable parameters (foreach, as CUDA uses by default)."""
    lr = learning_rate(train, built)
    groups = parameter_groups(built, lr, train)
    if not groups:
        raise UserError("nothing trains in this run (no parameter requires grad)")
    decay, betas = weight_decay(train, built), built.task.recipe.betas
    kind = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    optimizer = kind(groups, lr=lr, betas=betas, weight_decay=decay, foreach=True)
    return optimizer, [p for g in groups for p in g["params"]]


def recipe_protocol(train: TrainSpec, built: Built) -> dict[str, Any]:
    """The optimizer settings a training run used, for its result's protocol."""
    return {"optimizer": f"{'AdamW' if train.optimizer == 'adamw' else 'Adam'}(foreach=True)",
            "lr": learning_rate(train, built), "backbone_lr": learning_rate(train, built) * train.backbone_lr_scale,
            "tower_backbone_lr": {t: learning_rate(train, built) * s for t, s in train.tower_lr_scales.items()},
            "weight_decay": weight_decay(train, built), "grad_clip": grad_clip(train, built)}
