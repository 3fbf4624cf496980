"""Policies: generative (diffusion, flow matching, their one-step students) and baselines (BC, PPO)."""

from physgen.policies.agent import ChunkingAgent
from physgen.policies.distill import DistillConfig, distill_checkpoint, distill_policies
from physgen.policies.policy import Policy, PolicyConfig, PolicyState, act, flat_sampler, stored_weights
from physgen.policies.runner import PolicyRunner, load_policy, save_policy
from physgen.policies.train import TrainedPolicies, train_policies

__all__ = ["ChunkingAgent", "DistillConfig", "Policy", "PolicyConfig", "PolicyRunner", "PolicyState", "TrainedPolicies",
           "act", "distill_checkpoint", "distill_policies", "flat_sampler", "load_policy", "save_policy",
           "stored_weights", "train_policies"]
