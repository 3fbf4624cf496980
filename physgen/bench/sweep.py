"""Sweeps of one checkpoint, no retraining, every row on the same evaluation episodes. `physgen sweep-steps`:
success and latency against the number of denoising or integration steps (the quality-compute curve and its knee).
`physgen sweep-delay`: success against the delay with which chunks arrive, for each way of switching chunks."""

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
from physgen.io import read_json, write_figure, write_json, write_text
from physgen.policies import ChunkingAgent, load_policy
from physgen.seeds import EVALUATION
from physgen.stats import interval_text, wilson_interval


def knee(rows: list[dict]) -> int:
    """The fewest steps whose success rate lies inside the 95% interval of the best one."""
    best = max(rows, key=lambda r: r["success"]["estimate"])
    return min(r["steps"] for r in rows if r["success"]["estimate"] >= best["success"]["low"])


DELAY_MODES = ("hard", "ensemble", "rtc")  # switch to the newest chunk; temporal ensembling; real-time chunking
ENSEMBLE_RATE = 0.01  # ACT's k, for a checkpoint whose config has none


def _errorbars(ax, x, rows: list[dict], **style) -> None:
    """Success estimates with their intervals' ends as error bars."""
    ax.errorbar(x, [r["success"]["estimate"] for r in rows],
                yerr=[[r["success"]["estimate"] - r["success"]["low"] for r in rows],
                      [r["success"]["high"] - r["success"]["estimate"] for r in rows]], marker="o", capsize=4, **style)


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
    _errorbars(ax, steps, rows)
    ax.set(xscale="log", xlabel="sampling steps", ylabel="success rate (Wilson 95%)", ylim=(-0.02, 1.02))
    latency = ax.twinx()
    latency.plot(steps, [r["chunk_p99_us"] / 1e3 for r in rows], color="tab:red", marker="s")
    latency.set_ylabel("chunk latency p99 (ms)", color="tab:red")
    write_figure(out / "sweep.png", fig)
    print("\n".join(lines))
    return rows


def sweep_delay(checkpoint: str | Path, delays: list[int], episodes: int, out: str | Path,
                modes: tuple[str, ...] = DELAY_MODES) -> list[dict]:
    """Evaluate `checkpoint` with chunks arriving each of `delays` control steps after the observation they were
    sampled from (`physgen.policies.agent`), switching chunks by each of `modes`, on the same `episodes` evaluation
    episodes; write sweep-delay.json, sweep-delay.md and sweep-delay.png to `out`."""
    policy, state, meta = load_policy(checkpoint)
    config, task = policy.config, get_task(meta["task"])
    chunking = config.chunking
    most = chunking.action_steps - chunking.exec_steps
    if not delays or min(delays) < 0 or max(delays) > most:
        raise PhysgenError(f"--delays must be between 0 and T_p - T_a = {chunking.action_steps} - "
                           f"{chunking.exec_steps} = {most} for this checkpoint (a chunk d steps late still needs "
                           f"T_a actions), got {delays}; train with a longer action_steps or a shorter exec_steps")
    unknown = [mode for mode in modes if mode not in DELAY_MODES]
    if not modes or unknown:
        raise PhysgenError(f"--modes takes some of {', '.join(DELAY_MODES)}, got {', '.join(modes) or 'none'}")
    if "rtc" in modes and config.method == "bc":
        raise PhysgenError("rtc guides a sampler, and a bc checkpoint has none: leave rtc out of --modes")
    dataset = load_dataset(task)
    reference = dataset.metadata.get("ref_max_score")
    stacked = jax.tree.map(lambda x: x[None], state)
    rate = chunking.ensemble if chunking.ensemble is not None else ENSEMBLE_RATE
    rows = []
    for mode in modes:
        for delay in delays:
            # acting by `mode`, with chunks `delay` steps late
            acting = policy._replace(config=config.replace(delay=delay, ensemble=rate if mode == "ensemble" else None,
                                                           rtc=mode == "rtc"))
            rollouts = run_episodes(task, ChunkingAgent(acting), stacked, episode_seeds(EVALUATION, episodes),
                                    reference)
            success = wilson_interval(int(rollouts.success.sum()), rollouts.success.size)
            rows.append({"mode": mode, "delay": delay, "success": success.as_dict(),
                         "return": float(rollouts.returns.mean()), "action_change": action_change(rollouts)})
    out = Path(out)
    write_json(out / "sweep-delay.json", {"checkpoint": str(checkpoint), "task": task.name, "method": config.method,
                                          "exec_steps": chunking.exec_steps, "action_steps": chunking.action_steps,
                                          "ensemble": rate, "episodes": episodes, "rows": rows})
    lines = [f"Delay sweep of `{checkpoint}` ({config.method} on {task.name}, T_p {chunking.action_steps}, T_a "
             f"{chunking.exec_steps}, {episodes} episodes, Wilson 95%; ensemble rate k = {rate}; action change: mean "
             "|a_t - a_(t-1)| per step).", "", "| mode | delay | success | return | action change |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['delay']} | {interval_text(r['success'])} | {r['return']:.1f} | "
              f"{r['action_change']:.4f} |" for r in rows]
    write_text(out / "sweep-delay.md", "\n".join(lines) + "\n")
    delay_figure(read_json(out / "sweep-delay.json"), out / "sweep-delay.png")
    print("\n".join(lines))
    return rows


def delay_figure(sweep: dict, path: Path) -> None:
    """sweep-delay.png from sweep-delay.json's contents: success (Wilson 95%) and the mean action change against
    delay, a line per mode."""
    fig = Figure(figsize=(10, 4))
    rate_axis, change_axis = fig.subplots(1, 2)
    modes = list(dict.fromkeys(r["mode"] for r in sweep["rows"]))
    for i, mode in enumerate(modes):
        mine = [r for r in sweep["rows"] if r["mode"] == mode]
        delays = np.asarray([r["delay"] for r in mine])
        _errorbars(rate_axis, delays + 0.08 * (i - (len(modes) - 1) / 2), mine, label=mode)  # bars set apart
        change_axis.plot(delays, [r["action_change"] for r in mine], marker="o", label=mode)
    rate_axis.set(xlabel="delay (control steps)", ylabel="success rate (Wilson 95%)", ylim=(-0.02, 1.02))
    change_axis.set(xlabel="delay (control steps)", ylabel="mean |a_t - a_(t-1)|")
    rate_axis.legend()
    fig.suptitle(f"{sweep['method']} on {sweep['task']}, T_p {sweep['action_steps']}, T_a {sweep['exec_steps']}")
    write_figure(path, fig)


def action_change(rollouts) -> float:
    """Mean |a_t - a_(t-1)| over the executed steps of every episode (a jerk at a chunk switch shows here)."""
    steps = np.arange(1, rollouts.actions.shape[-2])
    executed = steps < rollouts.lengths[..., None]
    change = np.abs(np.diff(rollouts.actions, axis=-2)).mean(-1)
    return float(change[executed].mean())
