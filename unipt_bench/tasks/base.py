"""The task interface: a task builds heads on top of the towers and knows its loss and recipe; the data it
trains on (`TaskData`) answers what training asks of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..backbones.base import Backbone
from ..configurable import Configurable
from ..errors import UserError
from ..registry import Registry

TASKS: Registry[type[Task]] = Registry("task")


class TaskData(Protocol):
    """What a task's `load_data` returns: its dataset split by split, and how a model scores on it.

    Splits are named ("train", "val", and the test splits); `inputs` maps tower name -> its TowerInputs (the
    tokenizer or image transform that turns raw values into that tower's tensors). Besides these members a
    dataset may give `test_splits` (the splits a trained model is tested on, first one first; default
    ("test",)).
    """

    selection: str  # the validation metric that picks the best checkpoint (e.g. "rsum", "accuracy")

    def size(self, split: str) -> int:
        """Examples in `split`."""

    def batch(self, split: str, rows: list[int], inputs: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """The batch of `rows`: tower name -> that tower's inputs, plus "targets" when the loss needs them."""

    def evaluate(self, model: Any, split: str, inputs: dict[str, Any], batch_size: int, device: Any
                 ) -> dict[str, float]:
        """The task's metrics of `model` (a TaskModel) on `split`."""

    def baseline(self, split: str) -> dict[str, float]:
        """The metrics of chance (or a majority answer) on `split`: what training must beat."""

    def describe(self) -> dict[str, Any]:
        """What was read, for the result's protocol: dataset, split sizes, files."""

    def task_options(self) -> dict[str, Any]:
        """Task options the data decides (e.g. the answer count), merged into the spec before building."""

    def verify(self) -> None:
        """Read every example once; one UserError naming the first unreadable file."""


DATA_MEMBERS = tuple(sorted({*TaskData.__annotations__, *(n for n in vars(TaskData) if not n.startswith("_"))}))


def missing_data_members(data: object) -> list[str]:
    """TaskData members `data` lacks (a method present but not callable counts as missing)."""
    return [name for name in DATA_MEMBERS
            if not hasattr(data, name) or (callable(getattr(TaskData, name, None)) and not callable(getattr(data, name)))]


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a Task subclass under `name`, after checking it states what every task must."""

    def add(cls: type[Task]) -> type[Task]:
        missing = [member for member, given in (
            ("recipe", hasattr(cls, "recipe")),
            ("build", cls.build is not Task.build),
            ("out_dim", cls.out_dim is not Task.out_dim),
        ) if not given]
        if "load_data" in vars(cls):
            missing.append("read_data (instead of load_data, which checks what read_data returns)")
        if missing:
            raise TypeError(f"task {name!r} ({cls.__name__}) must define {', '.join(missing)}")
        return TASKS.named(name)(cls)

    return add


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

    def load_data(self, spec: Any, data_root: Path, seed: int, modalities: dict[str, str]) -> TaskData:
        """Real training data for `spec` (a TrainSpec), feeding towers by their modalities: what `read_data`
        returns, checked against TaskData (a TypeError names the members it lacks)."""
        data = self.read_data(spec, data_root, seed, modalities)
        missing = missing_data_members(data)
        if missing:
            raise TypeError(f"task {self.name!r}: read_data returned a {type(data).__name__} without the TaskData "
                            f"members {', '.join(missing)} (tasks/base.py)")
        return data

    def read_data(self, spec: Any, data_root: Path, seed: int, modalities: dict[str, str]) -> TaskData:
        """The task's own dataset reader (see `load_data`)."""
        raise UserError(f"task {self.name!r} cannot train on real data yet; profile it instead")

    def example_targets(self, batch: int) -> dict[str, torch.Tensor]:
        """Training targets shaped like one real batch (batch["targets"]); empty when the loss needs none."""
        return {}
