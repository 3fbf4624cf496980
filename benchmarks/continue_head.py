"""Does an RSSM see its task's episode ends coming? The continue head on the recorded episodes of a dataset.

Prints, over the episodes that terminated (not truncated), the probability the RSSM gives to going on: at the
terminal frame after filtering every observation up to it (the posterior), and open loop, imagined from the state
k steps before with the recorded actions; and, on the live frames, how often one is rated below 0.5 and the
mean probability of ending there. A model whose dream should end where the task's episodes end needs the terminal
frames rated well below the live ones.

    python benchmarks/continue_head.py runs/bench/hopper/checkpoints/rssm/seed_0 [--dataset medium-v0]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from physgen.data import ensure_dataset
from physgen.envs import get_task
from physgen.errors import PhysgenError
from physgen.world_models.data import frames_from
from physgen.world_models.rssm import RSSM
from physgen.world_models.train import load_world_model

AHEAD = (1, 3, 5, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an RSSM checkpoint folder (checkpoints/rssm/seed_<s> of a bench run)")
    parser.add_argument("--dataset", default="medium-v0", help="one of the task's datasets, with terminations")
    args = parser.parse_args()
    model, params, meta = load_world_model(args.checkpoint)
    if not isinstance(model, RSSM):
        raise PhysgenError(f"{args.checkpoint} holds a {meta['method']} model, which has no continue head; pass an "
                           "RSSM checkpoint")
    task = get_task(meta["task"])
    frames = frames_from(ensure_dataset(task, args.dataset).trajectories)
    states = model.observe(params, frames.observations, frames.prev_actions, jax.random.key(0), frames.first)[0]
    going_on = np.asarray(model.continuation(params, states))
    terminal, first = np.asarray(frames.terminals) > 0, np.asarray(frames.first)
    ends = np.flatnonzero(terminal)
    if not len(ends):
        raise PhysgenError(f"no episode of {args.dataset} terminated, so there is no end to rate; pass a dataset with "
                           "failures, such as medium-v0 (hopper) or noisy-v0 (pure-JAX tasks)")
    print(f"{task.name} {args.dataset}: {len(ends)} terminated episodes, {int((~terminal & ~first).sum())} live frames")
    print("| rated from | median P(go on) at the end | share below 0.5 |\n|---|---|---|")
    print(f"| the end itself (posterior) | {np.median(going_on[ends]):.3f} | {np.mean(going_on[ends] < 0.5):.2f} |")

    @jax.jit
    def imagined_end(start, actions):  # P(go on) after imagining `actions` from `start`, vmapped over ends
        last = lambda states: jax.tree.map(lambda x: x[-1], states)
        return jax.vmap(lambda s, a: model.continuation(params, last(model.imagine(params, s, a)[0])))(start, actions)

    for k in AHEAD:
        # only the ends with k recorded steps of their own episode before them
        usable = np.array([i for i in ends if i >= k and not first[i - k + 1: i + 1].any()], int)
        if not len(usable):
            continue
        windows = usable[:, None] + np.arange(-k + 1, 1)
        rated = np.asarray(imagined_end(jax.tree.map(lambda x: x[usable - k], states), frames.prev_actions[windows]))
        print(f"| {k} steps before (open loop) | {np.median(rated):.3f} | {np.mean(rated < 0.5):.2f} |")
    live = going_on[~terminal & ~first]
    print(f"live frames: below 0.5 {np.mean(live < 0.5):.4f}; mean P(end) {np.mean(1 - live):.4f} (a dream's ends "
          "drawn from the head end this share of live steps)")


if __name__ == "__main__":
    try:
        main()
    except PhysgenError as error:
        raise SystemExit(f"physgen: {error}")
