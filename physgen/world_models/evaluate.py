"""Open-loop evaluation of an RSSM: observe the first `context` steps of held-out chunks, imagine the next
`horizon` observations from the recorded actions, and compare with two simple baselines: the last observation
held, and a linear model o' = A [o; a] + b fitted by least squares on the training split.

The error at k steps ahead is the root-mean-square error over observation dimensions (raw units), averaged over
chunks; the RSSM's has an interval over training seeds.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure  # drawn without pyplot: no backend is chosen or changed
import numpy as np

from physgen.data import SequenceBatch, Trajectories, sequence_starts
from physgen.io import write_figure
from physgen.stats import seed_t_interval
from physgen.world_models.rssm import RSSM


class OpenLoop(NamedTuple):
    """Errors at 1..horizon steps ahead: `rssm` per training seed (seeds, horizon), the baselines (horizon,); and the
    held-out `chunks` with what each predicted for them: `imagined` (seeds, N, horizon, obs_dim), `linear_path`."""

    rssm: np.ndarray
    last: np.ndarray
    linear: np.ndarray
    context: int
    chunks: SequenceBatch
    imagined: np.ndarray
    linear_path: np.ndarray

    def interval(self, steps_ahead: int):
        """The RSSM's mean error `steps_ahead` steps ahead with a t-interval over seeds."""
        return seed_t_interval(self.rssm[:, steps_ahead - 1])

    def summary(self, steps: tuple[int, ...] = (1, 5, 10, 25)) -> str:
        lines = [(f"open-loop RMSE after {self.context} observed steps, {len(self.imagined[0])} held-out chunks "
                  f"({self.rssm.shape[0]} seeds):")]
        for k in (s for s in steps if s <= self.rssm.shape[1]):
            est = self.interval(k)
            lines.append(f"  {k:3d} steps: rssm {est.estimate:.4f} [{est.low:.4f}, {est.high:.4f}]  "
                         f"last obs {self.last[k - 1]:.4f}  linear {self.linear[k - 1]:.4f}")
        return "\n".join(lines)


def fit_linear(data: Trajectories) -> np.ndarray:
    """W (obs_dim + act_dim + 1, obs_dim) minimizing ||[o, a, 1] W - o'||^2 over every step of `data`."""
    x = np.concatenate([np.asarray(data.observations), np.asarray(data.actions),
                        np.ones((data.num_steps, 1), np.float32)], axis=1).astype(np.float64)
    return np.linalg.lstsq(x, np.asarray(data.next_observations, np.float64), rcond=None)[0].astype(np.float32)


def held_out_chunks(data: Trajectories, context: int, horizon: int, chunks: int, seed: int = 0) -> SequenceBatch:
    """Up to `chunks` chunks of `context + horizon - 1` steps (drawn without replacement, seeded)."""
    starts = sequence_starts(data, context + horizon - 1)
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(starts, size=min(chunks, len(starts)), replace=False))
    idx = starts[:, None] + np.arange(context + horizon - 1)
    return SequenceBatch(*(np.asarray(x)[idx] for x in (data.observations, data.actions, data.rewards,
                                                        data.terminals, data.next_observations)))


@partial(jax.jit, static_argnums=(0, 3))
def imagine_chunks(model: RSSM, params, chunks: SequenceBatch, context: int, key: jax.Array) -> jax.Array:
    """Imagined observations (seeds, N, horizon, obs_dim) of o_context .. of each chunk, given o_0 .. o_{context-1},
    for every seed's parameters (stacked on axis 0)."""
    obs = chunks.observations[:, :context]
    prev_actions = jnp.concatenate([jnp.zeros_like(chunks.actions[:, :1]), chunks.actions[:, :context - 1]], 1)
    future_actions = chunks.actions[:, context - 1:]

    def one(params, o, pa, fa, k):
        k_obs, k_img = jax.random.split(k)
        states = model.observe(params, o, pa, k_obs)[0]
        start = jax.tree.map(lambda x: x[-1], states)
        return model.decode(params, model.imagine(params, start, fa, k_img)[0])

    keys = jax.random.split(key, obs.shape[0])
    per_chunk = jax.vmap(one, in_axes=(None, 0, 0, 0, 0))
    return jax.vmap(per_chunk, in_axes=(0, None, None, None, None))(params, obs, prev_actions, future_actions, keys)


def _rmse(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((pred - true) ** 2, axis=-1)).mean(axis=0)


def baseline_predictions(weights: np.ndarray, chunks: SequenceBatch, context: int) -> tuple[np.ndarray, np.ndarray]:
    """(last observation held, linear model rolled out) predictions (N, horizon, obs_dim)."""
    start = chunks.observations[:, context - 1]
    actions = chunks.actions[:, context - 1:]
    last = np.repeat(start[:, None], actions.shape[1], axis=1)
    linear, obs = [], start
    for t in range(actions.shape[1]):
        obs = np.concatenate([obs, actions[:, t], np.ones((len(obs), 1), obs.dtype)], 1) @ weights
        linear.append(obs)
    return last, np.stack(linear, axis=1)


def open_loop_errors(model: RSSM, params, train: Trajectories, test: Trajectories, context: int = 25,
                     horizon: int = 25, chunks: int = 256, seed: int = 0) -> OpenLoop:
    """Errors of every seed's RSSM (params stacked on axis 0) and of both baselines on the same held-out chunks."""
    batch = held_out_chunks(test, context, horizon, chunks, seed)
    true = batch.next_observations[:, context - 1:]
    imagined = np.asarray(imagine_chunks(model, params, batch, context, jax.random.key(seed)))
    last, linear = baseline_predictions(fit_linear(train), batch, context)
    rssm = np.stack([_rmse(prediction, true) for prediction in imagined])
    return OpenLoop(rssm, _rmse(last, true), _rmse(linear, true), context, batch, imagined, linear)


def plot_open_loop(path: str | Path, result: OpenLoop, dims: tuple[int, int] = (0, 1), shown: int = 4) -> Path:
    """Left: true vs imagined (first seed) and linear-model trajectories of `shown` chunks in observation dimensions
    `dims` (e.g. a 2-D position); right: error against steps ahead, the RSSM with its interval over seeds."""
    path = Path(path)
    fig = Figure(figsize=(11, 4.5))
    traj, err = fig.subplots(1, 2)
    c, (i, j), chunks, imagined, linear = result.context, dims, result.chunks, result.imagined[0], result.linear_path
    for n in range(min(shown, len(imagined))):
        seen, future = chunks.observations[n, :c], chunks.next_observations[n, c - 1:]
        color = f"C{n}"
        traj.plot(seen[:, i], seen[:, j], color=color, lw=2, alpha=0.4)
        traj.plot(future[:, i], future[:, j], color=color, lw=2, label="true" if n == 0 else None)
        traj.plot(imagined[n, :, i], imagined[n, :, j], color=color, ls="--", label="RSSM imagined" if n == 0 else None)
        traj.plot(linear[n, :, i], linear[n, :, j], color=color, ls=":", label="linear" if n == 0 else None)
    traj.set(title=f"observed {c} steps (faint), then open loop", xlabel=f"obs[{i}]", ylabel=f"obs[{j}]")
    traj.axis("equal")
    traj.legend()
    steps = np.arange(1, result.rssm.shape[1] + 1)
    bands = np.array([result.interval(k)[1:] for k in steps])
    err.plot(steps, result.rssm.mean(0), color="C0", label=f"RSSM ({result.rssm.shape[0]} seeds, 95% CI)")
    err.fill_between(steps, bands[:, 0], bands[:, 1], color="C0", alpha=0.25)
    err.plot(steps, result.last, color="C1", label="last observation held")
    err.plot(steps, result.linear, color="C2", label="linear least squares")
    err.set(title="open-loop error", xlabel="steps ahead", ylabel="RMSE (raw units)", yscale="log")
    err.legend()
    write_figure(path, fig)
    return path
