"""The task registry: physgen's built-in tasks, tasks other packages install (entry point group `physgen.tasks`),
tasks named `module:NAME`, and `register_task` for your own.

Installed tasks are found lazily: the entry points are read only for a name that is not built in or registered (and
only that one is loaded), or when every task is listed. A task found once is remembered by its name, so later
lookups of the name (checkpoints record it) find it in the same process.
"""

from __future__ import annotations

import functools
import importlib
import traceback
from importlib import metadata

import gymnasium as gym

from physgen.envs import fork, hopper, images, maze, push
from physgen.envs.base import Recipe, Task
from physgen.errors import PhysgenError

ENTRY_POINT_GROUP = "physgen.tasks"
OBSERVATIONS = ("state", "image")
OWN_TASK_HINT = (f"a task of your own is found when its package is installed with an entry point in group "
                 f"{ENTRY_POINT_GROUP!r}, or named as module:NAME (its module importable, NAME its Task)")

_TASKS: dict[str, Task] = {}
_ORIGINS: dict[str, str] = {}  # where each known task came from, for the error when two share a name
_MODULE_REFERENCES: dict[str, str] = {}  # name -> module:NAME of the tasks found that way


def _add(task: Task, origin: str) -> Task:
    known = _TASKS.get(task.name)
    if known is not None and known is not task:
        raise PhysgenError(f"two tasks are named {task.name!r}: {_ORIGINS[task.name]}, and {origin}; rename one "
                           "(Task.name) or uninstall one")
    _TASKS[task.name] = task
    _ORIGINS.setdefault(task.name, origin)
    return task


def register_task(task: Task) -> Task:
    """Make `task` available to every physgen command in this process by its name (a name taken by another task
    is refused)."""
    _check_task(task, "register_task's argument")
    return _add(task, "a task given to register_task")


def get_task(name: str, obs: str = "state") -> Task:
    """The task called `name`: built in or registered, installed by a package (entry point group `physgen.tasks`),
    or `module:NAME`, the Task object `NAME` of the importable module `module`. `obs="image"`: its variant that
    observes camera frames, `<name>-image` (`physgen.envs.images`)."""
    if obs not in OBSERVATIONS:
        raise PhysgenError(f"observations are one of {', '.join(OBSERVATIONS)}, got {obs!r}")
    if obs == "image" and not name.endswith(images.SUFFIX):
        if name + images.SUFFIX not in _TASKS:
            seen = [task.name for task in _TASKS.values() if images.observes_frames(task)]
            raise PhysgenError(f"task {name!r} has no image variant; the tasks seen through a camera: "
                               f"{', '.join(seen)} (pure-JAX tasks: physgen.envs.images.with_camera)")
        name += images.SUFFIX
    if name in _TASKS:
        return _TASKS[name]
    if ":" in name:
        return _from_module(name)
    entries = [entry for entry in _entry_points() if entry.name == name]
    if len(entries) > 1:
        raise PhysgenError(f"two installed packages offer a task named {name!r}: "
                           f"{' and '.join(_describe(entry) for entry in entries)}; uninstall one")
    if entries:
        return _load(entries[0])
    known = sorted({*_TASKS, *(entry.name for entry in _entry_points())})
    raise PhysgenError(f"unknown task {name!r}; known tasks: {', '.join(known)} (see `physgen tasks`); "
                       f"{OWN_TASK_HINT}")


def task_reference(name: str) -> str:
    """How a command line names the task: `module:NAME` for a task found that way, so that the command finds it in
    a new process too, else its name."""
    return _MODULE_REFERENCES.get(name, name)


def list_tasks() -> list[Task]:
    """Every known task, by name: the built-in and registered ones and every installed one (all loaded)."""
    for entry in _entry_points():
        _load(entry)
    return [_TASKS[name] for name in sorted(_TASKS)]


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _describe(entry: metadata.EntryPoint) -> str:
    dist = f"distribution {entry.dist.name} {entry.dist.version}" if entry.dist else "an unnamed distribution"
    return f"entry point {entry.name} = {entry.value!r} of {dist}"


def _load(entry: metadata.EntryPoint) -> Task:
    where = _describe(entry)
    try:
        task = entry.load()
    except Exception as error:  # any failure of another package's code: name the package, not only the traceback
        frame = traceback.extract_tb(error.__traceback__)[-1]
        package = entry.dist.name if entry.dist else entry.module
        raise PhysgenError(f"{where} failed to load: {type(error).__name__}: {error} (at {frame.filename}:"
                           f"{frame.lineno}); fix or reinstall {package} (pip install --force-reinstall {package}), "
                           f"or uninstall it") from error
    _check_task(task, where)
    if task.name != entry.name:
        raise PhysgenError(f"{where} loads a task named {task.name!r}: name the entry point after its task "
                           f"({task.name} = {entry.value!r})")
    return _add(task, where)


def _from_module(reference: str) -> Task:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise PhysgenError(f"task {reference!r}: a task of your own is named module:NAME, such as "
                           "physgen_pendulum:TASK")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name + ".").startswith(error.name + "."):
            raise PhysgenError(f"task {reference!r}: no module named {module_name!r} can be imported; pip install "
                               "the package that provides it, or check that its folder is on PYTHONPATH") from None
        raise PhysgenError(f"task {reference!r}: module {module_name} imports {error.name!r}, which is not "
                           f"installed; pip install the package that provides it") from error
    try:
        task = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        tasks = [name for name, value in vars(module).items() if isinstance(value, Task)]
        raise PhysgenError(f"task {reference!r}: module {module_name} ({module.__file__}) has no attribute "
                           f"{attribute!r}; its Task objects: {', '.join(tasks) or 'none'}") from None
    _check_task(task, reference)
    _add(task, reference)
    _MODULE_REFERENCES.setdefault(task.name, reference)
    return task


def _check_task(value, where: str) -> None:
    if not isinstance(value, Task):
        raise PhysgenError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, not a "
                           "physgen.envs.Task; point it at the Task object itself")
    if value.gym_id not in gym.registry:  # Minari records the id in every dataset, after the rollouts
        raise PhysgenError(f"{where}: task {value.name!r} names Gymnasium id {value.gym_id!r}, which is not "
                           "registered; call gymnasium.register(id=..., entry_point=...) in the task's module "
                           "(docs/howto/own-task.md)")


# the 2-D tasks seen through their cameras (`--obs image`), with what works for an image policy
# (docs/recipes.md): a faster learning rate (its encoder finds the objects sooner), one frame (velocity control:
# the position is enough), smaller batches; on `quick`, flow gets the steps diffusion and BC do not need
_IMAGE_RECIPE = Recipe(policy={"image_size": images.IMAGE_SIZE, "obs_steps": 1, "learning_rate": 3e-3},
                       budgets={"smoke": {"steps": 100, "batch_size": 16, "hidden": 64},
                                "quick": {"steps": 1_500, "batch_size": 64, "hidden": 256},
                                "full": {"steps": 10_000, "batch_size": 128, "hidden": 256}},
                       method_budgets={("flow", "quick"): {"steps": 3_000}})
_IMAGE_TASKS = tuple(images.with_camera(task, _IMAGE_RECIPE)
                     for task in (fork.TASK, maze.TASK, push.TASK))
for _task in (fork.TASK, maze.TASK, push.TASK, hopper.TASK, *_IMAGE_TASKS):
    _add(_task, "physgen's built-in task")
for _task in (fork.TASK, maze.TASK, push.TASK, *_IMAGE_TASKS):
    if _task.gym_id not in gym.registry:
        gym.register(id=_task.gym_id, entry_point="physgen.envs.gym_env:JaxGymEnv",
                     kwargs={"task": _task.name}, max_episode_steps=None)
