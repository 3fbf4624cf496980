import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physgen import PhysgenError
from physgen.data import Normalizer
from physgen.policies.policy import Policy, PolicyConfig, PolicyState, act
from physgen.policies.quantize import WEIGHTS, QuantizedArray, dequantize, quantize

OBS_DIM, ACT_DIM = 5, 2
STEPS = 2  # sampler steps: enough to chain the network, few to compile
SMALL = {"mlp": dict(hidden=32, depth=2, time_dim=8, action_steps=8),  # a U-Net of one level: conv kernels, quick
         "unet": dict(network="unet", unet_dims=(8,), unet_groups=4, time_dim=8, action_steps=8)}


def weight_matrix(seed=0, shape=(6, 4)):
    return jax.random.normal(jax.random.key(seed), shape)


def small_policy(network: str, weights: str = "float32"):
    config = PolicyConfig.of(method="flow", weights=weights, **SMALL[network])
    policy, params = Policy.create(config, OBS_DIM, ACT_DIM, jax.random.key(0))
    unit = lambda n: Normalizer(jnp.zeros(n), jnp.ones(n))  # noqa: E731
    return policy, PolicyState(params, unit(OBS_DIM), unit(ACT_DIM), -1e6 * jnp.ones(ACT_DIM), 1e6 * jnp.ones(ACT_DIM))


def with_weights(policy: Policy, weights: str) -> Policy:
    return policy._replace(config=dataclasses.replace(policy.config, weights=weights))


def test_int8_scales_are_the_peak_magnitude_of_each_output_channel_over_127():
    w = jnp.array([[1.0, -0.5, 0.0], [-2.54, 0.25, 0.0]])  # output channels are columns; the last is all zero
    q = quantize({"w": w}, "int8")["w"]
    np.testing.assert_array_equal(q.scale, np.float32([2.54, 0.5, 1.0]) / np.float32([127, 127, 1]))
    np.testing.assert_array_equal(q.values, [[50, -127, 0], [-127, 64, 0]])  # 0.25 / (0.5 / 127) = 63.5: to even
    assert q.values.dtype == jnp.int8 and q.scale.dtype == jnp.float32


@pytest.mark.parametrize("shape", [(6, 4), (5, 3, 7)])  # a Linear kernel (in, out), a conv kernel (k, in, out)
def test_int8_round_trip_error_is_at_most_half_a_step_of_its_channel(shape):
    w = weight_matrix(1, shape) * jnp.arange(1, shape[-1] + 1)  # channels of different ranges
    q = quantize(w, "int8")
    error = np.abs(np.asarray(dequantize(q)) - np.asarray(w))
    # half a step, plus float32's rounding of w / scale (|.| <= 127, half an ulp: 2^-18) and of the product (2^-24
    # relative to |w| <= 127 scale)
    bound = np.asarray(q.scale) * (0.5 + 2.0**-18 + 127 * 2.0**-24)
    assert np.all(error <= bound)
    assert np.all(np.abs(q.values).max(axis=tuple(range(len(shape) - 1))) == 127)  # each channel uses its range


def test_an_all_zero_channel_stays_exact():
    w = jnp.zeros((3, 2)).at[:, 0].set(jnp.array([0.3, -0.1, 0.2]))
    np.testing.assert_array_equal(dequantize(quantize(w, "int8"))[:, 1], 0.0)


def test_bfloat16_round_trip_is_the_cast_and_back():
    w = weight_matrix()
    stored = quantize(w, "bfloat16")
    assert stored.dtype == jnp.bfloat16
    np.testing.assert_array_equal(dequantize(stored), w.astype(jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("weights", WEIGHTS)
def test_quantizing_twice_is_quantizing_once_and_biases_stay_float32(weights):
    params = {"kernel": weight_matrix(), "bias": jnp.arange(4.0), "scale": jnp.float32(2.0)}
    once = quantize(params, weights)
    for a, b in zip(jax.tree.leaves(quantize(once, weights)), jax.tree.leaves(once), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert isinstance(once["kernel"], QuantizedArray) == (weights == "int8")
    for name in ("bias", "scale"):
        assert once[name] is params[name]


def test_float32_parameters_pass_through_unchanged():
    params = {"kernel": weight_matrix(), "bias": jnp.arange(4.0)}
    assert quantize(params, "float32") is params
    for a, b in zip(jax.tree.leaves(dequantize(params)), jax.tree.leaves(params), strict=True):
        assert a is b


def test_an_unknown_weights_name_is_refused_naming_the_choices():
    with pytest.raises(PhysgenError, match="float32, bfloat16, int8"):
        quantize({"w": weight_matrix()}, "int4")
    with pytest.raises(PhysgenError, match="weights must be one of"):
        PolicyConfig.of(weights="fp8")


def test_a_config_without_the_field_loads_with_float32_weights():
    flat = PolicyConfig.of(method="flow").as_flat()
    del flat["weights"]  # a checkpoint written before the field existed
    assert PolicyConfig.from_dict(flat).weights == "float32"


def test_a_layer_error_stays_within_the_bound_of_its_weight_error():
    """|x @ (w - dequantize(w))|_j <= sum_i |x_i| scale_j / 2: the closed form each output unit's error obeys."""
    w, x = weight_matrix(2, (16, 8)), jax.random.normal(jax.random.key(3), (16,))
    q = quantize(w, "int8")
    error = np.abs(np.asarray(x @ dequantize(q) - x @ w))
    bound = np.abs(np.asarray(x)).sum() * np.asarray(q.scale) * (0.5 + 2.0**-17)  # the slack: float32 sums
    assert np.all(error <= bound)


@pytest.mark.parametrize("network", ["mlp", "unet"])
@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_a_prequantized_state_acts_exactly_as_the_float_state_under_the_same_weights(network, weights):
    policy, state = small_policy(network, "float32")
    policy = with_weights(policy, weights)
    stored = state._replace(params=quantize(state.params, weights))
    sample = jax.jit(lambda state, obs, key: act(policy, state, obs, key, STEPS))
    obs, key = jax.random.normal(jax.random.key(4), (1, 2, OBS_DIM)), jax.random.key(5)
    np.testing.assert_array_equal(sample(stored, obs, key), sample(state, obs, key))


@pytest.mark.parametrize("network", ["mlp", "unet"])
@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_quantized_chunks_move_less_than_the_sampler_noise_moves_them(network, weights):
    """A loose sanity check: quantizing changes the chunk, by less than drawing other noise does."""
    policy, state = small_policy(network)
    sample = jax.jit(lambda policy, obs, key: act(policy, state, obs, key, STEPS), static_argnums=0)
    obs = jax.random.normal(jax.random.key(4), (1, 2, OBS_DIM))
    full, other_noise = (sample(policy, obs, jax.random.key(k)) for k in (5, 6))
    quantized = sample(with_weights(policy, weights), obs, jax.random.key(5))
    change = np.linalg.norm(quantized - full)
    assert 0 < change < np.linalg.norm(other_noise - full)
