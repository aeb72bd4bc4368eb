"""Assemble a run's model: backbones -> method on each tuned tower -> task heads; count what trains."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .backbones import create_backbone
from .config import RunSpec
from .memory_options import apply_memory_options
from .methods import Method, create_method
from .tasks import TASKS, Task, TaskModel, Tower


@dataclass
class Built:
    model: TaskModel
    towers: dict[str, Tower]
    task: Task
    method: Method
    owners: dict[str, str] = field(default_factory=dict)  # module path (relative to the model) -> owner


def build(spec: RunSpec, weights: bool = True) -> Built:
    """Build on the current default device (meta for estimates). weights=False builds every backbone with random
    values, in the architecture its weights' config describes (so every mode measures the same model)."""
    torch.manual_seed(spec.seed)
    task = TASKS.get(spec.task).from_options(spec.task_options)
    method = create_method(spec.method, spec.method_options)
    towers: dict[str, Tower] = {}
    pretrained: list[nn.Module] = []  # every module of the tuned backbones before the method touched them
    for t in spec.towers:
        backbone = create_backbone(t.backbone, t.weights, load=weights)
        if t.tuned:
            pretrained += backbone.modules()
            module = method.apply(backbone, task.out_dim)  # raises NotApplicable
            apply_memory_options(module, backbone, spec.memory, method)
            width = method.output_width(backbone, task.out_dim)
        else:
            module, width = backbone, backbone.width
        towers[t.name] = Tower(module, backbone, t.tuned, width, t.pooling)
    model = task.build(towers)
    return Built(model, towers, task, method, module_owners(model, pretrained))


def module_owners(model: TaskModel, pretrained: list[nn.Module]) -> dict[str, str]:
    """Who each module (path relative to the model) belongs to: "backbone" (a module of a tuned backbone as
    it was built), "method" (every module of a tuned tower the method created: its own layers, and the
    wrappers it put around or in place of backbone modules), "head" (task heads and untuned towers) or
    "other" (the model itself: the loss).

    Decided by identity, not by name, so a method needs to declare nothing: `pretrained` holds the tuned
    backbones' modules from before `apply` (kept alive here, so no new module can reuse an old one's id).
    """
    original = {id(m) for m in pretrained}
    owners = {}
    for path, module in model.named_modules(remove_duplicate=False):
        parts = path.split(".") if path else []
        if not parts or parts[0] not in ("towers", "heads"):
            owners[path] = "other"
        elif parts[0] == "heads" or len(parts) < 2 or parts[1] not in model.tuned:
            owners[path] = "head"
        else:
            owners[path] = "backbone" if id(module) in original else "method"
    return owners


def module_owner(built: Built) -> Callable[[str], str]:
    """The owner of a module path (see `module_owners`); a path the model does not have is "other"."""
    owners = built.owners
    return lambda path: owners.get(path, "other")


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
