"""Downstream tasks; importing this package registers every task (each module of the package is imported)."""

from __future__ import annotations

from ..registry_imports import import_all
from .base import TASKS, Recipe, Task, TaskData, TaskModel, Tower, register_task

import_all(__name__, __path__)

__all__ = ["TASKS", "Recipe", "Task", "TaskData", "TaskModel", "Tower", "register_task"]
