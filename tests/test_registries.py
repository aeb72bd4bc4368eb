"""The registries: each package registers its entries by importing every one of its modules, so that a method,
backbone family, tracker or task is one new file; a task's class and the data it loads are checked against
the task contract, with errors that name what is missing."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from unipt_bench.memory.registry import load_trackers
from unipt_bench.tasks import TASKS, Recipe, Task, TaskModel, register_task
from unipt_bench.tasks.base import DATA_MEMBERS, missing_data_members


@pytest.mark.parametrize("package", ["unipt_bench.methods", "unipt_bench.backbones", "unipt_bench.tasks",
                                     "unipt_bench.memory"])
def test_loading_a_registry_imports_every_module_of_its_package(package: str) -> None:
    """Once a registry has loaded, every public module of its package is imported (run alone, this file
    imports nothing else of the packages, so a module missed by its package shows here). The memory
    package loads its trackers on first use, so that reading results never imports torch."""
    path = importlib.import_module(package).__path__
    load_trackers()
    modules = [f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if not m.name.startswith("_")]
    assert [m for m in modules if m not in sys.modules] == []


@dataclass
class Complete(Task):
    recipe = Recipe(lr=1e-3, weight_decay=0.0, grad_clip=None)

    @property
    def out_dim(self) -> int:
        return 8

    def build(self, towers: dict) -> TaskModel:
        return TaskModel()

    def read_data(self, spec: Any, data_root: Any, seed: int, modalities: dict[str, str]) -> Any:
        return self.data


class PartialData:
    """A dataset that forgot `verify` and `selection`, and whose `size` is a number, not a method."""

    size = 10

    def batch(self, split: str, rows: list[int], inputs: dict) -> dict:
        return {}

    evaluate = baseline = describe = task_options = batch


def test_a_task_registers_only_when_it_states_what_every_task_must() -> None:
    @dataclass
    class Bare(Task):
        def load_data(self, spec: Any, data_root: Any, seed: int, modalities: dict[str, str]) -> Any:
            return None

    with pytest.raises(TypeError, match=r"task 'bare' \(Bare\) must define recipe, build, out_dim, read_data"):
        register_task("bare")(Bare)
    assert "bare" not in TASKS


def test_loaded_data_is_checked_against_the_task_data_contract(tmp_path) -> None:
    assert DATA_MEMBERS == ("baseline", "batch", "describe", "evaluate", "selection", "size", "task_options",
                            "verify")
    task = Complete()
    task.name, task.data = "complete", PartialData()
    with pytest.raises(TypeError, match=r"'complete': read_data returned a PartialData without the TaskData members "
                                        r"selection, size, verify \(tasks/base.py\)"):
        task.load_data(None, tmp_path, 0, {})
    task.data = type("Full", (PartialData,), {"selection": "accuracy", "size": lambda self, split: 10,
                                              "verify": lambda self: None})()
    assert task.load_data(None, tmp_path, 0, {}) is task.data and missing_data_members(task.data) == []


def covering_pairs() -> list[tuple[str, str]]:
    """Few (method, tiny backbone) pairs that take every method and every tiny backbone (that some method applies
    to) at least once: each method on the first backbone it applies to that no earlier pair took, then each
    backbone still left with the first method that applies to it. Every pair costs two profiles."""
    from unipt_bench.backbones import BACKBONES, create_backbone
    from unipt_bench.methods import METHODS, create_method

    tiny = [n for n in BACKBONES.names() if BACKBONES.get(n).tiny]
    backbones = {name: create_backbone(name) for name in tiny}
    applies = {(m, b): not create_method(m).refusal(backbones[b]) for m in METHODS.names() for b in tiny}
    pairs: list[tuple[str, str]] = []
    for method in METHODS.names():
        usable = [b for b in tiny if applies[method, b]]
        fresh = [b for b in usable if b not in {taken for _, taken in pairs}]
        pairs.append((method, (fresh or usable)[0]))
    for backbone in tiny:
        methods = [m for m in METHODS.names() if applies[m, backbone]]
        if methods and backbone not in {taken for _, taken in pairs}:
            pairs.append((methods[0], backbone))
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize(("method", "backbone"), covering_pairs())
def test_estimate_equals_cpu_for_every_method_and_every_tiny_backbone(method: str, backbone: str) -> None:
    """Fake tensors and real CPU tensors agree byte for byte: peak, every category, every phase, parameter counts
    (one step of batch 2, each backbone at its tiny default shape)."""
    from unipt_bench.config import RunSpec

    from .conftest import make_spec
    from .helpers import assert_estimate_equals_cpu

    spec = make_spec(method, backbone=backbone, batch=2)
    assert_estimate_equals_cpu(RunSpec.from_dict({**spec.to_dict(), "steps": 1}))
