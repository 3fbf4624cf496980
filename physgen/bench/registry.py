"""The methods of `physgen bench`, by name: the CLI's choices, the default method lists, the protocol's
hyperparameters and checkpoint loading all come from here.

Adding a method is one module that defines a `physgen.bench.method.Method` and one `register_method` call (a line
in `_BUILT_IN` for physgen's own)."""

from __future__ import annotations

from pathlib import Path

from physgen.bench.method import Method
from physgen.bench.offline import BC, DIFFUSION, FLOW, FLOW_1STEP
from physgen.bench.online import PPO
from physgen.bench.protocol import BUDGETS, Budget
from physgen.bench.world import PPO_WM, RSSM_MPC
from physgen.checkpoint import load_checkpoint
from physgen.data import dataset_id
from physgen.envs import Task, observes_frames, task_reference
from physgen.errors import PhysgenError

_BUILT_IN = (DIFFUSION, FLOW, BC, PPO, RSSM_MPC, PPO_WM, FLOW_1STEP)
REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make `method` known to `physgen bench` (a name already taken is refused)."""
    if method.name in REGISTRY:
        raise PhysgenError(f"a method named {method.name!r} is registered already; choose another name")
    REGISTRY[method.name] = method
    return method


for _method in _BUILT_IN:
    register_method(_method)


def get_methods(names: list[str], task: Task | None = None) -> list[Method]:
    """The registered methods of these names, each once, in order; on a task observed through a camera, only
    those that learn from frames."""
    unknown = [name for name in names if name not in REGISTRY]
    if unknown or not names:
        raise PhysgenError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; use some of "
                           f"{', '.join(REGISTRY)}")
    blind = [name for name in names if task is not None and observes_frames(task) and not REGISTRY[name].frames]
    if blind:
        seeing = [name for name, method in REGISTRY.items() if method.frames]
        raise PhysgenError(f"{', '.join(blind)} cannot learn from the camera frames task {task.name!r} observes; "
                           f"choose from {', '.join(seeing)}, or bench the state task")
    return [REGISTRY[name] for name in dict.fromkeys(names)]


def default_methods(task: Task, budget: Budget) -> tuple[list[str], str | None]:
    """The methods a run uses when none are named (those with `Method.default`), and why the online ones are left
    out (None when they are in)."""
    defaults = [name for name, method in REGISTRY.items() if method.default and (method.frames or
                                                                                 not observes_frames(task))]
    if observes_frames(task) or budget.ppo_by_default == "always" or (
            budget.ppo_by_default == "pure-jax" and task.functional is not None):
        return defaults, None
    online = [name for name, method in REGISTRY.items() if method.online]
    return [name for name in defaults if name not in online], (
        f"{', '.join(online)} are left out on this budget: {budget.ppo_steps:,} environment steps per PPO seed on "
        f"{task.name} do not fit it; add them with --methods ...,{','.join(online)} or --budget full")


def bench_command(task: Task, experiment: dict) -> str:
    """The `physgen bench` command line that reproduces a run's experiment (defaults left out)."""
    budget = BUDGETS[experiment["budget"]]
    parts = [f"physgen bench --task {task_reference(task.name)}"]
    if experiment["budget"] != "quick":
        parts.append(f"--budget {experiment['budget']}")
    if experiment["methods"] != default_methods(task, budget)[0]:
        parts.append(f"--methods {','.join(experiment['methods'])}")
    if experiment["training_seeds"] != list(range(budget.seeds)):
        parts.append(f"--seeds {len(experiment['training_seeds'])}")
    if experiment["episodes"] != budget.episodes:
        parts.append(f"--episodes {experiment['episodes']}")
    if experiment["dataset"]["id"] != dataset_id(task.name):
        parts.append(f"--dataset {experiment['dataset']['id']}")
    if experiment.get("overrides"):
        parts.append("--set " + ",".join(f"{k}={v}" for k, v in experiment["overrides"].items()))
    parts += [f"--vary {field}={','.join(values)}" for field, values in experiment.get("variants", {}).items()]
    return " ".join(parts)


def load_agent(path: str | Path, task: str | None = None) -> tuple:
    """(agent, parameters) of a checkpoint, by the method that wrote it."""
    name = load_checkpoint(path, task)[1]["method"]
    loadable = [n for n, method in REGISTRY.items() if method.load]
    if name not in loadable:
        raise PhysgenError(f"checkpoint {path} holds a {name!r} model, which does not act by itself; pass a "
                           f"checkpoint of {', '.join(loadable)}")
    return REGISTRY[name].load(Path(path), task)
