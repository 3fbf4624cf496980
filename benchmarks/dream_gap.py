"""How far does ppo-wm's dream flatter its policy? Imagined against real returns from the same states.

Trains `ppo-wm` as `physgen bench` does (quick budget, `--set` changes as in the bench), runs each seed's final
policy (its mean action) in the real task, filters the RSSM along those episodes, and from every `--every`-th state
imagines `--horizon` steps with the same policy (sampling the prior, as in training). Prints per seed the real episodes'
length and return, then, over those start states, the expected return of the imagined steps (rewards weighted by
the continue head's probability of still being in the episode) against the rewards the real episode collected in
the same steps, and the probability of an end within them, imagined against real. A dream that flatters its
policy where the real episode falls is the gap the policy exploits.

    python benchmarks/dream_gap.py --task hopper --seeds 2 --set online.real_steps=102400
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from physgen.bench.protocol import BUDGETS
from physgen.bench.world import _splits, configure_ppo_wm, hyperparameters
from physgen.configs import override, parse_overrides
from physgen.envs import get_task
from physgen.envs.rollout import episode_lengths, episode_seeds, record_episodes
from physgen.errors import PhysgenError
from physgen.policies.ppo import GaussianAgent, agent_params
from physgen.world_models.online import train_online


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="hopper")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=4, help="real evaluation episodes per seed")
    parser.add_argument("--horizon", type=int, default=16, help="imagined steps from each start (the dream's own)")
    parser.add_argument("--every", type=int, default=4, help="a start state every this many real steps")
    parser.add_argument("--set", default="", help="field=value[,field=value...] of ppo-wm's configs, as in the bench")
    args = parser.parse_args()
    for name in ("seeds", "episodes", "horizon", "every"):
        if getattr(args, name) < 1:
            raise PhysgenError(f"--{name} must be at least 1, got {getattr(args, name)}")
    task = get_task(args.task)
    values = override(hyperparameters("ppo-wm", BUDGETS["quick"]), parse_overrides(args.set) if args.set else {})
    rssm, ppo, dream, online = configure_ppo_wm(values)
    train, _ = _splits(task)
    seeds = list(range(args.seeds))
    result = train_online(task, rssm, ppo, dream, online, seeds, train if online.offline_start else None)
    print(f"{task.name}, ppo-wm after {online.iterations * online.steps_per_iteration:,} real steps "
          f"({args.set or 'quick budget'}), trained in {result.seconds:.0f} s; {args.horizon} imagined steps from "
          f"every {args.every}th state of {args.episodes} real episodes per seed")
    print(f"| seed | real length | real return | {args.horizon}-step return, dream | real | P(end), dream | real |")
    print("|---|---|---|---|---|---|---|")
    agent, policies = GaussianAgent.for_task(task, ppo), agent_params(result.learners)
    obs, actions, rewards, ended, _ = record_episodes(task, agent, policies, episode_seeds(10_000, args.episodes))
    for i, seed in enumerate(seeds):
        params = jax.tree.map(lambda x: x[i], result.model_params)
        policy = jax.tree.map(lambda x: x[i], policies)
        gap = [imagined_and_real(result.model, params, agent, policy, *(np.asarray(x[i, e]) for x in
                                 (obs, actions, rewards, ended)), args.horizon, args.every, jax.random.key(seed))
               for e in range(args.episodes)]
        lengths = episode_lengths(np.asarray(ended[i]), task.horizon)
        episode_returns = [np.sum(r[:n], dtype=np.float64) for r, n in zip(np.asarray(rewards[i]), lengths)]
        dream_return, real_return, dream_end, real_end = (np.concatenate([g[k] for g in gap]).mean() for k in
                                                          range(4))
        print(f"| {seed} | {np.mean(lengths):.0f} | {np.mean(episode_returns):.1f} | {dream_return:.1f} | "
              f"{real_return:.1f} | {dream_end:.2f} | {real_end:.2f} |")


def imagined_and_real(model, params, agent, policy, obs, actions, rewards, ended, horizon, every, key):
    """Per start state of one real episode: the imagined and the real `horizon`-step return, and the imagined
    probability and the real indicator of an end within them."""
    length = int(episode_lengths(ended, len(ended)))
    prev = np.concatenate([np.zeros((1, actions.shape[-1])), actions[:length]])
    states = model.observe(params, jnp.asarray(obs[: length + 1]), jnp.asarray(prev), key)[0]
    terminated = bool(ended.any()) and length < len(ended)  # a truncated episode's last steps see no end
    starts = np.arange(1, length if terminated else length - horizon + 1, every)
    act = lambda state, k: agent.act(policy, (), model.decode(params, state), k)[0]

    @jax.jit
    def imagine(start, k):
        future = model.imagine(params, start, act, k, horizon)[0]
        alive = model.continuation(params, future)
        weights = jnp.concatenate([jnp.ones(1), jnp.cumprod(alive)[:-1]])
        return jnp.sum(weights * model.reward(params, future)), 1.0 - jnp.prod(alive)

    start_states = jax.tree.map(lambda x: x[starts], states)
    dream_return, dream_end = jax.vmap(imagine)(start_states, jax.random.split(key, len(starts)))
    # real step t leads from state t to state t + 1, so the steps after state s are s .. s + horizon - 1
    real_return = np.array([rewards[s: s + horizon].sum() for s in starts])
    real_end = np.array([ended[s: s + horizon].any() for s in starts], float)
    return np.asarray(dream_return), real_return, np.asarray(dream_end), real_end


if __name__ == "__main__":
    try:
        main()
    except PhysgenError as error:
        raise SystemExit(f"physgen: {error}")
