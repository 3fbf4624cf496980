"""Tasks defined outside physgen: found as `module:NAME` and through installed entry points (group physgen.tasks),
their errors, the demonstrator calling conventions, and the example plugin (examples/pendulum_task) end to end."""

import dataclasses
import importlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from physgen.bench.experiments import read_experiment
from physgen.cli import main
from physgen.data.generate import rollout
from physgen.envs import Task, fork, get_task, list_tasks, register_task, registry
from physgen.envs.rollout import rollout_gym
from physgen.errors import PhysgenError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pendulum_task"
# A task module as a user writes one: fork under another name, and an attribute that is not a task
MODULE = """
import dataclasses
from physgen.envs import get_task
TASK = dataclasses.replace(get_task("fork"), name="{name}")
NOT_A_TASK = 3
"""


@pytest.fixture(autouse=True)
def registry_and_modules(monkeypatch):
    """Each test starts from the built-in tasks and leaves neither its tasks nor its modules behind."""
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    monkeypatch.setattr(registry, "_ORIGINS", dict(registry._ORIGINS))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("plugin_"):
            del sys.modules[name]


def write_module(folder: Path, module: str, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))


def install(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """A distribution's metadata with entry points in group physgen.tasks, as pip writes it into site-packages."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[physgen.tasks]\n{lines}")


def error_of(name: str) -> str:
    with pytest.raises(PhysgenError) as caught:
        get_task(name)
    return str(caught.value)


def test_a_module_task_whose_gymnasium_id_is_not_registered_is_refused_before_any_work(tmp_path, monkeypatch):
    write_module(tmp_path, "plugin_unregistered", MODULE.format(name="unregistered").replace(
        'name="unregistered"', 'name="unregistered", gym_id="physgen/NotRegistered-v0"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    message = error_of("plugin_unregistered:TASK")
    assert "'physgen/NotRegistered-v0'" in message and "gymnasium.register" in message
    assert "unregistered" not in registry._TASKS


def test_a_module_task_is_found_by_module_and_name_and_then_by_its_own_name(tmp_path, monkeypatch):
    write_module(tmp_path, "plugin_mine", MODULE.format(name="mine"))
    monkeypatch.syspath_prepend(tmp_path)
    task = get_task("plugin_mine:TASK")
    assert isinstance(task, Task) and task is sys.modules["plugin_mine"].TASK and task.name == "mine"
    assert get_task("mine") is task and get_task("plugin_mine:TASK") is task
    assert "mine" in [t.name for t in list_tasks()]


def test_module_task_errors_name_the_problem_and_the_fix(tmp_path, monkeypatch):
    write_module(tmp_path, "plugin_errors", MODULE.format(name="fork"))  # a task named as a built-in one
    write_module(tmp_path, "plugin_needs", "import plugin_dependency_not_installed\n")
    monkeypatch.syspath_prepend(tmp_path)
    message = error_of("plugin_not_there:TASK")
    assert "no module named 'plugin_not_there'" in message and "pip install" in message and "PYTHONPATH" in message
    message = error_of("plugin_needs:TASK")
    assert "plugin_needs imports 'plugin_dependency_not_installed'" in message and "pip install" in message
    assert "has no attribute 'MISSING'; its Task objects: TASK" in error_of("plugin_errors:MISSING")
    assert "plugin_errors:NOT_A_TASK is a builtins.int, not a physgen.envs.Task" in error_of("plugin_errors:NOT_A_TASK")
    assert "module:NAME" in error_of("plugin_errors:")
    message = error_of("plugin_errors:TASK")
    assert "two tasks are named 'fork'" in message and "built-in" in message and "plugin_errors:TASK" in message
    assert get_task("fork") is not sys.modules["plugin_errors"].TASK  # the built-in one stays


def test_register_task_refuses_a_second_task_of_a_taken_name():
    task = dataclasses.replace(get_task("fork"), name="mine")
    assert register_task(task) is task and register_task(task) is task and get_task("mine") is task
    with pytest.raises(PhysgenError, match="two tasks are named 'mine'"):
        register_task(dataclasses.replace(task))
    with pytest.raises(PhysgenError, match="not a physgen.envs.Task"):
        register_task("mine")


def test_installed_tasks_are_found_lazily_and_listed_by_physgen_tasks(tmp_path, monkeypatch, capsys):
    write_module(tmp_path, "plugin_installed", MODULE.format(name="installed"))
    install(tmp_path, "plugin-installed", {"installed": "plugin_installed:TASK"})
    monkeypatch.syspath_prepend(tmp_path)
    get_task("fork")
    known = "fork, fork-image, hopper, installed, maze, maze-image, push, push-image "
    with pytest.raises(PhysgenError, match=f"unknown task 'nope'; known tasks: {known}"):
        get_task("nope")  # the names of installed tasks are read, their modules are not imported
    assert "plugin_installed" not in sys.modules
    task = get_task("installed")
    assert task is sys.modules["plugin_installed"].TASK and task.name == "installed"
    assert main(["tasks"]) == 0
    assert "installed: " + task.summary in capsys.readouterr().out


def test_a_broken_plugin_is_named_and_does_not_hide_the_other_tasks(tmp_path, monkeypatch):
    write_module(tmp_path, "plugin_broken", "raise RuntimeError('the plugin is broken')\n")
    write_module(tmp_path, "plugin_other", MODULE.format(name="other"))
    install(tmp_path, "plugin-broken", {"broken": "plugin_broken:TASK", "renamed": "plugin_other:TASK",
                                        "wrong": "plugin_other:NOT_A_TASK"})
    monkeypatch.syspath_prepend(tmp_path)
    assert get_task("fork").name == "fork"  # built-in names never load plugins
    message = error_of("broken")
    assert ("entry point broken = 'plugin_broken:TASK' of distribution plugin-broken 0.1 failed to load: "
            "RuntimeError: the plugin is broken") in message and "plugin_broken.py:1" in message
    assert "pip install --force-reinstall plugin-broken" in message
    assert "loads a task named 'other': name the entry point after its task" in error_of("renamed")
    assert "entry point wrong = 'plugin_other:NOT_A_TASK'" in error_of("wrong")
    assert "not a physgen.envs.Task" in error_of("wrong")
    with pytest.raises(PhysgenError, match="entry point broken"):
        list_tasks()


def test_two_installed_tasks_of_one_name_are_refused(tmp_path, monkeypatch):
    write_module(tmp_path, "plugin_twin_a", MODULE.format(name="twin"))
    write_module(tmp_path, "plugin_twin_b", MODULE.format(name="twin"))
    install(tmp_path, "plugin-a", {"twin": "plugin_twin_a:TASK"})
    install(tmp_path, "plugin-b", {"twin": "plugin_twin_b:TASK"})
    monkeypatch.syspath_prepend(tmp_path)
    message = error_of("twin")
    assert "two installed packages offer a task named 'twin'" in message
    assert "plugin-a 0.1" in message and "plugin-b 0.1" in message
    with pytest.raises(PhysgenError, match="two tasks are named 'twin': entry point twin = 'plugin_twin_"):
        list_tasks()


def test_an_installed_task_may_not_take_a_built_in_name(tmp_path, monkeypatch):
    write_module(tmp_path, "plugin_forked", MODULE.format(name="fork"))
    install(tmp_path, "plugin-forked", {"fork": "plugin_forked:TASK"})
    monkeypatch.syspath_prepend(tmp_path)
    assert get_task("fork") is fork.TASK and "plugin_forked" not in sys.modules  # built-in names load no plugin
    with pytest.raises(PhysgenError, match="two tasks are named 'fork': physgen's built-in task, and entry point "
                                           "fork = 'plugin_forked:TASK' of distribution plugin-forked 0.1"):
        list_tasks()


@pytest.fixture
def pendulum(monkeypatch):
    """The example plugin's task, its package made importable as it is once installed."""
    monkeypatch.syspath_prepend(EXAMPLE)
    return get_task("physgen_pendulum:TASK")


def success_rate(task, episodes) -> float:
    return float(np.mean([task.success(e.events, e.episode_return, e.length, None) for e in episodes]))


def test_the_lqr_expert_keeps_the_pendulum_up_and_random_actions_do_not(pendulum):
    expert = pendulum.demonstrators["expert"]()
    assert success_rate(pendulum, rollout_gym(pendulum, expert, seed=0, episodes=20)) >= 0.95
    assert success_rate(pendulum, rollout_gym(pendulum, None, seed=0, episodes=20)) == 0.0


def test_the_expert_reads_the_model_state_from_the_observation_and_its_closed_loop_is_stable(pendulum):
    lqr = importlib.import_module("physgen_pendulum.lqr")  # importable once the fixture put it on sys.path
    env = pendulum.make_env()
    obs, _ = env.reset(seed=3)
    sim = env.unwrapped
    np.testing.assert_allclose(lqr.observation_state(obs), np.concatenate([sim.data.qpos, sim.data.qvel]), atol=1e-12)
    a, b = lqr.linearize(env)
    gain = pendulum.demonstrators["expert"]().gain
    assert np.abs(np.linalg.eigvals(a)).max() > 1  # upright is unstable on its own
    assert np.abs(np.linalg.eigvals(a - b @ gain)).max() < 1  # and stable under the LQR gain
    env.close()


def one_observation_expert(expert):
    """The LQR expert written for one observation, as a user might: float() fails on a batch."""
    return lambda obs: np.array([float(expert(obs[None])[0, 0])])


def test_both_demonstrator_conventions_record_the_same_episodes(pendulum):
    lqr = pendulum.demonstrators["expert"]()
    batched = rollout_gym(pendulum, lqr, seed=1, episodes=3)
    single_task = dataclasses.replace(pendulum, demonstrator_batched=False)
    single = rollout_gym(single_task, one_observation_expert(lqr), seed=1, episodes=3)
    for one, other in zip(batched, single):
        np.testing.assert_array_equal(one.actions, other.actions)
        np.testing.assert_array_equal(one.observations, other.observations)


def test_a_demonstrator_of_the_other_convention_or_a_wrong_shape_is_named(pendulum):
    lqr, single_task = pendulum.demonstrators["expert"](), dataclasses.replace(pendulum, demonstrator_batched=False)
    written_for_one = dataclasses.replace(pendulum, demonstrators={"expert": lambda: one_observation_expert(lqr)})
    with pytest.raises(PhysgenError) as caught:
        rollout(written_for_one, "expert", seed=1, episodes=3)  # as physgen data calls it
    message = str(caught.value)
    assert ("'pendulum''s demonstrator 'expert' failed on its first call, given a batch of observations (3, 9)"
            in message)
    assert "TypeError" in message and "demonstrator_batched=False" in message
    with pytest.raises(PhysgenError, match=r"returned actions of shape \(3,\) given a batch of observations \(3, 9\); "
                                           r"expected \(3, 1\)"):
        rollout_gym(pendulum, lambda obs: lqr(obs)[:, 0], seed=1, episodes=3, name="expert")
    with pytest.raises(PhysgenError, match=r"returned actions of shape \(1, 1\) given one observation \(9,\); "
                                           r"expected \(1,\).*demonstrator_batched=True"):
        rollout_gym(single_task, lambda obs: lqr(np.atleast_2d(obs)), seed=1, episodes=3, name="expert")


def test_the_plugin_task_benchmarks_end_to_end_from_the_cli(pendulum, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out: runs/bench/<task name>
    argv = ["bench", "--task", "physgen_pendulum:TASK", "--budget", "smoke", "--methods", "bc", "--seeds", "2",
            "--episodes", "2", "--no-videos"]
    assert main(argv) == 0
    out = tmp_path / "runs" / "bench" / "pendulum"
    results, protocol = (json.loads((out / name).read_text()) for name in ("results.json", "protocol.json"))
    assert results["task"] == protocol["experiment"]["task"] == "pendulum"
    assert "# physgen bench: pendulum" in (out / "report.md").read_text()
    # a rerun in a new process names the task the way that finds it there
    assert results["run"]["command"].startswith("physgen bench --task physgen_pendulum:TASK ")
    assert read_experiment(out / "experiment.toml")["task_name"] == "physgen_pendulum:TASK"
    # the dataset's reference score is the LQR expert's mean return over its 100 episodes (seed 0)
    dataset = protocol["experiment"]["dataset"]
    assert dataset["id"] == "physgen/pendulum/expert-v0" and dataset["episodes"] == pendulum.dataset_episodes
    expert = pendulum.demonstrators["expert"]()
    expert_episodes = rollout_gym(pendulum, expert, seed=0, episodes=pendulum.dataset_episodes)
    assert dataset["ref_max_score"] == pytest.approx(np.mean([e.episode_return for e in expert_episodes]))
    for unit in results["units"]["bc"]:  # the plugin's success rule decided each recorded episode
        arrays = np.load(out / "units" / "bc" / f"seed_{unit['seed']}.npz")
        for e, episode in enumerate(unit["episodes"]):
            fall = arrays["event_fall"][e, : episode["length"]]
            assert episode["success"] == pendulum.success({"fall": fall}, episode["return"], episode["length"], None)
