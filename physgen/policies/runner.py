"""Trained policies on disk and in use: orbax checkpoints and a compiled numpy-in, numpy-out `act`."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from physgen.checkpoint import load_checkpoint, save_checkpoint
from physgen.data import Normalizer
from physgen.envs import Task, get_task
from physgen.errors import PhysgenError
from physgen.policies.policy import Policy, PolicyConfig, PolicyState, flat_sampler, stored_weights
from physgen.policies.train import TrainedPolicies


def save_policy(path: str | Path, task: Task, trained: TrainedPolicies, index: int,
                distilled_from: dict | None = None) -> Path:
    """Checkpoint seed `index` of `trained`: raw and EMA parameters, normalizers, bounds, config; a distilled student
    (`physgen.policies.distill`) also records its teacher and distillation in meta `distilled_from`."""
    state = trained.state_of(index)
    arrays = {"params": nnx.to_pure_dict(jax.tree.map(lambda x: x[index], trained.params)),
              "ema": nnx.to_pure_dict(state.params),
              "obs_norm": state.obs_norm._asdict(), "act_norm": state.act_norm._asdict()}
    meta = {"method": trained.policy.config.method, "task": task.name, "seed": trained.seeds[index],
            "config": trained.policy.config.as_flat(), "obs_dim": task.obs_dim, "act_dim": task.act_dim}
    if distilled_from is not None:
        meta["distilled_from"] = distilled_from
    return save_checkpoint(path, arrays, meta)


def load_policy(path: str | Path, task: str | None = None) -> tuple[Policy, PolicyState, dict]:
    """(policy, state with the EMA weights, meta) of a checkpoint; nothing else is needed to rebuild it."""
    arrays, meta = load_checkpoint(path, task)
    if meta["method"] not in ("diffusion", "flow", "bc"):
        raise PhysgenError(f"checkpoint {path} holds a {meta['method']!r} policy, not diffusion, flow or bc")
    config = PolicyConfig.from_dict(meta["config"])
    policy, params = Policy.abstract(config, meta["obs_dim"], meta["act_dim"])
    nnx.replace_by_pure_dict(params, arrays["ema"])
    spec = get_task(meta["task"]).action_space
    state = PolicyState(params, Normalizer(**arrays["obs_norm"]), Normalizer(**arrays["act_norm"]),
                        jnp.asarray(spec.low), jnp.asarray(spec.high))
    return policy, jax.tree.map(jnp.asarray, state), meta


class PolicyRunner:
    """`act(obs_history, seed) -> action chunk` with numpy in and out, compiled once at construction.

    `seed` (an int) seeds the sampler's noise for this call, inside the compiled program.
    """

    def __init__(self, policy: Policy, state: PolicyState, steps: int | None = None):
        policy, state = stored_weights(policy, state)  # the config's form, in the compiled program
        self.policy, self.state, self.steps = policy, state, steps
        self.obs_shape = (policy.config.chunking.obs_steps, policy.obs_dim)
        self._leaves, sample = flat_sampler(policy, state, steps)
        self._act = jax.jit(lambda leaves, obs, seed: sample(leaves, obs, jax.random.key(seed)))
        self._act(self._leaves, np.zeros(self.obs_shape, np.float32), 0).block_until_ready()  # compile

    @classmethod
    def from_checkpoint(cls, path: str | Path, task: str | None = None, steps: int | None = None) -> "PolicyRunner":
        policy, state, _ = load_policy(path, task)
        return cls(policy, state, steps)

    def act(self, obs_history: np.ndarray, seed: int) -> np.ndarray:
        obs = np.asarray(obs_history, np.float32)
        if obs.shape != self.obs_shape:
            raise PhysgenError(f"observation history has shape {obs.shape}, the policy expects {self.obs_shape} "
                               "(obs_steps x obs_dim)")
        if not np.all(np.isfinite(obs)):
            raise PhysgenError("observation history holds NaN or Inf (or a value beyond float32); check the sensor "
                               "or state estimator")
        chunk = np.asarray(self._act(self._leaves, obs, seed))
        if not np.all(np.isfinite(chunk)):  # clipping keeps NaN: broken weights must not reach the actuators
            raise PhysgenError("the policy produced a non-finite chunk; its parameters are corrupt: train it again")
        return chunk
