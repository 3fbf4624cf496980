"""The real-time controller (queue, ensembling, prefetch, safe actions, statistics, retracing) and the export."""

import os
import re
import stat
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import physgen.policies.agent as agent_module
from physgen import PhysgenError
from physgen.cli import main
from physgen.control import Controller, export_checkpoint, export_policy, load_exported
from physgen.data import Normalizer
from physgen.envs import get_task
from physgen.envs.rollout import episode_seeds, run_episodes, step_key
from physgen.policies import ChunkingAgent, Policy, PolicyConfig, PolicyState, TrainedPolicies, act, save_policy

CONFIG = PolicyConfig.of(method="flow", hidden=32, depth=2, time_dim=16, obs_steps=2, action_steps=8,
                      exec_steps=4, inference_steps=3)
T_O, T_P, T_A = CONFIG.chunking.obs_steps, CONFIG.chunking.action_steps, CONFIG.chunking.exec_steps
OBS_DIM, ACT_DIM = 6, 2  # fork's, so that the same policy can be checkpointed
LOW, HIGH = np.array([-1.0, 0.5], np.float32), np.array([1.0, 2.0], np.float32)  # zero clips to (0, 0.5)


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialized flow policy with hand-made normalizers: mechanics need no training."""
    policy, params = Policy.create(CONFIG, OBS_DIM, ACT_DIM, jax.random.key(0))
    obs_norm = Normalizer(jnp.linspace(-0.5, 0.5, OBS_DIM), jnp.full(OBS_DIM, 1.5))
    act_norm = Normalizer(jnp.array([0.1, 1.0]), jnp.array([0.8, 0.9]))
    state = PolicyState(params, obs_norm, act_norm, jnp.asarray(LOW), jnp.asarray(HIGH))
    return policy, state


@pytest.fixture(scope="module")
def reference(tiny):
    """chunk(history, seed, t): what the controller should sample for the chunk of step t, computed without it."""
    policy, state = tiny
    sample = jax.jit(lambda st, history, key: act(policy, st, history[None], key)[0])
    return lambda history, seed, t: np.asarray(sample(state, history, step_key(seed, t)))


@pytest.fixture(scope="module")
def guarded(tiny):
    """Every optional path on: prefetch, ensembling, the zero safe action."""
    with Controller(*tiny, prefetch=1, ensemble=0.1, safe_action="zero") as controller:
        yield controller


def observations(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, OBS_DIM)).astype(np.float32)


def histories(obs):
    """The history each call sees: the last T_o observations, the first repeated at the start."""
    padded = np.concatenate([np.repeat(obs[:1], T_O - 1, axis=0), obs])
    return [padded[t:t + T_O] for t in range(len(obs))]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_the_queue_executes_exactly_T_a_actions_per_chunk(tiny, reference, prefetch):
    obs = observations(3 * T_A + 1)
    with Controller(*tiny, prefetch=prefetch, seed=7) as controller:
        actions = [controller.act(o) for o in obs]
        chunks = controller.stats()["chunks"]
    seen = histories(obs)
    for t, action in enumerate(actions):
        k = t // T_A
        start = max(k * T_A - prefetch, 0)  # chunk k is sampled from the history of call start, with its key
        np.testing.assert_allclose(action, reference(seen[start], 7, start)[t - start], rtol=1e-6, atol=1e-6)
    assert chunks == 4  # calls 0, 4, 8, 12 (synchronous) or 0, 2, 6, 10 (prefetch 2) started one each


def test_temporal_ensembling_weights_the_oldest_chunk_most(tiny, reference):
    k_rate, obs = 0.5, observations(3 * T_A, seed=1)
    with Controller(*tiny, ensemble=k_rate, seed=3) as controller:
        actions = [controller.act(o) for o in obs]
    seen = histories(obs)
    chunks = [reference(seen[k * T_A], 3, k * T_A) for k in range(3)]
    for t, action in enumerate(actions):
        live = [k for k in range(3) if 0 <= t - k * T_A < T_P]  # oldest first
        weights = np.exp(-k_rate * np.arange(len(live)))
        expected = sum(w * chunks[k][t - k * T_A] for w, k in zip(weights, live)) / weights.sum()
        np.testing.assert_allclose(action, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(actions[T_A], chunks[1][0])  # the overlap is really averaged


bad_observations = st.one_of(
    hnp.arrays(np.float32, OBS_DIM, elements=st.floats(width=32)),  # NaN, Inf, huge, tiny
    hnp.arrays(np.float64, OBS_DIM, elements=st.floats(-1e300, 1e300)),  # beyond float32
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=7), elements=st.floats(-5, 5)),
    st.lists(st.floats(-5, 5), max_size=8), st.text(max_size=3), st.none())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(hnp.arrays(np.float32, OBS_DIM, elements=st.floats(-3, 3, width=32)),
                          bad_observations), min_size=1, max_size=3 * T_A))
def test_actions_stay_in_bounds_under_random_and_adversarial_observations(guarded, sequence):
    guarded.reset()
    for obs in sequence:
        action = guarded.act(obs)
        assert action.shape == (ACT_DIM,) and action.dtype == np.float32
        assert np.all(np.isfinite(action)) and np.all(action >= LOW) and np.all(action <= HIGH)
        with np.errstate(over="ignore"):
            array = np.asarray(obs, np.float32) if isinstance(obs, (np.ndarray, list)) else None
        good = array is not None and array.shape == (OBS_DIM,) and np.all(np.isfinite(array))
        assert guarded.flagged == (not good)


def test_bad_observations_give_the_safe_action_and_the_flag(tiny, guarded):
    obs = observations(4)
    with Controller(*tiny) as hold:  # safe_action="hold"
        np.testing.assert_array_equal(hold.act(np.full(OBS_DIM, np.nan)), [0.0, 0.5])  # nothing to hold yet
        assert hold.flagged and "NaN or Inf" in hold.fault
        first = hold.act(obs[0])
        assert not hold.flagged and hold.fault is None
        for bad, reason in [(np.full(OBS_DIM, np.inf), "NaN or Inf"), (obs[1, :3], "shape (3,)"),
                            (obs[:2], "shape (2, 6)"), ("sensor offline", "not numeric")]:
            np.testing.assert_array_equal(hold.act(bad), first)
            assert hold.flagged and reason in hold.fault
        resumed = [hold.act(o) for o in obs[1:]]
        assert not hold.flagged and hold.stats()["flagged"] == 5 and hold.stats()["calls"] == 9
        hold.reset()
        clean = [hold.act(o) for o in obs]  # the bad observations did not advance the plan
    np.testing.assert_array_equal(np.stack([first, *resumed]), np.stack(clean))
    guarded.reset()
    guarded.act(obs[0])
    np.testing.assert_array_equal(guarded.act(obs[1, :5]), [0.0, 0.5])
    assert guarded.flagged


def test_no_retracing_after_warm_up(tiny, monkeypatch):
    traces = []

    def counting_act(*args, **kwargs):
        traces.append(1)
        return act(*args, **kwargs)

    monkeypatch.setattr(agent_module, "act", counting_act)  # what the compiled sampler traces
    with Controller(*tiny, prefetch=1, ensemble=0.2) as controller:
        assert len(traces) == 2  # compiled ahead of time: the synchronous and the prefetching sampler
        for episode in range(2):
            controller.reset(seed=episode)
            for obs in [*observations(2 * T_A + 3, seed=episode), np.full(OBS_DIM, np.nan), np.zeros(3)]:
                controller.act(obs)
        assert controller.stats()["calls"] == 2 * (2 * T_A + 5)  # across episodes, the warm-up excluded
    assert len(traces) == 2


def test_stats_report_latency_misses_and_the_achieved_rate(tiny):
    with Controller(*tiny, rate_hz=1e6) as controller:  # a 1 us deadline: every call misses it
        for obs in observations(10):
            controller.act(obs)
            time.sleep(0.01)
        stats = controller.stats()
    assert stats["calls"] == 10 and stats["misses"] == 10 and stats["flagged"] == 0 and stats["chunks"] == 3
    assert 0 < stats["p50_us"] <= stats["p95_us"] <= stats["p99_us"] <= stats["max_us"]
    assert 20 < stats["achieved_hz"] < 101


def test_bad_controller_settings_are_refused(tiny):
    with pytest.raises(PhysgenError, match="rate_hz must be a positive"):
        Controller(*tiny, rate_hz=0)
    with pytest.raises(PhysgenError, match="safe_action must be one of hold, zero"):
        Controller(*tiny, safe_action="brake")
    with pytest.raises(PhysgenError, match="prefetch must be between 0 and action_steps - exec_steps"):
        Controller(*tiny, prefetch=T_P - T_A + 1)
    with pytest.raises(PhysgenError, match="ensemble"):
        Controller(*tiny, ensemble=float("nan"))


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "policy.jaxexport"
    export_policy(*tiny, path, task="fork")
    return path


def test_the_exported_policy_matches_the_in_process_one(tiny, exported):
    policy, state = tiny
    loaded = load_exported(exported)
    assert (loaded.task, loaded.method, loaded.obs_steps, loaded.obs_dim, loaded.act_dim, loaded.action_steps,
            loaded.exec_steps) == ("fork", "flow", T_O, OBS_DIM, ACT_DIM, T_P, T_A)
    np.testing.assert_array_equal(loaded.action_low, LOW)
    in_process = jax.jit(lambda history, key: act(policy, state, history[None], key)[0])
    for seed, history in enumerate(histories(observations(3, seed=2)) + [np.full((T_O, OBS_DIM), 40.0)]):
        chunk = loaded.act(history, seed)
        assert chunk.shape == (T_P, ACT_DIM) and np.all(chunk >= LOW) and np.all(chunk <= HIGH)
        expected = in_process(history, jax.random.key(seed))
        np.testing.assert_allclose(chunk, expected, rtol=1e-5, atol=1e-6)  # float32 rounding at most
        key = jax.random.key(seed)
        for same in (key, jax.random.key_data(key)):
            np.testing.assert_array_equal(loaded.act(history, same), chunk)


def test_the_export_loads_without_the_training_code(exported, tmp_path):
    history = histories(observations(2, seed=4))[1]
    np.save(tmp_path / "history.npy", history)
    script = ("import sys, numpy as np\n"
              "for name in ('flax', 'optax', 'orbax', 'gymnasium', 'mujoco', 'physgen.policies'):\n"
              "    sys.modules[name] = None  # importing any of them now fails\n"
              "from physgen.control import load_exported\n"
              f"chunk = load_exported({str(exported)!r}).act(np.load({str(tmp_path / 'history.npy')!r}), 5)\n"
              f"np.save({str(tmp_path / 'chunk.npy')!r}, chunk)\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "chunk.npy"), load_exported(exported).act(history, 5))


def test_bad_export_files_and_inputs_are_refused(exported, tmp_path):
    blob = exported.read_bytes()
    with pytest.raises(PhysgenError, match="cannot read exported policy .*`physgen export --checkpoint"):
        load_exported(tmp_path / "missing.jaxexport")
    for name, data in [("foreign", b"\x7fELF" + blob[4:]), ("truncated", blob[:-100]),
                       ("flipped", blob[:-50] + bytes([blob[-50] ^ 1]) + blob[-49:])]:
        (tmp_path / name).write_bytes(data)
        reason = "not a physgen exported policy" if name == "foreign" else "truncated or corrupt"
        with pytest.raises(PhysgenError, match=reason):
            load_exported(tmp_path / name)
    loaded = load_exported(exported)
    with pytest.raises(PhysgenError, match="shape \\(3, 6\\), the exported policy expects \\(2, 6\\)"):
        loaded.act(np.zeros((3, OBS_DIM)), 0)
    with pytest.raises(PhysgenError, match="NaN or Inf"):
        loaded.act(np.full((T_O, OBS_DIM), np.nan), 0)
    with pytest.raises(PhysgenError, match="key must be"):
        loaded.act(np.zeros((T_O, OBS_DIM)), np.zeros(4, np.uint32))


def test_controller_and_export_from_a_checkpoint(tiny, tmp_path):
    policy, state = tiny
    task = get_task("fork")  # its bounds, [-1, 1], replace the test's on loading
    stacked = jax.tree.map(lambda x: x[None], state)
    trained = TrainedPolicies(policy, stacked, stacked.params, np.zeros((1, 0)), (0,))
    path = save_policy(tmp_path / "seed_0", task, trained, 0)
    obs = observations(1, seed=5)[0]
    expected = np.asarray(act(policy, state._replace(action_low=-jnp.ones(2), action_high=jnp.ones(2)),
                              np.stack([obs] * T_O)[None], step_key(0, 0))[0])
    with Controller.from_checkpoint(path, rate_hz=50, task="fork") as controller:
        np.testing.assert_allclose(controller.act(obs), expected[0], rtol=1e-6, atol=1e-6)
    loaded = load_exported(export_checkpoint(path, tmp_path / "policy.jaxexport"))
    assert loaded.task == "fork" and loaded.header["config"]["hidden"] == CONFIG.net.hidden
    np.testing.assert_allclose(loaded.act(np.stack([obs] * T_O), step_key(0, 0)), expected, rtol=1e-5, atol=1e-6)
    assert main(["export", "--checkpoint", str(path), "--weights", "int8", "--out", str(tmp_path / "q.jaxexport")]) == 0
    assert load_exported(tmp_path / "q.jaxexport").header["weights"] == "int8"



class Unreadable:
    """An object whose conversions raise: a driver's value type gone wrong."""

    def __float__(self):
        raise RuntimeError("sensor disconnected")

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("sensor disconnected")


class FloatRaises:
    def __float__(self):
        raise ZeroDivisionError


def fuzz_observation(rng):
    """(observation, good): one of many kinds of input, and whether the controller must act on it."""
    good = rng.normal(size=OBS_DIM) * 10.0 ** rng.uniform(-3, 30)  # far outside the data too
    kind = rng.integers(16)
    bad_at = rng.integers(OBS_DIM)
    if kind <= 3:
        return [good.astype(np.float32), good, good.tolist(), list(np.rint(good / 1e20))][kind], True
    if kind == 4:
        return [int(x) for x in np.rint(good.clip(-1e30, 1e30))], True  # Python ints beyond int64 included
    if kind == 5:
        return np.where(np.arange(OBS_DIM) == bad_at, rng.choice([np.nan, np.inf, -np.inf]), good), False
    if kind == 6:
        return [10**400] * OBS_DIM if rng.random() < 0.5 else [*good[:-1].tolist(), -(10**39)], False
    if kind == 7:
        return np.full(OBS_DIM, 1e39 * rng.choice([-1, 1])), False  # finite in float64, not in float32
    if kind == 8:
        return rng.normal(size=rng.choice([0, 1, 5, 7, 12])), False
    if kind == 9:
        return rng.normal(size=(rng.integers(1, 3), OBS_DIM)), False
    if kind == 10:
        return rng.choice(["sensor offline", "", "1.5"]) if rng.random() < 0.5 else ["0.5"] * OBS_DIM, False
    if kind == 11:
        return [Unreadable()] * OBS_DIM if rng.random() < 0.5 else Unreadable(), False
    if kind == 12:
        return [*good[:-1].tolist(), FloatRaises()], False
    if kind == 13:
        return None, False
    if kind == 14:
        return [good[:3].tolist(), good[3:].tolist()] if rng.random() < 0.5 else [good.tolist(), [1.0]], False
    return good.astype(np.complex64) * 1j, False


@pytest.mark.parametrize("options", [dict(prefetch=1, ensemble=0.1, safe_action="zero"), dict(prefetch=0)])
def test_fuzzed_inputs_never_raise_and_never_stop_good_observations(tiny, options):
    rng = np.random.default_rng(17)
    raised = out_of_bounds = good_refused = bad_accepted = 0
    with Controller(*tiny, **options) as controller:
        for call in range(5_000):
            if rng.random() < 0.02:
                controller.reset()
            obs, good = fuzz_observation(rng)
            try:
                action = controller.act(obs)
            except Exception:
                raised += 1
                continue
            out_of_bounds += not (action.shape == (ACT_DIM,) and np.all(action >= LOW) and np.all(action <= HIGH))
            good_refused += good and controller.flagged
            bad_accepted += not good and not controller.flagged
    assert (raised, out_of_bounds, good_refused, bad_accepted) == (0, 0, 0, 0)


def test_a_non_finite_chunk_is_dropped_and_resampled_at_the_next_call(tiny, reference, monkeypatch):
    obs = observations(2 * T_A + 1, seed=6)
    with Controller(*tiny, seed=2) as controller:
        decide, poisoned = controller._decide, [T_A]  # the first chunk sampled at step T_a comes out NaN

        def flaky(*args):
            chunk, action, next_carry = decide(*args)
            if int(args[-1]) in poisoned:
                poisoned.remove(int(args[-1]))
                return np.full_like(chunk, np.nan), action, next_carry
            return chunk, action, next_carry

        monkeypatch.setattr(controller, "_decide", flaky)
        actions = [controller.act(o) for o in obs[:T_A]]
        np.testing.assert_array_equal(controller.act(obs[T_A]), actions[-1])  # held
        assert controller.fault.startswith("the policy produced a non-finite chunk")
        # the carry was kept: the next good observation takes the dropped one's place at step T_a
        seen = histories(np.concatenate([obs[:T_A], obs[T_A + 1:]]))
        for i, t in enumerate(range(T_A + 1, 2 * T_A + 1)):
            action = controller.act(obs[t])
            assert controller.fault is None
            np.testing.assert_allclose(action, reference(seen[T_A], 2, T_A)[i], rtol=1e-6, atol=1e-6)
        assert controller.stats()["flagged"] == 1


@pytest.mark.parametrize("ensemble, delay, rtc, in_config", [
    (None, 0, False, False), (0.3, 0, False, False), (0.3, 0, False, True), (None, 2, False, False),
    (None, T_P - T_A, True, False), (0.3, 3, True, True), (None, 0, True, False)])
def test_the_controller_acts_as_the_rollout_engine_on_a_recorded_episode(tiny, ensemble, delay, rtc, in_config):
    """The bench's rollouts and the robot loop drive the same agent: fed an episode's observations, the Controller
    returns the actions `run_episodes` took, also when its chunks arrive `delay` steps late (prefetched) and are
    guided by real-time chunking; settings in the policy's config act as ones passed in."""
    policy, state = tiny
    task, seeds = get_task("fork"), episode_seeds(3, 2)
    rollouts = run_episodes(task, ChunkingAgent(policy, ensemble=ensemble, delay=delay, rtc=rtc),
                            jax.tree.map(lambda x: x[None], state), seeds)
    options = dict(ensemble=ensemble, prefetch=delay, rtc=rtc)
    if in_config:
        policy, options = policy._replace(config=policy.config.replace(ensemble=ensemble, delay=delay, rtc=rtc)), {}
    with Controller(policy, state, **options) as controller:
        for e, seed in enumerate(seeds):
            controller.reset(seed=int(seed))
            steps = rollouts.lengths[0, e]
            actions = [controller.act(o) for o in rollouts.observations[0, e, :steps]]
            np.testing.assert_allclose(actions, rollouts.actions[0, e, :steps], rtol=1e-5, atol=1e-6)


def test_a_tampered_export_header_is_refused(exported, tmp_path):
    blob = exported.read_bytes()
    for old, new in [(b'"exec_steps": 4', b'"exec_steps": 5'), (b'"action_low": [-1.0', b'"action_low": [-3.0'),
                     (b'"task": "fork"', b'"task": "gork"')]:  # one flipped bit each, in the header's first copy
        assert bin(int.from_bytes(old, "big") ^ int.from_bytes(new, "big")).count("1") == 1
        (tmp_path / "tampered").write_bytes(blob.replace(old, new, 1))
        with pytest.raises(PhysgenError, match="truncated or corrupt"):
            load_exported(tmp_path / "tampered")
    (tmp_path / "format1").write_bytes(blob.replace(b'"format": 2', b'"format": 1'))
    with pytest.raises(PhysgenError, match="has format 1, this physgen reads format 2; export it again"):
        load_exported(tmp_path / "format1")


def test_exports_follow_the_umask_and_wide_observations_stay_finite(tiny, tmp_path):
    old = os.umask(0o027)
    try:
        path = export_policy(*tiny, tmp_path / "policy.jaxexport")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and list(tmp_path.iterdir()) == [path]
    loaded = load_exported(path)
    for scale in (1e3, 1e10, 1e30):
        chunk = loaded.act(np.full((T_O, OBS_DIM), scale, np.float32) * [1, -1, 1, -1, 1, -1], 0)
        assert np.all(np.isfinite(chunk)) and np.all(chunk >= LOW) and np.all(chunk <= HIGH)


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_a_quantized_export_samples_what_the_policy_samples_with_those_weights(tiny, exported, weights, tmp_path):
    policy, state = tiny
    path = export_policy(policy, state, tmp_path / "policy.jaxexport", weights=weights)
    loaded = load_exported(path)
    assert loaded.header["weights"] == loaded.header["config"]["weights"] == weights
    assert load_exported(exported).header["weights"] == "float32"  # None keeps the config's
    assert path.stat().st_size < exported.stat().st_size  # the weight matrices are stored in fewer bits
    quantized = policy._replace(config=policy.config.replace(weights=weights))
    in_process = jax.jit(lambda history, key: act(quantized, state, history[None], key)[0])
    for seed, history in enumerate(histories(observations(3, seed=2))):
        np.testing.assert_array_equal(loaded.act(history, seed), in_process(history, jax.random.key(seed)))


def test_bad_export_requests_are_refused_before_any_work(tmp_path):
    missing = tmp_path / "no_checkpoint"  # never read: the request is refused first
    with pytest.raises(PhysgenError, match=f"the output {re.escape(str(tmp_path))} is a folder; name the file"):
        export_checkpoint(missing, tmp_path)
    for steps in (-2, 0, 2.5, True, "3"):
        with pytest.raises(PhysgenError, match="steps must be a positive integer number of sampler steps"):
            export_checkpoint(missing, tmp_path / "policy.jaxexport", steps=steps)
    with pytest.raises(PhysgenError, match="unknown weights 'int4'; choose one of float32, bfloat16, int8"):
        export_checkpoint(missing, tmp_path / "policy.jaxexport", weights="int4")
    with pytest.raises(PhysgenError, match="not a physgen checkpoint"):
        export_checkpoint(missing, tmp_path / "policy.jaxexport", steps=np.int64(3))


def test_the_controller_stores_quantized_weights_and_acts_as_the_rollout_engine_with_them(tiny):
    policy, state = tiny
    task, seeds = get_task("fork"), episode_seeds(5, 1)
    int8 = policy._replace(config=policy.config.replace(weights="int8"))
    rollouts = run_episodes(task, ChunkingAgent(int8), jax.tree.map(lambda x: x[None], state), seeds)
    with Controller(policy, state, weights="int8") as controller:
        assert any(leaf.dtype == jnp.int8 for leaf in controller._leaves)  # int8 in the compiled program's inputs
        controller.reset(seed=int(seeds[0]))
        steps = rollouts.lengths[0, 0]
        actions = [controller.act(o) for o in rollouts.observations[0, 0, :steps]]
    np.testing.assert_allclose(actions, rollouts.actions[0, 0, :steps], rtol=1e-5, atol=1e-6)
    with pytest.raises(PhysgenError, match="weights must be one of float32, bfloat16, int8"):
        Controller(policy, state, weights="int4")
