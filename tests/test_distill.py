import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physgen import PhysgenError
from physgen.bench import offline, registry
from physgen.bench.protocol import BUDGETS
from physgen.cli import main
from physgen.data import Trajectories, load_dataset, split_episodes
from physgen.envs import get_task
from physgen.policies import PolicyRunner, load_policy, save_policy, train_policies
from physgen.policies.distill import (DistillConfig, distill_checkpoint, distill_policies, distilled_from,
                                      teacher_sampler)
from physgen.policies.policy import Policy, PolicyConfig, act

# two modes of the chunk's x velocity, +-MODE with noise NOISE, the same observation everywhere: the mean of the
# modes (BC's answer) is 0, half a mode away from each
MODE, NOISE, EPISODES, LENGTH = 0.6, 0.02, 32, 24
TINY = dict(hidden=64, depth=2, time_dim=16, batch_size=128, warmup_steps=10, action_steps=4, exec_steps=4)
SAMPLES = 512


def two_modes() -> Trajectories:
    rng = np.random.default_rng(0)
    steps = EPISODES * LENGTH
    side = np.repeat(np.where(np.arange(EPISODES) % 2, 1.0, -1.0), LENGTH)
    actions = np.stack([MODE * side, np.full(steps, 0.3)], 1) + rng.normal(0, NOISE, (steps, 2))
    obs = np.zeros((steps, 6), np.float32)
    return Trajectories.from_steps(obs, actions.astype(np.float32), np.zeros(steps, np.float32), obs,
                                   np.zeros(steps, bool), [LENGTH] * EPISODES)


@pytest.fixture(scope="module")
def taught():
    task, data = get_task("fork"), two_modes()
    teacher = train_policies(task, PolicyConfig.of(method="flow", steps=600, steps_per_call=600, **TINY), data, [0],
                             progress=False)
    distill = DistillConfig().replace(steps=600, steps_per_call=300, batch_size=128)
    return task, data, teacher, distill_policies(task, teacher, data, distill, progress=False)


def chunk_velocity(trained, steps=None) -> np.ndarray:
    """The mean x action of the chunks sampled for SAMPLES keys at the (constant) observation."""
    state, obs = trained.state_of(0), jnp.zeros((1, 2, 6))
    chunks = jax.vmap(lambda k: act(trained.policy, state, obs, k, steps)[0])(jax.random.split(jax.random.key(1),
                                                                                               SAMPLES))
    return np.asarray(chunks[:, :, 0].mean(axis=1))


def test_the_student_reproduces_the_teachers_sample_from_the_same_noise(taught):
    _, _, teacher, student = taught
    assert student.policy.config.method == "flow" and student.policy.config.inference_steps == 1
    assert student.losses.shape == (1, 2) and student.losses[0, -1] < student.losses[0, 0]
    target = chunk_velocity(teacher)  # a flow draws its x0 from the key as the student does: the same noise
    spread = np.var(target)
    student_error = np.mean((chunk_velocity(student) - target) ** 2)
    undistilled_error = np.mean((chunk_velocity(teacher, steps=1) - target) ** 2)  # the teacher's own one step
    assert student_error < undistilled_error / 10 and student_error < spread / 20


def test_the_student_keeps_both_modes_where_one_step_of_the_teacher_averages_them(taught):
    _, _, teacher, student = taught
    x_teacher, x_student, x_one_step = chunk_velocity(teacher), chunk_velocity(student), chunk_velocity(teacher, 1)
    left = np.mean(x_teacher < 0)
    assert 0.25 < left < 0.75  # the teacher is bimodal
    assert abs(np.mean(x_student < 0) - left) <= 4 * np.sqrt(left * (1 - left) / SAMPLES)
    middle = lambda x: np.mean(np.abs(x) < MODE / 2)  # noqa: E731  nearer BC's answer (0) than either mode
    # one Euler step of a flow is its conditional mean, BC's answer: most samples land in the middle
    assert middle(x_one_step) > 0.5 and middle(x_student) < middle(x_one_step) / 2
    for side in (x_student[x_student < -MODE / 2], x_student[x_student > MODE / 2]):
        assert abs(np.abs(np.median(side)) - MODE) < MODE / 4  # each mode where the data holds it


def test_the_student_checkpoint_is_a_flow_checkpoint_that_samples_in_one_call(taught, tmp_path):
    task, _, teacher, student = taught
    note = distilled_from(teacher.policy.config, DistillConfig())
    path = save_policy(tmp_path / "student", task, student, 0, distilled_from=note)
    policy, state, meta = load_policy(path, "fork")
    assert meta["method"] == "flow" and meta["distilled_from"] == json.loads(json.dumps(note))
    assert (policy.config.inference_steps, policy.config.flow.integrator) == (1, "euler")
    obs = np.zeros((2, 6), np.float32)
    chunk = PolicyRunner(policy, state).act(obs, 3)
    np.testing.assert_array_equal(chunk, PolicyRunner(student.policy, student.state_of(0)).act(obs, 3))
    # one network call: x0 + v(x0, 0, cond), mapped to raw actions
    shape = (1, policy.config.chunking.action_steps, policy.act_dim)
    x0 = jax.random.normal(jax.random.key(3), shape)
    cond = state.obs_norm.normalize(jnp.asarray(obs)).reshape(1, -1)
    by_hand = state.act_norm.unnormalize(x0 + policy.network(state.params)(x0, jnp.zeros(1), cond))
    np.testing.assert_allclose(chunk, np.clip(by_hand[0], -1, 1), atol=1e-5)


def test_a_ddim_teacher_maps_its_initial_noise_as_its_sampler_does():
    config = PolicyConfig.of(method="diffusion", hidden=16, depth=1, time_dim=8, action_steps=4, exec_steps=2,
                             inference_steps=5)
    policy, params = Policy.create(config, 3, 2, jax.random.key(0))
    obs, key = jax.random.normal(jax.random.key(1), (4, 2, 3)), jax.random.key(2)
    drawn = jax.random.normal(jax.random.split(key)[0], (4, 4, 2))  # the x_T `diffusion.sample` draws from `key`
    by_noise = teacher_sampler(config)(policy.network(params), drawn, obs.reshape(4, -1))
    np.testing.assert_allclose(by_noise, policy.sample(params, obs, key), rtol=1e-5, atol=1e-6)


def test_a_clean_chunk_flow_teacher_maps_its_initial_noise_as_its_sampler_does():
    config = PolicyConfig.of(method="flow", target="sample", hidden=16, depth=1, time_dim=8, action_steps=4,
                             exec_steps=2, inference_steps=5)
    policy, params = Policy.create(config, 3, 2, jax.random.key(0))
    obs, key = jax.random.normal(jax.random.key(1), (4, 2, 3)), jax.random.key(2)
    drawn = jax.random.normal(key, (4, 4, 2))  # the x0 `Policy.sample` draws from `key`
    by_noise = teacher_sampler(config)(policy.network(params), drawn, obs.reshape(4, -1))
    np.testing.assert_allclose(by_noise, policy.sample(params, obs, key), rtol=1e-5, atol=1e-6)
    as_velocity = teacher_sampler(config.replace(target="velocity"))(policy.network(params), drawn, obs.reshape(4, -1))
    assert not np.allclose(by_noise, as_velocity, atol=1e-3)


def test_a_ddim_teacher_is_distilled_from_its_own_weights():
    """A diffusion network predicts the clean chunk at a noise level, not a velocity: the student starts from it
    all the same (`start="teacher"`) and learns the DDIM map from the noise."""
    task, data = get_task("fork"), two_modes()
    config = PolicyConfig.of(method="diffusion", steps=50, steps_per_call=50, inference_steps=5, **TINY)
    teacher = train_policies(task, config, data, [0], progress=False)
    distill = DistillConfig().replace(steps=200, steps_per_call=200, batch_size=128)
    student = distill_policies(task, teacher, data, distill, progress=False)
    x0, cond = jax.random.normal(jax.random.key(4), (SAMPLES, 4, 2)), jnp.zeros((SAMPLES, 12))
    target = teacher_sampler(config)(teacher.policy.network(teacher.state_of(0).params), x0, cond)

    def error(params):
        return float(jnp.mean((x0 + student.policy.network(params)(x0, jnp.zeros(SAMPLES), cond) - target) ** 2))

    assert error(student.state_of(0).params) < error(teacher.state_of(0).params) / 4


@pytest.mark.parametrize("changes, message", [
    (dict(method="diffusion", sampler="ddpm"), "a diffusion teacher sampling by ddpm draws fresh noise"),
    (dict(method="diffusion", ddim_eta=0.5), "a diffusion teacher sampling by ddim at eta 0.5 draws fresh noise"),
    (dict(method="bc"), "a bc policy samples nothing")])
def test_a_stochastic_teacher_is_refused_before_any_work(taught, changes, message):
    task, data, teacher, _ = taught
    config = teacher.policy.config.replace(**changes)
    with pytest.raises(PhysgenError, match=message):
        distill_policies(task, teacher._replace(policy=teacher.policy._replace(config=config)), data)


def test_distilling_on_other_data_than_the_teachers_is_refused(taught):
    task, data, teacher, _ = taught
    other = data._replace(actions=data.actions * 0.5)
    with pytest.raises(PhysgenError, match="not the data the teacher was trained on"):
        distill_policies(task, teacher, other, DistillConfig().replace(steps=1, steps_per_call=1))


def test_starting_from_given_parameters_equal_to_fresh_ones_changes_nothing():
    """The training loop's distillation arguments leave its own path as it was: `start` holding the parameters it
    would draw gives the same run."""
    task, data = get_task("fork"), two_modes()
    config = PolicyConfig.of(method="flow", steps=20, steps_per_call=10, **TINY)
    fresh = train_policies(task, config, data, [0, 1], progress=False)
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s))[0])(jnp.arange(2))
    policy, _ = Policy.create(config, task.obs_dim, task.act_dim, keys[0])
    start = jax.vmap(policy.init)(keys)
    started = train_policies(task, config, data, [0, 1], progress=False, start=start)
    np.testing.assert_array_equal(started.losses, fresh.losses)


def test_distill_checkpoint_distils_a_saved_teacher_on_its_training_split(fork_dataset, tmp_path):
    task = get_task("fork")
    train, _ = split_episodes(load_dataset(task).trajectories, validation_fraction=0.1, seed=0)
    config = PolicyConfig.of(method="flow", steps=20, steps_per_call=20, **{**TINY, "batch_size": 32})
    teacher = train_policies(task, config, train, [5], progress=False)
    path = save_policy(tmp_path / "teacher", task, teacher, 0)
    out, student = distill_checkpoint(path, tmp_path / "student", steps=10, progress=False)
    policy, _, meta = load_policy(out, "fork")
    assert student.losses.shape == (1, 1) and meta["seed"] == 5 and policy.config.optim.steps == 10
    assert meta["distilled_from"]["checkpoint"] == str(path) and meta["distilled_from"]["teacher"]["steps"] == 20
    with pytest.raises(PhysgenError, match="--steps must be at least 1"):
        distill_checkpoint(path, tmp_path / "never", steps=0)
    with pytest.raises(PhysgenError, match="is the teacher's own checkpoint folder"):
        distill_checkpoint(path, path, steps=10)
    assert load_policy(path, "fork")[2]["method"] == "flow" and "distilled_from" not in load_policy(path, "fork")[2]
    assert main(["distill", "--checkpoint", str(path), "--steps", "10", "--out", str(tmp_path / "cli")]) == 0
    cli_student = load_policy(tmp_path / "cli", "fork")[1]  # the same distillation from the command line
    assert jax.tree.all(jax.tree.map(np.array_equal, cli_student.params, load_policy(out, "fork")[1].params))
    assert main(["distill", "--checkpoint", str(path), "--steps", "0"]) == 2


def test_flow_1step_is_an_opt_in_bench_method(fork_dataset, tmp_path, monkeypatch):
    for budget in BUDGETS.values():
        assert "flow-1step" not in registry.default_methods(get_task("fork"), budget)[0]
        assert "flow" in registry.default_methods(get_task("fork"), budget)[0]
    out = tmp_path / "run"
    assert main(["bench", "--task", "fork", "--methods", "flow-1step", "--seeds", "2", "--episodes", "2",
                 "--budget", "smoke", "--no-videos", "--out", str(out)]) == 0
    protocol = json.loads((out / "protocol.json").read_text())["experiment"]
    hyper = protocol["hyperparameters"]["flow-1step"]
    assert hyper["teacher"]["method"] == "flow" and hyper["distill"]["start"] == "teacher"
    assert protocol["curve_steps"]["flow-1step"][-1] == hyper["distill"]["steps"]
    results = json.loads((out / "results.json").read_text())
    assert [u["seed"] for u in results["units"]["flow-1step"]] == [0, 1]
    policy, state, meta = load_policy(out / "checkpoints" / "flow-1step" / "seed_1", "fork")
    assert policy.config.inference_steps == 1 and meta["distilled_from"]["teacher"] == hyper["teacher"]
    # beside the flow row, the method distils that row's policies instead of training them again: the same students
    beside, trainings = tmp_path / "beside", []
    monkeypatch.setattr(offline, "train_policies",
                        lambda *a, **k: trainings.append(a[1].method) or train_policies(*a, **k))
    assert main(["bench", "--task", "fork", "--methods", "flow,flow-1step", "--seeds", "2", "--episodes", "2",
                 "--budget", "smoke", "--no-videos", "--out", str(beside)]) == 0
    assert trainings == ["flow"]  # the flow row's; no second teacher
    again = load_policy(beside / "checkpoints" / "flow-1step" / "seed_1", "fork")[1]
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
