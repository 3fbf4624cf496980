"""How BC and diffusion pass `fork`'s obstacle from states and from frames: when the path takes a side, and where
each policy's first action points from a centred start.

Trains each case with its task's `quick` recipe (seeds 0..N-1 in one program, on the task's `expert-v0`, created if
missing), runs every seed on the same evaluation episodes and prints per case: success; the share of episodes whose
path held a side before the obstacle's middle (`fork.held_sides`, on the states of `fork` replayed with the
actions taken, which frames do not hold as numbers), the left share of those, and the median step it first held one;
the lateral component of the first action from a centred start (agent and goal at x = 0, where the two modes' mean
points straight ahead), per seed; and the final training loss per seed. "state, image recipe" is BC on states with
the image recipe's settings (T_o 1, learning rate 3e-3, batch 64, 1,500 steps), which separates the frames from the
recipe; "position, goal" observes the state without its velocity (fork's dataset less those columns), with T_o 2
and 1, which separates the motion a policy sees from the rest of the state.

    python benchmarks/fork_sides.py [--seeds 4] [--episodes 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from physgen.bench.protocol import policy_config
from physgen.data import ensure_dataset, split_episodes
from physgen.envs import fork, get_task
from physgen.envs.base import box
from physgen.envs.images import camera
from physgen.envs.rollout import episode_seeds, replay, run_episodes
from physgen.policies.agent import ChunkingAgent
from physgen.policies.train import train_policies

IMAGE_RECIPE = {"obs_steps": 1, "learning_rate": 3e-3, "batch_size": 64, "steps": 1_500}
CASES = (("state", "bc", "state", {}), ("state, image recipe", "bc", "state", IMAGE_RECIPE),
         ("position, goal", "bc", "no velocity", {}), ("position, goal, T_o 1", "bc", "no velocity", {"obs_steps": 1}),
         ("frames", "bc", "image", {}), ("state", "diffusion", "state", {}), ("frames", "diffusion", "image", {}))
KEPT = np.array([0, 1, 4, 5])  # fork's observation less its velocity (columns 2 and 3)
CENTRED = fork.ForkState(jnp.array([0.0, fork.START_Y]), jnp.zeros(2), jnp.array([0.0, fork.GOAL_Y]),
                         jnp.float32(1), jnp.int32(0), jnp.bool_(False))


def without_velocity(task):
    """`task` (fork) observing (position, goal): its functions' observations less the velocity's columns."""
    def reset(key):
        state, obs = task.functional.reset(key)
        return state, obs[KEPT]

    def step(state, action):
        result = task.functional.step(state, action)
        return result._replace(obs=result.obs[KEPT])

    return dataclasses.replace(task, name="fork-no-velocity", observation_space=box(-fork.ARENA, fork.ARENA, len(KEPT)),
                               functional=task.functional._replace(reset=reset, step=step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()
    seeds, episodes = list(range(args.seeds)), episode_seeds(7, args.episodes)
    print("| policy | input | success | held a side | left of those | first held (median step) | "
          "first lateral action, centred start, per seed | final loss per seed |\n|---|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    for label, method, obs, changes in CASES:
        task = get_task("fork", obs="state" if obs == "no velocity" else obs)
        train, _ = split_episodes(ensure_dataset(task).trajectories, 0.1, 0)
        if obs == "no velocity":
            task, train = without_velocity(task), train._replace(observations=train.observations[:, KEPT],
                                                                 next_observations=train.next_observations[:, KEPT])
        trained = train_policies(task, policy_config(task, method, "quick").replace(**changes), train, seeds,
                                 progress=False)
        agent = ChunkingAgent(trained.policy)
        rollouts = run_episodes(task, agent, trained.states, episodes)
        walked = [np.asarray(replay(get_task("fork"), jnp.asarray(episodes), taken)) for taken in rollouts.actions]
        first = [fork.held_sides(path)[:1] for per_seed in walked for path in per_seed]
        held = [sides[0] for sides in first if sides]
        centred = camera(fork.render, CENTRED) if obs == "image" else fork._obs(CENTRED)
        centred = centred[KEPT] if obs == "no velocity" else centred
        lateral = []
        for i in range(len(seeds)):
            state = trained.state_of(i)
            action, _ = agent.act(state, agent.start(state, centred), centred, jax.random.key(0))
            lateral.append(f"{float(action[0]):+.2f}")
        first_held = f"{np.median([t for t, _ in held]):.0f}" if held else "-"  # no path held a side
        print(f"| {method} | {label} | {rollouts.success.mean():.2f} | {len(held) / len(first):.2f} | "
              f"{sum(side < 0 for _, side in held)} of {len(held)} | {first_held} | "
              f"{' '.join(lateral)} | {' '.join(f'{x:.4f}' for x in trained.losses[:, -1])} |", flush=True)
    print(f"{time.perf_counter() - started:.0f} s; {len(seeds)} seeds x {len(episodes)} episodes each")


if __name__ == "__main__":
    main()
