import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from physgen.policies import flow

A = jnp.array([[-1.0, 2.0], [-0.5, 0.3]])


def test_euler_and_midpoint_integrate_a_linear_field_exactly_as_their_recurrences():
    x0 = jnp.array([[1.0, -2.0], [0.5, 0.25]])
    field = lambda x, t, cond: x @ A.T  # noqa: E731
    h, steps = 1.0 / 8, 8
    euler = np.linalg.matrix_power(np.eye(2) + h * np.asarray(A), steps)
    midpoint = np.linalg.matrix_power(np.eye(2) + h * np.asarray(A) + (h * np.asarray(A)) @ (h * np.asarray(A)) / 2, steps)
    np.testing.assert_allclose(flow.integrate(field, x0, None, steps, "euler"), x0 @ euler.T, rtol=1e-5)
    np.testing.assert_allclose(flow.integrate(field, x0, None, steps, "midpoint"), x0 @ midpoint.T, rtol=1e-5)
    exact = np.asarray(x0) @ np.asarray(jax.scipy.linalg.expm(A)).T
    err_euler = np.abs(flow.integrate(field, x0, None, 64, "euler") - exact).max()
    err_mid = np.abs(flow.integrate(field, x0, None, 64, "midpoint") - exact).max()
    assert err_mid < err_euler / 10  # second order against first order


def test_sinkhorn_recovers_a_known_permutation_and_is_a_valid_coupling():
    n = 32
    x0 = jax.random.normal(jax.random.key(0), (n, 4, 2))
    perm = np.random.default_rng(0).permutation(n)
    x1 = x0[perm] + 1e-3
    log_plan = flow.sinkhorn_log_plan(flow.pair_cost(x0, x1), epsilon=0.01, iterations=300)
    plan = np.exp(np.asarray(log_plan))
    np.testing.assert_allclose(plan.sum(1), 1 / n, rtol=1e-3)
    np.testing.assert_allclose(plan.sum(0), 1 / n, rtol=1e-3)
    # x1[j] = x0[perm[j]], so row i is matched to the column j with perm[j] = i.
    np.testing.assert_array_equal(plan.argmax(1), np.argsort(perm))
    assert plan.max(1).min() > 0.9 / n


def test_ot_pairs_cost_close_to_the_exact_assignment():
    x0 = jax.random.normal(jax.random.key(2), (64, 1, 2))
    x1 = jax.random.normal(jax.random.key(1), (64, 1, 2)) * 0.5 + jnp.array([2.0, 0.0])
    cost = np.asarray(jnp.sum((x0[:, None] - x1[None]) ** 2, axis=(2, 3)))
    rows, cols = linear_sum_assignment(cost)
    exact = cost[rows, cols].mean()
    i, j = flow.ot_pairs(jax.random.key(3), flow.pair_cost(x0, x1), epsilon=0.01, iterations=100)
    assert cost[np.asarray(i), np.asarray(j)].mean() <= 1.05 * exact
    assert np.diag(cost).mean() >= 1.3 * exact  # what independent pairing pays here


def test_conditional_ot_pairs_within_a_condition_and_plain_ot_across_identical_ones():
    """Two conditions, each with its own actions: noise stays with its row's condition (so the noise each
    condition sees is the standard normal drawn for it), and within a condition the plan is the plain OT plan."""
    n = 32
    x0 = jax.random.normal(jax.random.key(0), (n, 1, 2))
    x1 = jax.random.normal(jax.random.key(1), (n, 1, 2)) * 0.5 + 2.0
    cond = jnp.repeat(jnp.array([[0.0], [1.0]]), n // 2, axis=0)
    same = np.asarray(cond[:, None, 0] == cond[None, :, 0])
    plain = flow.pair_cost(x0, x1)
    _, j_plain = flow.ot_pairs(jax.random.key(3), plain, epsilon=0.01, iterations=200)
    assert not same[np.arange(n), np.asarray(j_plain)].all()  # plain OT hands noise to the other condition
    conditional = flow.pair_cost(x0, x1, cond, cond, condition_weight=10.0)
    _, j = flow.ot_pairs(jax.random.key(3), conditional, epsilon=0.01, iterations=200)
    assert same[np.arange(n), np.asarray(j)].all()
    for half in (slice(0, n // 2), slice(n // 2, n)):
        block = np.asarray(plain)[half, half]
        rows, cols = linear_sum_assignment(block)
        picked = np.asarray(j)[half] - half.start
        assert block[np.arange(n // 2), picked].mean() <= 1.05 * block[rows, cols].mean()


def test_loss_is_zero_for_the_exact_velocity_of_a_point_mass():
    target = jnp.array([[0.3, -0.5]])
    x1 = jnp.broadcast_to(target, (64, 1, 2))

    def velocity(x, t, cond):  # the straight path to `target` from wherever x_t is
        return (target - x) / (1 - t)[:, None, None]

    loss = flow.flow_matching_loss(velocity, x1, jnp.zeros((64, 1)), jax.random.key(0), coupling="independent")
    assert float(loss) < 1e-6
    assert float(flow.flow_matching_loss(velocity, x1, jnp.zeros((64, 1)), jax.random.key(0), "ot")) < 1e-6


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_integration_steps_are_static_in_one_compiled_program(method):
    traces = []

    @jax.jit
    def run(x):
        traces.append(1)
        return flow.integrate(lambda x, t, c: -x, x, None, 10, method)

    for i in range(3):
        run(jnp.full((2, 2), float(i)))
    assert len(traces) == 1


def test_a_clean_chunk_target_is_scored_on_the_chunk():
    x1 = jnp.broadcast_to(jnp.array([[0.3, -0.5]]), (64, 1, 2))
    cond = jnp.zeros((64, 1))
    exact = lambda x, t, c: x1  # noqa: E731
    assert float(flow.flow_matching_loss(exact, x1, cond, jax.random.key(0), target="sample")) == 0.0
    off = lambda x, t, c: x1 + jnp.array([0.1, -0.2])  # noqa: E731
    loss = flow.flow_matching_loss(off, x1, cond, jax.random.key(0), target="sample")
    np.testing.assert_allclose(float(loss), (0.1**2 + 0.2**2) / 2, rtol=1e-5)


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_a_clean_chunk_network_integrates_as_the_velocity_it_implies(method):
    """The network outputting x + (1 - t) v(x, t) integrates as the velocity v; one outputting a fixed chunk
    reaches it exactly, along the straight line, in any number of steps."""
    x0 = jnp.array([[1.0, -2.0], [0.5, 0.25]])
    velocity = lambda x, t, cond: x @ A.T  # noqa: E731
    clean = lambda x, t, cond: x + (1.0 - t)[:, None] * velocity(x, t, cond)  # noqa: E731
    np.testing.assert_allclose(flow.integrate(clean, x0, None, 8, method, target="sample"),
                               flow.integrate(velocity, x0, None, 8, method), rtol=1e-5)
    chunk = jnp.array([[0.3, -0.5]])
    for steps in (1, 3, 10):
        np.testing.assert_allclose(flow.integrate(lambda x, t, c: jnp.broadcast_to(chunk, x.shape), x0, None, steps,
                                                  method, target="sample"), jnp.broadcast_to(chunk, x0.shape),
                                   atol=1e-6)
