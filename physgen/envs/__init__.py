"""Tasks: environment factories, horizons, success and failure rules, expert sources."""

from physgen.envs.base import FunctionalEnv, Task, TimeStep
from physgen.envs.registry import get_task, list_tasks, register_task

__all__ = ["FunctionalEnv", "Task", "TimeStep", "get_task", "list_tasks", "register_task"]
