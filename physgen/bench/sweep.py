"""`physgen sweep-steps`: success and latency against the number of denoising or integration steps, one checkpoint,
no retraining: the quality-compute curve and its knee."""

from __future__ import annotations

from pathlib import Path

import jax
from matplotlib.figure import Figure  # drawn without pyplot: no backend is chosen or changed
import numpy as np

from physgen.control.latency import measure_latency
from physgen.data import load_dataset
from physgen.envs import get_task
from physgen.envs.rollout import episode_seeds, run_episodes
from physgen.errors import PhysgenError
from physgen.io import write_json, write_text
from physgen.policies import ChunkingAgent, load_policy
from physgen.seeds import EVALUATION
from physgen.stats import interval_text, wilson_interval


def knee(rows: list[dict]) -> int:
    """The fewest steps whose success rate lies inside the 95% interval of the best one."""
    best = max(rows, key=lambda r: r["success"]["estimate"])
    return min(r["steps"] for r in rows if r["success"]["estimate"] >= best["success"]["low"])


def sweep_steps(checkpoint: str | Path, steps: list[int], episodes: int, out: str | Path) -> list[dict]:
    """Evaluate `checkpoint` with each number of sampling steps on the same `episodes` evaluation episodes; write
    sweep.json, sweep.md and sweep.png to `out`."""
    policy, state, meta = load_policy(checkpoint)
    config, task = policy.config, get_task(meta["task"])
    if config.method == "bc":
        raise PhysgenError("a bc checkpoint samples in one network call; sweep a diffusion or flow checkpoint")
    most = config.diffusion.train_diffusion_steps if config.method == "diffusion" else None
    if not steps or min(steps) < 1 or (most is not None and max(steps) > most):
        raise PhysgenError(f"--sampler-steps must be between 1 and {most or 'any'} for this {config.method} "
                           f"checkpoint, got {steps}")
    dataset = load_dataset(task)
    observations = np.asarray(dataset.trajectories.observations)
    stacked = jax.tree.map(lambda x: x[None], state)
    rows = []
    for k in steps:
        rollouts = run_episodes(task, ChunkingAgent(policy, k), stacked, episode_seeds(EVALUATION, episodes),
                                dataset.metadata.get("ref_max_score"))
        success = wilson_interval(int(rollouts.success.sum()), rollouts.success.size)
        rows.append({"steps": k, "success": success.as_dict(), "return": float(rollouts.returns.mean()),
                     **measure_latency(policy, state, observations, task.control_hz, steps=k)})
    out = Path(out)
    write_json(out / "sweep.json", {"checkpoint": str(checkpoint), "task": task.name, "method": config.method,
                                    "episodes": episodes, "knee": knee(rows), "rows": rows})
    lines = [f"Steps sweep of `{checkpoint}` ({config.method} on {task.name}, {episodes} episodes, Wilson 95%): "
             f"knee at {knee(rows)} steps.", "", "| steps | success | return | chunk p50 / p99 | sustainable rate |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {interval_text(r['success'])} "
              f"| {r['return']:.1f} | {r['chunk_p50_us']:,.0f} / {r['chunk_p99_us']:,.0f} us | "
              f"{r['sustainable_hz']:,.0f} Hz |" for r in rows]
    write_text(out / "sweep.md", "\n".join(lines) + "\n")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.errorbar(steps, [r["success"]["estimate"] for r in rows],
                yerr=[[r["success"]["estimate"] - r["success"]["low"] for r in rows],
                      [r["success"]["high"] - r["success"]["estimate"] for r in rows]], marker="o", capsize=4)
    ax.set(xscale="log", xlabel="sampling steps", ylabel="success rate (Wilson 95%)", ylim=(-0.02, 1.02))
    latency = ax.twinx()
    latency.plot(steps, [r["chunk_p99_us"] / 1e3 for r in rows], color="tab:red", marker="s")
    latency.set_ylabel("chunk latency p99 (ms)", color="tab:red")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=120)
    print("\n".join(lines))
    return rows
