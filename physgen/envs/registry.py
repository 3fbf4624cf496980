"""The task registry: built-in tasks and `register_task` for your own."""

from __future__ import annotations

import gymnasium as gym

from physgen.envs import fork, hopper, maze
from physgen.envs.base import Task
from physgen.errors import PhysgenError

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make `task` available to every physgen command by its name."""
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise PhysgenError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))} (see `physgen tasks`)")
    return _TASKS[name]


def list_tasks() -> list[Task]:
    return [_TASKS[name] for name in sorted(_TASKS)]


for _task in (fork.TASK, maze.TASK, hopper.TASK):
    register_task(_task)
for _task in (fork.TASK, maze.TASK):
    if _task.gym_id not in gym.registry:
        gym.register(id=_task.gym_id, entry_point="physgen.envs.gym_env:JaxGymEnv",
                     kwargs={"task": _task.name}, max_episode_steps=None)
