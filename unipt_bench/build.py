"""Assemble a run's model: backbones -> method on each tuned tower -> task heads; count what trains."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .backbones import create_backbone
from .config import RunSpec
from .memory_options import apply_memory_options
from .methods import METHODS, Method, create_method
from .tasks import TASKS, Task, TaskModel, Tower


@dataclass
class Built:
    model: TaskModel
    towers: dict[str, Tower]
    task: Task
    method: Method


def build(spec: RunSpec, weights: bool = True) -> Built:
    """Build on the current default device (meta for estimates). weights=False builds every backbone with random
    values, in the architecture its weights' config describes (so every mode measures the same model)."""
    torch.manual_seed(spec.seed)
    task = TASKS.get(spec.task).from_options(spec.task_options)
    method = create_method(spec.method, spec.method_options)
    towers: dict[str, Tower] = {}
    for t in spec.towers:
        backbone = create_backbone(t.backbone, t.weights, load=weights)
        if t.tuned:
            module = method.apply(backbone, task.out_dim)  # raises NotApplicable
            apply_memory_options(module, backbone, spec.memory, method)
            width = method.output_width(backbone, task.out_dim)
        else:
            module, width = backbone, backbone.width
        towers[t.name] = Tower(module, backbone, t.tuned, width, t.pooling)
    return Built(task.build(towers), towers, task, method)


def module_owner(model: TaskModel) -> Callable[[str], str]:
    """Who a module (path relative to the model) belongs to: "backbone", "method" (modules a PETL method
    added), "head" (task heads and towers trained with them) or "other" (the model itself: the loss)."""
    markers = {name for method in METHODS.names() for name in METHODS.get(method).module_names}

    def owner(path: str) -> str:
        parts = path.split(".") if path else []
        if not parts or parts[0] not in ("towers", "heads"):
            return "other"
        if parts[0] == "heads" or len(parts) < 2 or parts[1] not in model.tuned:
            return "head"
        return "method" if markers.intersection(parts[2:]) else "backbone"

    return owner


def count(params: list[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def parameter_counts(built: Built) -> dict[str, int]:
    """trainable = method (inside tuned towers) + head (task heads and untuned towers); total counts everything."""
    model = built.model
    trainable = count([p for p in model.parameters() if p.requires_grad])
    tuned = {id(p): p for name in model.tuned for p in model.towers[name].parameters() if p.requires_grad}
    method = count(list(tuned.values()))
    return {
        "trainable_params": trainable,
        "trainable_method_params": method,
        "trainable_head_params": trainable - method,
        "total_params": count(list(model.parameters())),
    }


def example_batch(built: Built, spec: RunSpec) -> dict[str, dict[str, torch.Tensor]]:
    """One batch shaped like the task's (random values), created on the current device / fake mode."""
    shapes = {t.name: t.shape for t in spec.towers}
    batch = {name: t.backbone.dummy_inputs(spec.batch, **shapes[name]) for name, t in built.towers.items()}
    targets = built.task.example_targets(spec.batch)
    if targets:
        batch["targets"] = targets
    return batch
