"""The protocol of a benchmark run, fixed and written before anything trains: seeds, episodes, every hyperparameter,
the checkpoint rule, package versions, commit and machine. A rerun into the same folder must match it."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import jax

from physgen.configs import field_names, override
from physgen.envs import Task
from physgen.envs.rollout import episode_seeds
from physgen.errors import PhysgenError
from physgen.io import read_json, write_json
from physgen.policies.policy import PolicyConfig
from physgen.seeds import EVALUATION

STATS = {"confidence": 0.95, "resamples": 10_000, "bootstrap_seed": 0}
CHECKPOINT_RULE = "the final EMA weights of every seed (no selection over checkpoints or seeds)"
PACKAGES = ("physgen", "jax", "jaxlib", "flax", "optax", "gymnasium", "minari", "mujoco", "numpy", "scipy")


@dataclass(frozen=True)
class Budget:
    """How much a run evaluates, and trains PPO and the world models; the offline policies' gradient steps, batch and
    width per budget come from the task's recipe (`Task.recipe`). PPO joins the default methods when
    `ppo_by_default` allows it for the task."""

    episodes: int  # final evaluation episodes per seed
    curve_points: int  # evaluations over training, the last one the final evaluation
    curve_episodes: int  # episodes per seed at the earlier points (pure-JAX tasks, where they are cheap: all)
    seeds: int
    ppo_steps: int  # real environment steps per seed of PPO and of ppo-wm
    rssm_steps: int  # gradient steps per rssm-mpc RSSM seed (docs/recipes.md)
    rssm_learning_rate: float  # the RSSMs' peak learning rate: chosen with rssm_steps by measurement (docs/recipes.md)
    model_steps: int  # ppo-wm's RSSM gradient steps per iteration of its online loop
    dream_updates: int  # ppo-wm's PPO updates inside the RSSM per iteration
    ppo_by_default: str  # PPO and the world-model methods: "never", "pure-jax" (tasks that train in one compiled
    # program) or "always"


BUDGETS = {
    "smoke": Budget(episodes=4, curve_points=4, curve_episodes=2, seeds=2, ppo_steps=20_000, rssm_steps=40,
                    rssm_learning_rate=1e-3, model_steps=4, dream_updates=1, ppo_by_default="never"),
    "quick": Budget(episodes=10, curve_points=5, curve_episodes=2, seeds=10, ppo_steps=200_000,
                    rssm_steps=7_500, rssm_learning_rate=2e-3, model_steps=32, dream_updates=8,
                    ppo_by_default="pure-jax"),
    "full": Budget(episodes=100, curve_points=10, curve_episodes=20, seeds=10, ppo_steps=1_000_000,
                   rssm_steps=10_000, rssm_learning_rate=1e-3, model_steps=32, dream_updates=8,
                   ppo_by_default="always"),
}


def policy_config(task: Task, method: str, budget_name: str) -> PolicyConfig:
    """The task's recipe for `method` on a budget, evaluated at the budget's curve points."""
    settings = task.recipe.settings(method, budget_name)
    steps = settings.get("steps", PolicyConfig().optim.steps)
    return PolicyConfig.of(method=method, steps_per_call=-(-steps // BUDGETS[budget_name].curve_points), **settings)


def describe_recipe(task: Task) -> list[str]:
    """The task's recipe in words: the settings shared by the offline methods, each method's own, and the budgets
    (a `full` value that differs from `quick`'s in brackets)."""
    c, flow = policy_config(task, "diffusion", "quick"), policy_config(task, "flow", "quick")
    sizes = {b: policy_config(task, "diffusion", b) for b in BUDGETS}
    budgets = " / ".join(f"{b} {p.optim.steps:,} steps, batch {p.optim.batch_size}, width {p.net.hidden}, "
                         f"learning rate {p.optim.learning_rate:g}" for b, p in sizes.items())

    def on_full(quick: PolicyConfig, value) -> str:
        full = value(policy_config(task, quick.method, "full"))
        return f" ({full} on full)" if full != value(quick) else ""

    chunking, net, optim, diffusion = c.chunking, c.net, c.optim, c.diffusion
    return [f"chunks: T_o {chunking.obs_steps}, T_p {chunking.action_steps}, T_a {chunking.exec_steps}; "
            f"{net.network} depth {net.depth}; warm-up {optim.warmup_steps}, EMA {c.ema_decay}",
            f"budgets: {budgets}",
            f"diffusion: {diffusion.prediction} prediction{on_full(c, lambda p: p.diffusion.prediction)}, "
            f"{diffusion.schedule} schedule, {diffusion.sampler} {c.inference_steps} steps; "
            f"flow: {flow.flow.target} prediction{on_full(flow, lambda p: p.flow.target)}, "
            f"{flow.flow.coupling} pairs, {flow.flow.integrator} {flow.inference_steps} steps; bc: mean squared error"]


def row_name(method: str, varied: dict[str, str]) -> str:
    """A report row: `flow`, or `flow[exec_steps=2,prediction=epsilon]` for a variant."""
    return f"{method}[{','.join(f'{k}={v}' for k, v in varied.items())}]" if varied else method


def make_rows(task: Task, methods: list, budget_name: str, changes: dict[str, str],
              variants: dict[str, list[str]]) -> dict[str, dict]:
    """The rows of a run, {row: {"method", "varied", "hyperparameters"}}: each method on the budget with the `--set`
    changes that name one of its fields, once per combination of the `--vary` values (a grid), each checked by
    building its config. A change no method has, or a varied field some method lacks, is refused."""
    if "method" in changes or "method" in variants:
        raise PhysgenError("--set and --vary cannot change a method; name the methods with --methods")
    both = [name for name in variants if name in changes]
    if both:
        raise PhysgenError(f"{', '.join(both)} is both set (--set) and varied (--vary); keep it in one of them")
    hyper = {m.name: m.hyperparameters(task, budget_name) for m in methods}
    fields = {m.name: field_names(hyper[m.name]) for m in methods}
    unknown = [name for name in changes if not any(name in mine for mine in fields.values())]
    if unknown:
        raise PhysgenError(f"no method of this run has the field {', '.join(unknown)} (--set); its fields: "
                           f"{', '.join(sorted(set().union(*fields.values())))}")
    for name in variants:
        lacking = [m for m, mine in fields.items() if name not in mine]
        if lacking:
            raise PhysgenError(f"{', '.join(lacking)} has no field {name} (--vary); vary it in a run of the "
                               f"methods that have it, or vary one of: {', '.join(sorted(fields[lacking[0]]))}")
    rows = {}
    for method in methods:
        mine = {name: text for name, text in changes.items() if name in fields[method.name]}
        for values in itertools.product(*variants.values()):
            varied = dict(zip(variants, values))
            row = row_name(method.name, varied)
            try:
                settings = override(hyper[method.name], {**mine, **varied})
                method.configure(settings)
            except PhysgenError as error:
                raise PhysgenError(f"{row}: {error}") from None
            rows[row] = {"method": method.name, "varied": varied, "hyperparameters": settings}
    return rows


def curve_steps(config: PolicyConfig) -> list[int]:
    calls = -(-config.optim.steps // config.optim.steps_per_call)
    return [min((i + 1) * config.optim.steps_per_call, config.optim.steps) for i in range(calls)]


def _git_commit() -> str:
    """The commit of the source tree physgen runs from, read from .git (no subprocess: JAX is multithreaded)."""
    git = Path(__file__).resolve().parents[2] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        packed = [line.split() for line in (git / "packed-refs").read_text().splitlines() if line.endswith(ref)]
        return packed[0][0] if packed else "unknown"
    except OSError:
        return "unknown"


def _versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> str:
    """The OS, architecture, CPU count, and the processor's model and widest vector unit: machines with the same
    count differ in both, and a run's time with them."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown CPU")
    vectors = ", AVX-512" if " avx512f" in info else ", AVX2" if " avx2" in info else ""
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({model}{vectors})"


def make_protocol(task: Task, methods: list, seeds: list[int], budget_name: str, episodes: int, dataset,
                  note: str | None, rows: dict, overrides: dict[str, str], variants: dict[str, list[str]],
                  devices: int = 1) -> dict:
    """The protocol of a run of `methods` (`physgen.bench.method.Method`s) as `rows` (`make_rows`: the methods
    with the `--set` changes and `--vary` values, which it records too); `devices`: how many devices the seeds are
    spread over, recorded with the machine (like the machine, it may change a seed's last bits, not the
    experiment: a rerun may change it)."""
    budget = BUDGETS[budget_name]
    evaluation = episode_seeds(EVALUATION, episodes)
    dataset_seeds = set(episode_seeds(int(dataset.metadata.get("physgen_seed", 0)),
                                      dataset.trajectories.num_episodes).tolist())
    if dataset_seeds & set(evaluation.tolist()):
        raise PhysgenError("evaluation episode seeds overlap the dataset's; regenerate the dataset with another --seed")
    datasets = [name for m in methods if m.datasets for name in m.datasets(task)]
    by_name = {m.name: m for m in methods}
    return {
        "experiment": {
            "task": task.name, "methods": [m.name for m in methods], "training_seeds": seeds, "budget": budget_name,
            "budget_settings": dataclasses.asdict(budget), "episodes": episodes,
            "evaluation_seeds": evaluation.tolist(),
            "curve_episodes": episodes if task.functional is not None else min(budget.curve_episodes, episodes),
            "curve_steps": {row: by_name[r["method"]].curve_steps(r["hyperparameters"]) for row, r in rows.items()
                            if by_name[r["method"]].curve_steps},
            "recipe": task.recipe.as_dict(),
            "checkpoint_rule": CHECKPOINT_RULE, "overrides": overrides, "variants": variants,
            "rows": {row: {"method": r["method"], "varied": r["varied"]} for row, r in rows.items()},
            "hyperparameters": {row: r["hyperparameters"] for row, r in rows.items()},
            "dataset": {"id": dataset.dataset_id, "episodes": dataset.trajectories.num_episodes,
                        "validation_fraction": 0.1, "split_seed": 0,
                        **{k: dataset.metadata[k] for k in ("ref_min_score", "ref_max_score")
                           if k in dataset.metadata}},
            "statistics": STATS, "failure_rules": "physgen.bench.failures (rules in its docstring)",
            "ppo_left_out": note,
            "world_model_datasets": list(dict.fromkeys(datasets)) or None,
        },
        "environment": {"packages": _versions(), "git_commit": _git_commit(), "python": platform.python_version(),
                        "machine": machine(),
                        "jax_devices": [str(d) for d in jax.devices()], "seed_devices": devices},
    }


def fix_protocol(out: Path, protocol: dict) -> None:
    """Write `protocol.json`, or check that the one already in `out` describes the same experiment."""
    path = out / "protocol.json"
    if path.exists():
        existing = read_json(path)
        if existing is None:
            raise PhysgenError(f"{path} is damaged (not valid JSON); delete {out} to start over, or pass another --out")
        differing = _differences(existing.get("experiment", {}), json.loads(json.dumps(protocol["experiment"])))
        if differing:
            more = f" and {len(differing) - 4} more" if len(differing) > 4 else ""
            raise PhysgenError(f"{out} holds a run with a different protocol ({', '.join(differing[:4])}{more} "
                               "differ); pass another --out, or delete that folder to start over")
        return
    write_json(path, protocol)


def _differences(old, new, prefix: str = "") -> list[str]:
    """The dotted paths of the fields where two protocols differ, e.g. `dataset.episodes`."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix]
    return [field for key in dict.fromkeys([*old, *new])
            for field in _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)]
