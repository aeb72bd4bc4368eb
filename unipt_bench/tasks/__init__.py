"""Downstream tasks; importing this package registers every task."""

from __future__ import annotations

from . import classification, grounding, retrieval, vqa  # noqa: F401  (registration)
from .base import TASKS, Recipe, Task, TaskModel, Tower, register_task

__all__ = ["TASKS", "Recipe", "Task", "TaskModel", "Tower", "register_task"]
