"""Real-time chunking's guidance: the soft mask, the guided estimate in closed form, and guided samplers that start
a chunk where the previous one leaves off."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physgen import PhysgenError
from physgen.data import Normalizer
from physgen.policies import ChunkingAgent, Policy, PolicyConfig, PolicyState
from physgen.policies.agent import ChunkCarry
from physgen.policies.guidance import GUIDANCE_LIMIT, Guide, diffusion_time, guided_estimate, inpainting_weights


def test_the_soft_mask_freezes_the_delay_decays_over_the_overlap_and_is_zero_beyond():
    weights = np.asarray(inpainting_weights(8, 2, 6))
    decay = lambda c: c * math.expm1(c) / math.expm1(1.0)
    expected = [1, 1, decay(4 / 5), decay(3 / 5), decay(2 / 5), decay(1 / 5), 0, 0]  # c = (6 - i) / (6 - 2 + 1)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert np.all(np.asarray(inpainting_weights(8, 2, 0)) == 0)  # no previous chunk: nothing to follow
    assert np.all(np.asarray(inpainting_weights(8, 2, -3)) == 0)


def test_the_guided_estimate_in_closed_form():
    """With the identity as the clean estimate (J = I) and weights 1, the estimate moves by (1 - tau) c (Y - x):
    at tau = 1/2, r^2 = 1/2 and c = 2, so it lands on the target; at tau = 0 the weight is clipped at the limit."""
    x, target = jnp.array([[[0.0, 1.0]]]), jnp.array([[[2.0, -1.0]]])
    guide = Guide(target, jnp.ones((1, 1)))
    np.testing.assert_allclose(guided_estimate(lambda x: x, x, guide, 0.5), target, rtol=1e-6)
    np.testing.assert_allclose(guided_estimate(lambda x: x, x, guide, 0.0), x + GUIDANCE_LIMIT * (target - x),
                               rtol=1e-6)
    np.testing.assert_allclose(guided_estimate(lambda x: x, x, guide._replace(weights=jnp.zeros((1, 1))), 0.3), x)


@pytest.mark.parametrize("alpha_bar", [0.01, 0.5, 0.99])
def test_a_diffusion_step_maps_to_the_flow_time_with_its_signal_to_noise_ratio(alpha_bar):
    tau, scale = (float(v) for v in diffusion_time(alpha_bar))
    assert tau / (1 - tau) == pytest.approx(math.sqrt(alpha_bar / (1 - alpha_bar)), rel=1e-5)
    # x_diffusion = sqrt(ab) x1 + sqrt(1 - ab) eps is `scale` times x_flow = tau x1 + (1 - tau) eps
    assert scale * tau == pytest.approx(math.sqrt(alpha_bar), rel=1e-5)
    assert scale * (1 - tau) == pytest.approx(math.sqrt(1 - alpha_bar), rel=1e-5)


def _policy(method, **changes):
    config = PolicyConfig.of(method=method, hidden=32, depth=2, time_dim=16, obs_steps=2, action_steps=8,
                             exec_steps=4, inference_steps=10, **changes)
    policy, params = Policy.create(config, 6, 2, jax.random.key(0))
    unit = Normalizer(jnp.zeros(2), jnp.ones(2))
    return policy, PolicyState(params, Normalizer(jnp.zeros(6), jnp.ones(6)), unit, -5 * jnp.ones(2), 5 * jnp.ones(2))


@pytest.mark.parametrize("method, changes", [("flow", {}), ("flow", {"integrator": "midpoint"}),
                                             ("diffusion", {"prediction": "epsilon"}),
                                             ("diffusion", {"prediction": "epsilon", "sampler": "ddpm"})])
def test_a_guided_chunk_starts_where_the_previous_one_leaves_off(method, changes):
    """At step 4 the previous chunk (sampled at 0) holds the actions of steps 4..7; with delay 2 the new chunk's
    first two actions follow them closely, the rest ever less: an untrained network, so only the guidance does it."""
    policy, state = _policy(method, **changes)
    previous = jnp.tile(jnp.array([0.5, -0.5]), (8, 1))
    carry = ChunkCarry(jnp.zeros((2, 6)), jnp.stack([previous, previous]), jnp.array([-8, 0], jnp.int32),
                       jnp.array(4, jnp.int32))
    gaps = {}
    for rtc in (False, True):
        chunks = [ChunkingAgent(policy, delay=2, rtc=rtc).sample(state, carry, jax.random.key(k)) for k in range(8)]
        gaps[rtc] = np.abs(np.asarray(chunks) - np.array([0.5, -0.5])).mean(axis=(0, 2))
    assert np.all(gaps[True][:2] < gaps[False][:2] / 5)  # frozen: weight 1
    assert gaps[True][2] < gaps[False][2]  # the overlap's decaying weights
    np.testing.assert_allclose(gaps[True][4:].mean(), gaps[False][4:].mean(), rtol=0.5)  # beyond it, free


def test_a_guided_sampler_with_nothing_to_follow_samples_as_the_unguided_one():
    policy, state = _policy("flow")
    carry = ChunkingAgent(policy).start(state, jnp.zeros(6))  # the placeholder chunks: no overlap, weights 0
    chunks = [ChunkingAgent(policy, delay=2, rtc=rtc).sample(state, carry, jax.random.key(3)) for rtc in (False, True)]
    np.testing.assert_allclose(*chunks, atol=1e-5)


def test_delay_and_rtc_are_checked():
    with pytest.raises(PhysgenError, match="delay must be between 0 and action_steps - exec_steps"):
        PolicyConfig.of(action_steps=8, exec_steps=4, delay=5)
    with pytest.raises(PhysgenError, match="rtc guides a sampler"):
        PolicyConfig.of(method="bc", rtc=True)
