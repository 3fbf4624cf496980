"""The world-model bars on `fork`: RSSM open-loop error against the simple baselines, rssm-mpc success, and the
latency of one MPC action.

Generates an expert and a noisy-expert dataset in a temporary Minari root (the expert never collides, so a model of
its data alone cannot foresee a collision), trains the RSSM on both training splits with several seeds vmapped,
then prints: the open-loop RMSE at 1..25 steps after observing 25 steps of held-out chunks (interval over seeds)
beside the last-observation and linear least-squares baselines; rssm-mpc success over fresh episodes (per-seed
bootstrap interval and pooled Wilson interval) beside the same planner with the true dynamics; and p50/p99 of one
jitted control step (filter + plan) on this CPU.
Writes the true-vs-imagined figure to --out.

    python benchmarks/world_model_openloop.py [--steps 10000] [--seeds 3] [--episodes 50] [--out runs/wm-fork]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def true_model_success(task, config, episode_seeds: np.ndarray) -> float:
    """Success of the same planner when it imagines with the task's true dynamics: the planner's own ceiling, so
    that what rssm-mpc loses below it is the learned model's doing."""
    from physgen.envs.rollout import reset_key
    from physgen.world_models.mpc import optimize

    fns, low, high = task.functional, jnp.asarray(task.action_space.low), jnp.asarray(task.action_space.high)

    def predicted_return(env_state, actions):
        def step(carry, action):
            state, alive, weight = carry
            out = fns.step(state, action)
            ended = (out.terminated | out.truncated).astype(jnp.float32)
            return (out.state, alive * (1.0 - ended), weight * config.discount), alive * weight * out.reward

        return jnp.sum(jax.lax.scan(step, (env_state, 1.0, 1.0), actions)[1])

    def episode(seed):
        key = reset_key(seed)
        state, _ = fns.reset(key)

        def control(carry, k):
            state, plan, reached = carry
            scores = jax.vmap(lambda plans: predicted_return(state, plans))
            plan = optimize(scores, plan, k, config, low, high)
            out = fns.step(state, plan[0])
            reached = reached | out.events["goal_reached"]
            return (out.state, jnp.concatenate([plan[1:], plan[-1:]]), reached), out.events["collision"]

        keys = jax.random.split(jax.random.fold_in(key, 2), task.horizon)
        start = (state, jnp.zeros((config.horizon, task.act_dim)), jnp.bool_(False))
        (_, _, reached), collided = jax.lax.scan(control, start, keys)
        return reached & ~collided.any()

    return float(jax.jit(jax.vmap(episode))(jnp.asarray(episode_seeds)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=50, help="MPC evaluation episodes per seed")
    parser.add_argument("--data-episodes", type=int, default=500, help="episodes per dataset")
    parser.add_argument("--planner", choices=("cem", "mppi"), default="cem")
    parser.add_argument("--calls", type=int, default=300, help="timed MPC calls")
    parser.add_argument("--out", default="runs/wm-fork")
    args = parser.parse_args()
    os.environ.setdefault("MINARI_DATASETS_PATH", tempfile.mkdtemp(prefix="physgen-wm-"))

    from physgen.stats import rate_interval, wilson_interval
    from physgen.data import generate_dataset, load_dataset, split_episodes
    from physgen.envs import get_task
    from physgen.envs.rollout import episode_seeds
    from physgen.seeds import TUNING
    from physgen.world_models.data import concat_trajectories, generate_noisy_dataset
    from physgen.world_models.evaluate import open_loop_errors, plot_open_loop
    from physgen.envs.rollout import run_episodes
    from physgen.world_models.mpc import MPC, MPCConfig
    from physgen.world_models.rssm import RSSMConfig
    from physgen.world_models.train import save_world_model, train_world_models

    task = get_task("fork")
    generate_dataset(task, episodes=args.data_episodes, seed=0)
    generate_noisy_dataset(task, episodes=args.data_episodes, seed=1)
    splits = [split_episodes(load_dataset(task, name).trajectories, 0.1, seed=0) for name in ("expert-v0", "noisy-v0")]
    train, test = (concat_trajectories([s[i] for s in splits]) for i in (0, 1))
    config = RSSMConfig.of(steps=args.steps, steps_per_call=500)
    print(f"fork: {train.num_episodes} training / {test.num_episodes} held-out episodes (expert + noisy expert)")
    trained = train_world_models(task, config, train, list(range(args.seeds)))
    print(f"training: {args.seeds} seeds x {args.steps} steps vmapped in {trained.seconds:.0f} s "
          f"(final loss per seed {np.round(trained.metrics['loss'][:, -1], 3)}); {trained.model.config}")
    for index in range(args.seeds):
        save_world_model(os.path.join(os.path.abspath(args.out), f"seed_{index}"), task, trained, index)

    result = open_loop_errors(trained.model, trained.params, train, test, context=25, horizon=25)
    print(result.summary())
    better = min(result.last[24], result.linear[24])
    print(f"bar: rssm at 25 steps {result.rssm[:, 24].mean():.4f} <= half the better baseline "
          f"({better:.4f} / 2 = {better / 2:.4f}): {result.rssm[:, 24].mean() <= better / 2}")
    print("figure:", plot_open_loop(os.path.join(args.out, "fork_open_loop.png"), result))

    mpc = MPC.for_task(trained.model, MPCConfig(planner=args.planner), task)
    start = time.perf_counter()
    rollouts = run_episodes(task, mpc, trained.params, episode_seeds(TUNING, args.episodes))
    rates = rollouts.success.mean(1)
    pooled = wilson_interval(int(rollouts.success.sum()), rollouts.success.size)
    across = rate_interval(rollouts.success.sum(1), rollouts.success.shape[1])
    collided = np.mean([e.any() for e in rollouts.events["collision"].reshape(-1, task.horizon)])
    print(f"rssm-mpc ({mpc.config}): success per seed {np.round(rates, 2)}, mean {across.estimate:.2f} "
          f"[{across.low:.2f}, {across.high:.2f}] over seeds, pooled {pooled.estimate:.2f} "
          f"[{pooled.low:.2f}, {pooled.high:.2f}] (Wilson, {rollouts.success.size} episodes); collisions "
          f"{collided:.2f}; {time.perf_counter() - start:.0f} s")
    print(f"the same planner with fork's true dynamics in place of the RSSM: success "
          f"{true_model_success(task, mpc.config, episode_seeds(TUNING, args.episodes)):.2f}")

    params = trained.params_of(0)
    step = jax.jit(mpc.act)
    carry, obs = mpc.start(), jnp.asarray(test.observations[0])
    step(params, carry, obs, jax.random.key(0))[0].block_until_ready()
    times = []
    for i in range(args.calls):
        begin = time.perf_counter()
        action, carry = step(params, carry, obs, jax.random.key(i))
        action.block_until_ready()
        times.append(time.perf_counter() - begin)
    p50, p99 = np.percentile(np.asarray(times) * 1e3, [50, 99])
    print(f"one MPC action (filter + {mpc.config.planner}, {mpc.config.population} x {mpc.config.horizon} x "
          f"{mpc.config.iterations}) on {os.cpu_count()} CPU cores: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
          f"(50 Hz budget 20 ms: {'met' if p99 <= 20 else 'missed'})")
    print("config:", trained.model.config.as_flat())


if __name__ == "__main__":
    main()
