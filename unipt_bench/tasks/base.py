"""The task interface: a task builds heads on top of the towers and knows its loss and recipe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..backbones.base import Backbone
from ..configurable import Configurable
from ..errors import UserError
from ..registry import Registry

TASKS: Registry[type[Task]] = Registry("task")


register_task = TASKS.named


@dataclass(frozen=True)
class Recipe:
    """Optimiser settings of the task's reference recipe (docs/methods.md §4.1)."""

    lr: float
    weight_decay: float
    grad_clip: float | None
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Tower:
    """One input branch: the (tuned) backbone module, the backbone it wraps, and whether a PETL method tunes it."""

    module: nn.Module  # inputs -> BackboneOutput
    backbone: Backbone
    tuned: bool
    width: int  # width of BackboneOutput.last after the method
    pooling: str | None = None  # the tower's own pooling, when it differs from the task's


class TaskModel(nn.Module):
    """Towers plus task heads; `forward(batch)` returns the training loss.

    batch maps tower name -> that tower's inputs. `towers` and `heads` are the two halves that
    parameter accounting and memory attribution split on.
    """

    towers: nn.ModuleDict
    heads: nn.ModuleDict
    tuned: tuple[str, ...]  # names of towers a PETL method tunes

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass
class Task(Configurable):
    """A downstream task: heads, loss and recipe (options are dataclass fields, set from the suite)."""

    kind_label = "task"
    recipe: ClassVar[Recipe]
    tower_count: ClassVar[int | None] = None  # None: see check_towers

    @property
    def out_dim(self) -> int:
        """Width the side methods project to (the task's embedding width E)."""
        raise NotImplementedError

    def build(self, towers: dict[str, Tower]) -> TaskModel:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_towers(self, count: int) -> None:
        """Raise a UserError when the task cannot take `count` towers."""
        if self.tower_count is not None and count != self.tower_count:
            raise UserError(f"task {self.name!r} needs {self.tower_count} towers, found {count}")

    def data_missing(self, spec: Any, data_root: Path) -> str:
        """Why `spec`'s dataset (a TrainSpec) cannot be read under `data_root`, in one line naming the path
        looked for ("" when its files are there). `--job auto` profiles instead of training when it says so."""
        return f"task {self.name!r} cannot train on real data yet"

    def load_data(self, spec: Any, data_root: Path, seed: int, modalities: dict[str, str]) -> Any:
        """Real training data for `spec` (a TrainSpec), feeding towers by their modalities."""
        raise UserError(f"task {self.name!r} cannot train on real data yet; profile it instead")

    def example_targets(self, batch: int) -> dict[str, torch.Tensor]:
        """Training targets shaped like one real batch (batch["targets"]); empty when the loss needs none."""
        return {}
