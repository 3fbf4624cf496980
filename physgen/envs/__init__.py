"""Tasks: environment factories, horizons, success and failure rules, expert sources; `get_task` finds the built-in
ones, those other packages install (entry point group `physgen.tasks`) and `module:NAME` ones."""

from physgen.envs.base import FunctionalEnv, Task, TimeStep
from physgen.envs.images import image_shape, observes_frames
from physgen.envs.registry import get_task, list_tasks, register_task, task_reference

__all__ = ["FunctionalEnv", "Task", "TimeStep", "get_task", "image_shape", "list_tasks", "observes_frames",
           "register_task", "task_reference"]
