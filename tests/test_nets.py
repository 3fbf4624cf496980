import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from physgen.policies import diffusion, flow
from physgen.policies.nets import ConditionalUnet1D, Conv1d, MLPDenoiser, Upsample1d, mish, sinusoidal_embedding


def test_sinusoidal_embedding_closed_form():
    emb = sinusoidal_embedding(jnp.array([0.0, 0.5]), 4)
    freqs = np.exp(-np.log(10000.0) * np.arange(2) / 1)
    angles = 1000.0 * 0.5 * freqs
    np.testing.assert_allclose(emb[0], [0, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(emb[1], np.concatenate([np.sin(angles), np.cos(angles)]), rtol=1e-5)


def test_mish_and_its_derivative_equal_the_textbook_form_in_float64():
    x = np.concatenate([np.linspace(-60, 60, 2001), [-1e4, -88.0, 19.99, 20.0, 20.01, 1e4]]).astype(np.float32)
    x64 = x.astype(np.float64)
    softplus = np.logaddexp(0.0, x64)
    expected = x64 * np.tanh(softplus)
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * x64))
    expected_grad = np.tanh(softplus) + x64 * (1.0 - np.tanh(softplus) ** 2) * sigmoid
    np.testing.assert_allclose(mish(jnp.asarray(x)), expected, rtol=1e-6, atol=1e-7)
    grad = jax.vmap(jax.grad(mish))(jnp.asarray(x))
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(jax.grad(lambda v: mish(v).sum())(jnp.asarray(x)))).all()


@pytest.mark.parametrize("kernel, stride", [(1, 1), (3, 1), (5, 1), (3, 2)])
def test_fast_conv_equals_flax_conv(kernel, stride):
    fast = Conv1d(6, 8, kernel, stride, fast=True, rngs=nnx.Rngs(0))
    fast.bias[...] = jax.random.normal(jax.random.key(1), (8,))
    reference = nnx.Conv(6, 8, (kernel,), strides=(stride,), padding=[(kernel // 2, kernel // 2)], rngs=nnx.Rngs(0))
    reference.kernel[...] = fast.kernel[...]
    reference.bias[...] = fast.bias[...]
    x = jax.random.normal(jax.random.key(2), (3, 16, 6))
    np.testing.assert_allclose(fast(x), reference(x), rtol=1e-5, atol=1e-5)


def test_upsample_doubles_the_length_like_a_transposed_convolution():
    up = Upsample1d(4, fast=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 5, 4))
    y = up(x)
    assert y.shape == (2, 10, 4)
    # PyTorch's ConvTranspose1d(k=4, s=2, p=1): y[o] = sum over i, k with o = 2 i - 1 + k of x[i] W[k];
    # here W is the conv kernel flipped in time.
    weight, xs = np.asarray(up.conv.kernel[...])[::-1], np.asarray(x)
    expected = np.tile(np.asarray(up.conv.bias[...]), (2, 10, 1))
    for i in range(5):
        for k in range(4):
            if 0 <= 2 * i - 1 + k < 10:
                expected[:, 2 * i - 1 + k] += xs[:, i] @ weight[k]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_unet_fast_and_reference_convolutions_agree():
    fast = ConditionalUnet1D((16, 2), 8, dims=(16, 32, 64), time_dim=16, fast=True, rngs=nnx.Rngs(0))
    reference = ConditionalUnet1D((16, 2), 8, dims=(16, 32, 64), time_dim=16, fast=False, rngs=nnx.Rngs(0))
    x, t, c = jnp.ones((3, 16, 2)), jnp.array([0.1, 0.5, 0.9]), jnp.ones((3, 8))
    out = jax.jit(fast)(x, t, c)  # compiled whole: op-by-op, the U-Net spends most of its time compiling each op
    assert out.shape == (3, 16, 2)
    np.testing.assert_allclose(out, jax.jit(reference)(x, t, c), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("conditioning", ["film", "concat"])
def test_mlp_denoiser_shapes_and_dependence_on_every_input(conditioning):
    net = MLPDenoiser((16, 2), 8, hidden=32, depth=3, time_dim=16, conditioning=conditioning, rngs=nnx.Rngs(0))
    x, t, c = jnp.zeros((4, 16, 2)), jnp.full((4,), 0.3), jnp.zeros((4, 8))
    base = net(x, t, c)
    assert base.shape == (4, 16, 2)
    for changed in (net(x + 1, t, c), net(x, t + 0.2, c), net(x, t, c + 1)):
        assert not np.allclose(changed, base)


@pytest.mark.parametrize("network", ["film", "concat", "unet"])
def test_samplers_with_precomputed_contexts_equal_calling_the_network_each_step(network):
    if network == "unet":
        net = ConditionalUnet1D((8, 2), 6, dims=(8, 16), time_dim=8, groups=4, rngs=nnx.Rngs(0))
    else:
        net = MLPDenoiser((8, 2), 6, hidden=32, depth=3, time_dim=16, conditioning=network, rngs=nnx.Rngs(0))
    step_by_step = lambda x, t, cond: net(x, t, cond)  # a plain callable: its context is computed at every step
    x, cond = jax.random.normal(jax.random.key(1), (3, 8, 2)), jax.random.normal(jax.random.key(2), (3, 6))
    for method in ("euler", "midpoint"):
        run = jax.jit(lambda f, x, c: flow.integrate(f, x, c, 4, method), static_argnums=0)
        np.testing.assert_allclose(run(net, x, cond), run(step_by_step, x, cond), rtol=1e-5, atol=1e-5)
    schedule = diffusion.make_schedule("cosine", 20)
    run = jax.jit(lambda f, c: diffusion.sample(f, schedule, "epsilon", c, jax.random.key(3), (3, 8, 2), 5, "ddpm"),
                  static_argnums=0)
    np.testing.assert_allclose(run(net, cond), run(step_by_step, cond), rtol=1e-5, atol=1e-5)
