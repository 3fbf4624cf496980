"""Policies: generative (diffusion, flow matching) and baselines (BC, PPO), with their checkpoints."""

from physgen.policies.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
