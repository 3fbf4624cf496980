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
from functools import partial

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
        lengths = episode_lengths(np.asarray(ended[i]), task.horizon)
        episode_returns = [np.sum(r[:n], dtype=np.float64) for r, n in zip(np.asarray(rewards[i]), lengths)]
        key = jax.random.key(seed)
        starts, real_return, real_end = zip(*[
            starts_and_real(result.model, params, *(np.asarray(x[i, e]) for x in (obs, actions, rewards, ended)),
                            int(n), args.horizon, args.every, key) for e, n in enumerate(lengths)])
        # each episode's keys split from the seed's key as for that episode alone (as the rows in the docs drew them)
        keys = jnp.concatenate([jax.random.split(key, len(s.deter)) for s in starts])
        starts = jax.tree.map(lambda *x: jnp.concatenate(x), *starts)
        dream_return, dream_end = imagined(result.model, agent, params, policy, starts, keys, args.horizon)
        print(f"| {seed} | {np.mean(lengths):.0f} | {np.mean(episode_returns):.1f} | {dream_return.mean():.1f} | "
              f"{np.concatenate(real_return).mean():.1f} | {dream_end.mean():.2f} | "
              f"{np.concatenate(real_end).mean():.2f} |")


def starts_and_real(model, params, obs, actions, rewards, ended, length, horizon, every, key):
    """From one real episode of `length` steps: the RSSM's posterior states at every `every`-th step, and the real
    return and end indicator of the `horizon` steps after each."""
    prev = np.concatenate([np.zeros((1, actions.shape[-1])), actions[:length]])
    states = model.observe(params, jnp.asarray(obs[: length + 1]), jnp.asarray(prev), key)[0]
    last = length if length < len(ended) else length - horizon + 1  # a truncated episode's last steps see no end
    starts = np.arange(1, last, every)
    # real step t leads from state t to state t + 1, so the steps after state s are s .. s + horizon - 1
    real_return = np.array([rewards[s: s + horizon].sum() for s in starts])
    real_end = np.array([ended[s: s + horizon].any() for s in starts], float)
    return jax.tree.map(lambda x: x[starts], states), real_return, real_end


@partial(jax.jit, static_argnames=("model", "agent", "horizon"))
def imagined(model, agent, params, policy, starts, keys, horizon):
    """Per start state: the expected return of `horizon` imagined steps with the policy (rewards weighted by the
    probability of still being in the episode) and the probability of an end within them."""
    act = lambda state, k: agent.act(policy, (), model.decode(params, state), k)[0]

    def one(start, key):
        future = model.imagine(params, start, act, key, horizon)[0]
        alive = model.continuation(params, future)
        weights = jnp.concatenate([jnp.ones(1), jnp.cumprod(alive)[:-1]])
        return jnp.sum(weights * model.reward(params, future)), 1.0 - jnp.prod(alive)

    return jax.vmap(one)(starts, keys)


if __name__ == "__main__":
    try:
        main()
    except PhysgenError as error:
        raise SystemExit(f"physgen: {error}")
