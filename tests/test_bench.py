import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from typing import NamedTuple

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physgen.bench import Method, registry, run_bench
from physgen.bench.failures import (StateSupport, Trajectory, diagnose, fit_support, hidden_by_aggregates,
                                    nearest_distances, task_categories)
from physgen.bench.units import Curves, row_folder
from physgen.bench.video import pick_episodes
from physgen.control.latency import measure_agent_latency
from physgen.cli import main
from physgen.data import generate_dataset
from physgen.envs import get_task
from physgen.errors import PhysgenError

HORIZON = 100
LOW, HIGH = np.full(2, -1.0), np.full(2, 1.0)
SMOKE = dict(methods=["diffusion", "bc"], seeds=2, episodes=4, budget="smoke")
SMOKE_ARGS = ["--task", "fork", "--methods", "diffusion,bc", "--seeds", "2", "--episodes", "4", "--budget", "smoke"]


# fork's spaces and events without its own detectors: the generic rules alone
GENERIC = dataclasses.replace(get_task("fork"), failure_detectors={})


def category(events=None, ood=None, actions=None, length=HORIZON, goal=True, threshold=1.0):
    events = {"collision": np.zeros(length, bool), **(events or {})}
    if goal:
        events["goal_reached"] = np.zeros(length, bool)
    actions = np.zeros((length, 2)) if actions is None else actions
    ood = np.zeros(length + 1) if ood is None else ood
    trajectory = Trajectory(np.zeros((length + 1, 6)), actions, events, ood, length)
    return diagnose(GENERIC, trajectory, threshold).category


def fired_at(step, length=HORIZON):
    flags = np.zeros(length, bool)
    flags[step] = True
    return flags


def test_each_failure_rule_on_a_hand_made_trajectory():
    assert category({"collision": fired_at(5)}) == "early_instability"
    assert category({"collision": fired_at(30)}) == "collision"
    assert category({"collision": fired_at(60)}) == "long_horizon"
    assert category() == "timeout"
    assert category(goal=False) == "low_return"
    pinned = np.tile([1.0, -0.995], (HORIZON, 1))
    assert category({"collision": fired_at(30)}, actions=pinned) == "action_saturation"
    ood = np.zeros(HORIZON + 1)
    ood[10:13] = 2.0  # three consecutive steps out of distribution, 20 steps (20% of the horizon) before failing
    assert category({"collision": fired_at(30)}, ood=ood) == "distribution_shift"
    assert category({"collision": fired_at(19)}, ood=ood) == "collision"  # 9 steps before: left while failing
    ood[12] = 0.0  # two are not enough
    assert category({"collision": fired_at(30)}, ood=ood) == "collision"
    late = np.zeros(HORIZON + 1)
    late[40:50] = 2.0  # out of distribution only after the failure: the failure is not blamed on it
    assert category({"collision": fired_at(30)}, ood=late) == "collision"


def test_nearest_distances_match_brute_force_and_the_threshold_is_the_validation_quantile():
    rng = np.random.default_rng(0)
    train, validation = rng.normal(size=(500, 3)), rng.normal(size=(200, 3))
    support = fit_support(train, validation)
    queries = rng.normal(size=(7, 5, 3)) * 2
    scaled = lambda x: (x - train.mean(0)) / train.std(0)  # noqa: E731
    brute = np.sqrt(((scaled(queries)[..., None, :] - scaled(train)) ** 2).sum(-1)).min(-1)
    np.testing.assert_allclose(nearest_distances(support, queries), brute, rtol=1e-4, atol=1e-4)
    val_distances = np.sqrt(((scaled(validation)[:, None] - scaled(train)) ** 2).sum(-1)).min(-1)
    assert support.threshold == pytest.approx(np.quantile(val_distances, 0.99), rel=1e-4)
    exact = StateSupport(np.zeros((1, 2), np.float32), np.zeros(2), np.ones(2), 1.0)
    np.testing.assert_allclose(nearest_distances(exact, np.array([[3.0, 4.0]])), [5.0], rtol=1e-6)


def test_aggregates_hide_different_failures_behind_overlapping_success():
    success = {"a": {"low": 0.2, "high": 0.5}, "b": {"low": 0.3, "high": 0.6}, "c": {"low": 0.8, "high": 0.9}}
    categories = {"a": ["collision"] * 4, "b": ["timeout"] * 3 + ["collision"], "c": ["timeout"]}
    notes = hidden_by_aggregates(success, categories)
    assert len(notes) == 1 and notes[0].startswith("a and b") and "0.75" in notes[0]


def test_videos_are_picked_by_a_seeded_rule_spread_over_categories():
    episodes = [{"category": c} for c in ["timeout"] * 10 + ["collision"] * 2 + [None] * 5 + ["fall"]]
    records = [{"episodes": episodes}, {"episodes": episodes}]
    categories = task_categories(dataclasses.replace(GENERIC, failure_events=("collision", "fall")))
    picked = pick_episodes(records, categories)
    assert picked == pick_episodes(records, categories)
    labels = [label for _, _, label in picked]
    assert labels.count("success") == 2 and len(labels) == 7
    # round robin in rule order: collision, fall, timeout, collision, fall
    assert labels.count("collision") == 2 and labels.count("fall") == 2 and labels.count("timeout") == 1
    assert len(set(picked)) == len(picked)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_minari")
    patch = pytest.MonkeyPatch()
    patch.setenv("MINARI_DATASETS_PATH", str(root))
    generate_dataset(get_task("fork"), episodes=200, seed=0)
    yield root
    patch.undo()


@pytest.fixture(scope="module")
def smoke_run(datasets, tmp_path_factory):
    return run_bench("fork", out=tmp_path_factory.mktemp("bench") / "fork", progress=False, **SMOKE)


def test_smoke_bench_writes_every_file_and_the_report_quotes_results(smoke_run):
    out = smoke_run
    for name in ("protocol.json", "results.json", "report.md", "curves.png", "success.png", "failures.png"):
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    protocol = json.loads((out / "protocol.json").read_text())["experiment"]
    assert protocol["training_seeds"] == [0, 1] and len(protocol["evaluation_seeds"]) == 4
    report = (out / "report.md").read_text()
    for method, summary in results["summary"].items():
        row = re.search(rf"^\| {method} \| (.+)$", report, re.MULTILINE).group(1).split(" | ")
        mean = summary["success_mean"]
        assert row[0] == f"{mean['estimate']:.2f} [{mean['low']:.2f}, {mean['high']:.2f}]"
        rates = [np.mean([e["success"] for e in unit["episodes"]]) for unit in results["units"][method]]
        assert summary["per_seed_success"] == pytest.approx(rates)
        assert len(results["curves"][method]) == 4
        # the last curve point is the final evaluation: the same episodes the summary reads
        assert results["curves"][method][-1]["normalized_return"] == summary["normalized_return"]
        videos = list((out / "videos" / method).glob("*.mp4"))
        assert 1 <= len(videos) <= 7 and all(v.stat().st_size > 0 for v in videos)
    phases = results["run"]["seconds_per_phase"]
    assert list(phases) == ["dataset", "diffusion", "bc", "videos"] and phases["videos"] > 0
    assert all(phases[m]["training"] > 0 and phases[m]["evaluation"] > 0 for m in ("diffusion", "bc"))
    # evaluation is timed apart from training: at most the whole run less the other phases
    assert sum(phases[m]["training"] + phases[m]["evaluation"] for m in ("diffusion", "bc")) < 60 * results["run"][
        "minutes"]
    assert f"bc: training {phases['bc']['training']:.0f} s, evaluation {phases['bc']['evaluation']:.0f} s" in report


def test_categories_can_be_recomputed_from_the_recorded_trajectories(smoke_run):
    task, results = get_task("fork"), json.loads((smoke_run / "results.json").read_text())
    for unit in results["units"]["bc"]:
        arrays = np.load(smoke_run / "units" / "bc" / f"seed_{unit['seed']}.npz")
        for e, episode in enumerate(unit["episodes"]):
            events = {k: arrays[f"event_{k}"][e] for k in task.events}
            trajectory = Trajectory(arrays["observations"][e], arrays["actions"][e], events, arrays["ood"][e],
                                    episode["length"])
            assert episode["success"] or diagnose(task, trajectory, unit["ood_threshold"]) == (
                episode["category"], episode["evidence"])


def test_a_different_protocol_in_the_same_folder_is_refused(smoke_run):
    with pytest.raises(PhysgenError, match=r"different protocol \(training_seeds differ\)"):
        run_bench("fork", out=smoke_run, progress=False, **{**SMOKE, "seeds": 3})


def test_the_protocol_mismatch_names_the_fields_and_a_damaged_protocol_is_named(tmp_path):
    from physgen.bench.protocol import fix_protocol

    protocol = {"experiment": {"task": "fork", "training_seeds": [0, 1],
                               "dataset": {"id": "physgen/fork/expert-v0", "episodes": 200}}}
    fix_protocol(tmp_path, protocol)
    fix_protocol(tmp_path, protocol)  # the same experiment resumes
    other = json.loads(json.dumps(protocol))
    other["experiment"]["dataset"].update(id="physgen/fork/medium-v0", episodes=100)
    with pytest.raises(PhysgenError, match=r"\(dataset\.id, dataset\.episodes differ\)"):
        fix_protocol(tmp_path, other)
    (tmp_path / "protocol.json").write_text('{"experiment": {"ta')
    with pytest.raises(PhysgenError, match="protocol.json is damaged"):
        fix_protocol(tmp_path, protocol)


def test_the_task_recipe_sets_the_policy_configs_and_is_recorded_with_the_command(smoke_run):
    from physgen.bench.protocol import policy_config
    from physgen.bench.registry import bench_command
    from physgen.envs.base import Recipe

    hopper = get_task("hopper")
    quick = policy_config(hopper, "diffusion", "quick")
    assert (quick.chunking.action_steps, quick.chunking.exec_steps, quick.diffusion.prediction) == (4, 1, "sample")
    assert policy_config(hopper, "diffusion", "full").diffusion.prediction == "epsilon"
    assert quick.optim.steps == hopper.recipe.budgets["quick"]["steps"]
    assert quick.optim.steps_per_call * 5 >= quick.optim.steps
    recipe = Recipe(policy={"hidden": 32}, methods={"bc": {"hidden": 16}}, budgets={"quick": {"steps": 7}},
                    method_budgets={("bc", "quick"): {"steps": 9}})
    assert recipe.settings("bc", "quick") == {"hidden": 16, "steps": 9}
    assert recipe.settings("flow", "quick") == {"hidden": 32, "steps": 7}
    protocol = json.loads((smoke_run / "protocol.json").read_text())["experiment"]
    assert protocol["recipe"] == get_task("fork").recipe.as_dict()
    assert protocol["hyperparameters"]["diffusion"]["steps"] == 100
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["run"]["command"] == "physgen bench --task fork --budget smoke --methods diffusion,bc"
    assert bench_command(hopper, {"budget": "quick", "methods": ["diffusion", "flow", "bc"],
                                  "training_seeds": list(range(10)), "episodes": 10,
                                  "dataset": {"id": "physgen/hopper/expert-v0"}}) == "physgen bench --task hopper"


def test_bad_bench_arguments_give_one_line_errors(capsys):
    assert main(["bench", "--task", "fork", "--methods", "diffusion,gan"]) == 2
    assert main(["bench", "--task", "fork", "--seeds", "0"]) == 2
    assert "gan" in capsys.readouterr().err


def test_a_killed_run_resumes_to_the_same_numbers(smoke_run, datasets, tmp_path):
    # The finished run with bc's units removed is a run that stopped after diffusion; resuming it in a subprocess
    # that is killed as soon as bc writes its first unit, then rerunning, must end with the uninterrupted numbers.
    out = tmp_path / "resumed"
    shutil.copytree(smoke_run, out, ignore=shutil.ignore_patterns("bc", "results.json", "report.md", "videos"))
    kept = {p: p.stat().st_mtime_ns for p in (out / "units" / "diffusion").iterdir()}
    env = {**os.environ, "MINARI_DATASETS_PATH": str(datasets)}
    proc = subprocess.Popen([sys.executable, "-m", "physgen.cli", "bench", *SMOKE_ARGS, "--out", str(out),
                             "--no-videos"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "units" / "bc" / "seed_0.json").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    run_bench("fork", out=out, progress=False, videos=False, **SMOKE)
    assert {p: p.stat().st_mtime_ns for p in (out / "units" / "diffusion").iterdir()} == kept  # not run again
    again, reference = (json.loads((o / "results.json").read_text()) for o in (out, smoke_run))
    assert again["summary"] == reference["summary"] and again["curves"] == reference["curves"]


def test_a_resume_retrains_units_whose_files_are_damaged(smoke_run, tmp_path, capsys):
    out = tmp_path / "damaged"
    shutil.copytree(smoke_run, out, ignore=shutil.ignore_patterns("results.json", "report.md", "videos"))
    kept = {p: p.stat().st_mtime_ns for p in (out / "units" / "diffusion").iterdir()}
    cut = out / "units" / "bc" / "seed_0.json"
    cut.write_text(cut.read_text()[:100])  # cut short, as by a full disk
    arrays = out / "units" / "bc" / "seed_1.npz"
    arrays.write_bytes(arrays.read_bytes()[:-16] + bytes(16))  # no longer the arrays its JSON describes
    run_bench("fork", out=out, progress=False, videos=False, **SMOKE)
    printed = capsys.readouterr().out
    assert f"{out / 'units' / 'bc' / 'seed_0'}, {out / 'units' / 'bc' / 'seed_1'} damaged or incomplete" in printed
    assert {p: p.stat().st_mtime_ns for p in (out / "units" / "diffusion").iterdir()} == kept  # not run again
    again, reference = (json.loads((o / "results.json").read_text()) for o in (out, smoke_run))
    assert again["summary"] == reference["summary"] and again["curves"] == reference["curves"]


VARIED = dict(methods=["bc"], seeds=2, episodes=3, budget="smoke", progress=False, videos=False)
GRID = {"exec_steps": ["1", "4"], "hidden": ["16", "32"]}
ROWS = ["bc[exec_steps=1,hidden=16]", "bc[exec_steps=1,hidden=32]", "bc[exec_steps=4,hidden=16]",
        "bc[exec_steps=4,hidden=32]"]


@pytest.fixture(scope="module")
def varied_run(datasets, tmp_path_factory):
    return run_bench("fork", out=tmp_path_factory.mktemp("varied") / "fork", variants=GRID, **VARIED)


def test_variants_are_rows_that_share_training_where_only_evaluation_differs(varied_run, tmp_path):
    from physgen.policies import load_policy
    from physgen.stats import difference_interval

    out, rows = varied_run, ROWS
    results = json.loads((out / "results.json").read_text())
    assert list(results["summary"]) == rows and results["run"]["command"].endswith(
        "--vary exec_steps=1,4 --vary hidden=16,32")
    params = {row: load_policy(out / "checkpoints" / row_folder(row) / "seed_1")[1].params for row in rows}
    leaves = lambda row: jax.tree.leaves(params[row])
    # T_a changes only acting: the two T_a of one width are one training; two widths are two
    assert all(np.array_equal(a, b) for a, b in zip(leaves(rows[0]), leaves(rows[2])))
    assert leaves(rows[0])[0].shape != leaves(rows[1])[0].shape
    # a row is the run of its values alone: the same trained seeds, the same episodes
    alone = tmp_path / "alone"
    run_bench("fork", out=alone, overrides={"exec_steps": "4", "hidden": "16"}, **VARIED)
    assert json.loads((alone / "results.json").read_text())["units"]["bc"] == [
        {**unit, "method": "bc"} for unit in results["units"][rows[2]]]
    # the ablation: per field, one series per value of the other field; differences from the first value
    (first, second), units = results["ablations"]["exec_steps"][1]["points"], results["units"]
    counts = lambda row: [sum(e["success"] for e in u["episodes"]) for u in units[row]]
    assert (first["row"], second["row"]) == (rows[1], rows[3])
    assert second["success_difference"] == difference_interval(counts(rows[3]), counts(rows[1]), 3).as_dict()
    assert (out / "ablation_exec_steps.png").exists() and "### hidden" in (out / "report.md").read_text()


def test_a_variant_resumes_alone_and_a_run_reproduces_from_its_experiment_file(varied_run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(varied_run, out)
    results = json.loads((out / "results.json").read_text())
    (out / "units" / "bc(exec_steps=4,hidden=32)" / "seed_1.json").unlink()
    kept = {p: p.stat().st_mtime_ns for row in ROWS[:3] for p in (out / "units" / row_folder(row)).iterdir()}
    run_bench("fork", out=out, variants=GRID, **VARIED)
    assert {p: p.stat().st_mtime_ns for row in ROWS[:3] for p in (out / "units" / row_folder(row)).iterdir()} == kept
    assert json.loads((out / "results.json").read_text())["summary"] == results["summary"]
    again = tmp_path / "again"
    assert main(["bench", "--config", str(varied_run / "experiment.toml"), "--out", str(again), "--no-videos"]) == 0
    assert json.loads((again / "protocol.json").read_text())["experiment"] == json.loads(
        (varied_run / "protocol.json").read_text())["experiment"]
    assert json.loads((again / "results.json").read_text())["summary"] == results["summary"]


def test_the_shipped_experiment_files_hold_valid_experiments():
    from pathlib import Path

    from physgen.bench.experiments import read_experiment
    from physgen.bench.protocol import make_rows
    from physgen.bench.registry import get_methods

    files = sorted((Path(__file__).parents[1] / "experiments").glob("*.toml"))
    assert [f.name for f in files] == ["fork_generative_vs_bc.toml", "hopper_chunking.toml"]
    for path in files:
        experiment = read_experiment(path)
        rows = make_rows(get_task(experiment["task_name"]), get_methods(experiment["methods"]), experiment["budget"],
                         experiment["overrides"] or {}, experiment["variants"])
        assert len(rows) == len(experiment["methods"]) * 3 and all("[exec_steps=" in row for row in rows)


def test_a_second_run_into_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(datasets, tmp_path, capsys):
    from physgen.io import LOCK_NAME, folder_lock

    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(str(os.getppid()))  # a live process holds it
    assert main(["bench", *SMOKE_ARGS, "--out", str(out)]) == 2
    assert f"{out} is in use by another physgen bench (pid {os.getppid()})" in capsys.readouterr().err
    assert not (out / "protocol.json").exists()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True).stdout.strip()
    (out / LOCK_NAME).write_text(ended)  # its process was killed
    with folder_lock(out, "physgen bench"):
        assert (out / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(PhysgenError, match=f"pid {os.getpid()}"):
            with folder_lock(out, "physgen bench"):
                pass
    assert list(out.iterdir()) == []


def test_an_existing_broken_dataset_is_refused_never_replaced(tmp_path, monkeypatch, capsys):
    from physgen.bench.world import _splits

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    data_file = generate_dataset(get_task("fork"), episodes=3, seed=0) / "data" / "main_data.hdf5"
    with h5py.File(data_file, "r+") as file:
        file["episode_1/observations"][2, 0] = np.nan
    contents = data_file.read_bytes()
    assert main(["bench", *SMOKE_ARGS, "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert "episode 1: observations hold NaN or Inf (first at step 2)" in captured.err
    assert "generating" not in captured.out
    with pytest.raises(PhysgenError, match="episode 1: observations hold NaN"):
        _splits(get_task("fork"))  # the world models' datasets, likewise
    assert data_file.read_bytes() == contents


def test_video_of_a_hopper_policy_needs_the_expert_return_and_checks_it_before_rolling_out(tmp_path, monkeypatch,
                                                                                           capsys):
    from physgen.bench import video
    from physgen.data.generate import _write_atomically
    from physgen.data.trajectories import Trajectories, flatten_episodes
    from physgen.envs.rollout import Episode
    from physgen.policies.policy import PolicyConfig
    from physgen.policies.runner import save_policy
    from physgen.policies.train import train_policies

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    task, rng, n = get_task("hopper"), np.random.default_rng(0), 6
    episodes = [Episode(rng.normal(size=(n + 1, task.obs_dim)), rng.uniform(-1, 1, (n, task.act_dim)),
                        np.ones(n), np.zeros(n, bool), np.zeros(n, bool), {"fall": np.zeros(n, bool)}, seed)
                for seed in range(2)]
    config = PolicyConfig.of(method="bc", steps=1, steps_per_call=1, batch_size=4, hidden=8, depth=1, action_steps=4,
                          exec_steps=4)
    trained = train_policies(task, config, Trajectories.from_steps(**flatten_episodes(task, episodes)), [0],
                             progress=False)
    checkpoint = save_policy(tmp_path / "bc", task, trained, 0)
    rollouts = []
    run_episodes = video.run_episodes
    monkeypatch.setattr(video, "run_episodes", lambda *a: rollouts.append(a) or run_episodes(*a))
    monkeypatch.setattr(video, "render_episode", lambda task, seed, actions, path: path)
    argv = ["video", "--task", "hopper", "--checkpoint", str(checkpoint), "--episodes", "1", "--out", str(tmp_path)]
    assert main(argv) == 2 and not rollouts  # no expert dataset: refused before any episode runs
    assert "create it with `physgen data --task hopper`" in capsys.readouterr().err
    _write_atomically(task, "physgen/hopper/expert-v0", episodes, 0, "expert", ref_min=0.0, ref_max=1000.0)
    assert main(argv) == 0 and rollouts[0][-1] == 1000.0
    assert len(capsys.readouterr().out.splitlines()) == 1  # one video path


def test_video_command_renders_a_checkpoint(smoke_run, tmp_path, capsys):
    checkpoint = smoke_run / "checkpoints" / "bc" / "seed_0"
    assert main(["video", "--task", "fork", "--checkpoint", str(checkpoint), "--episodes", "2",
                 "--out", str(tmp_path)]) == 0
    written = sorted(tmp_path.glob("*.mp4"))
    assert len(written) == 2 and all(path.stat().st_size > 0 for path in written)
    assert capsys.readouterr().out.count(".mp4") == 2


def test_sweep_steps_reports_success_and_latency_per_step_count(smoke_run, tmp_path):
    from physgen.bench.sweep import knee, sweep_steps

    rows = sweep_steps(smoke_run / "checkpoints" / "diffusion" / "seed_0", [1, 2], episodes=2, out=tmp_path)
    assert [r["steps"] for r in rows] == [1, 2]
    assert all(r["success"]["low"] <= r["success"]["estimate"] <= r["success"]["high"] and r["chunk_p99_us"] > 0
               for r in rows)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["knee"] in (1, 2) and (tmp_path / "sweep.png").stat().st_size > 0
    with pytest.raises(PhysgenError, match="bc checkpoint"):
        sweep_steps(smoke_run / "checkpoints" / "bc" / "seed_0", [1], episodes=1, out=tmp_path)
    rates = [{"steps": 1, "success": {"estimate": 0.5, "low": 0.3, "high": 0.7}},
             {"steps": 5, "success": {"estimate": 0.8, "low": 0.6, "high": 0.9}},
             {"steps": 10, "success": {"estimate": 0.82, "low": 0.62, "high": 0.92}}]
    assert knee(rates) == 5  # the fewest steps inside the best one's interval


def test_sweep_delay_reports_success_per_mode_and_delay_on_the_same_episodes(smoke_run, tmp_path):
    from physgen.bench.sweep import DELAY_MODES, sweep_delay

    checkpoint = smoke_run / "checkpoints" / "diffusion" / "seed_0"
    rows = sweep_delay(checkpoint, [0, 8], episodes=2, out=tmp_path)  # fork: T_p 16, T_a 8
    assert [(r["mode"], r["delay"]) for r in rows] == [(m, d) for m in DELAY_MODES for d in (0, 8)]
    assert all(r["success"]["low"] <= r["success"]["estimate"] <= r["success"]["high"] and r["action_change"] > 0
               for r in rows)
    saved = json.loads((tmp_path / "sweep-delay.json").read_text())
    assert saved["rows"] == rows and (tmp_path / "sweep-delay.png").stat().st_size > 0
    assert (tmp_path / "sweep-delay.md").read_text().count("\n| ") == 1 + len(rows)
    with pytest.raises(PhysgenError, match=r"--delays must be between 0 and T_p - T_a = 16 - 8 = 8"):
        sweep_delay(checkpoint, [0, 9], episodes=1, out=tmp_path)
    with pytest.raises(PhysgenError, match="bc checkpoint has none"):
        sweep_delay(smoke_run / "checkpoints" / "bc" / "seed_0", [0], episodes=1, out=tmp_path)
    hard_only = sweep_delay(smoke_run / "checkpoints" / "bc" / "seed_0", [0], 1, tmp_path / "bc", modes=("hard",))
    assert len(hard_only) == 1


def test_world_model_methods_run_through_the_bench_with_the_open_loop_evaluation(datasets, tmp_path, capsys):
    from physgen.world_models.data import generate_noisy_dataset

    generate_noisy_dataset(get_task("fork"), episodes=100, seed=1)  # else the bench writes the full 1000 episodes
    # a smaller planner and 8 online iterations instead of 19 halve the test; the wiring is what it checks
    small = {"population": "16", "elites": "4", "iterations": "1", "real_steps": "8192"}
    out = run_bench("fork", methods=["rssm-mpc", "ppo-wm"], seeds=2, episodes=4, budget="smoke", out=tmp_path / "wm",
                    progress=False, videos=False, overrides=small)
    results = json.loads((out / "results.json").read_text())
    protocol = json.loads((out / "protocol.json").read_text())["experiment"]
    assert protocol["world_model_datasets"] == ["expert-v0", "noisy-v0"]
    assert set(protocol["hyperparameters"]["ppo-wm"]) == {"rssm", "ppo", "dream", "online"}
    for method in ("rssm-mpc", "ppo-wm"):
        assert [u["seed"] for u in results["units"][method]] == [0, 1]
        assert all(len(u["episodes"]) == 4 for u in results["units"][method])
        assert results["latency"][method]["action_p99_us"] > 0
    assert [p["step"] for p in results["curves"]["rssm-mpc"]] == [10, 20, 30, 40]  # gradient steps
    assert [p["step"] for p in results["curves"]["ppo-wm"]] == [2048, 4096, 6144, 8192]  # real steps: 8 iterations
    for method in ("rssm-mpc", "ppo-wm"):  # latency first: a run killed after a unit resumes with it
        units = out / "units" / method
        assert (units / "latency.json").stat().st_mtime_ns <= (units / "seed_0.json").stat().st_mtime_ns
    world = results["world_model"]
    assert len(world["rssm"]) == len(world["linear"]) == 25 and world["last_observation"][-1] > world["linear"][-1]
    report = (out / "report.md").read_text()
    assert "## World model" in report and f"| 25 | {world['rssm'][24]['estimate']:.4f}" in report
    assert set(results["sample_efficiency"]) == {"ppo-wm"} and "## Sample efficiency" in report
    assert (out / "sample_efficiency.png").stat().st_size > 10_000
    assert (out / "world_model" / "open_loop.png").stat().st_size > 10_000
    # a run that lost a unit resumes from the saved models and curves to the same numbers
    (out / "units" / "rssm-mpc" / "seed_1.json").unlink()
    (out / "units" / "ppo-wm" / "latency.json").unlink()  # as a run killed before the fix left it
    (out / "results.json").unlink()
    run_bench("fork", methods=["rssm-mpc", "ppo-wm"], seeds=2, episodes=4, budget="smoke", out=out, progress=False,
              videos=False, overrides=small)
    again = json.loads((out / "results.json").read_text())
    assert again["summary"] == results["summary"] and again["curves"] == results["curves"]
    # the ppo-wm policy is a PPO checkpoint like any other: `physgen video` replays it on the real task
    assert main(["video", "--task", "fork", "--checkpoint", str(out / "checkpoints" / "ppo-wm" / "seed_0"),
                 "--episodes", "1", "--out", str(tmp_path / "videos")]) == 0
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1


class HoldStill(NamedTuple):
    """A toy agent: every action is its parameter (one number per seed) in every component."""

    act_dim: int

    def start(self, params, obs):
        return ()

    def act(self, params, carry, obs, key):
        return jnp.full(self.act_dim, params), carry


def _run_hold_still(job):
    agent, curves = HoldStill(job.task.act_dim), Curves(job.evaluation, job.seeds)
    params = jnp.full(len(job.seeds), job.hyperparameters["action"])
    curves.add(0, agent, params, final=True)
    job.finish(curves, measure_agent_latency(agent, params[0], np.zeros((3, job.task.obs_dim))))


def test_a_method_is_one_module_and_one_registration(datasets, tmp_path, request, capsys):
    """A toy method, registered, runs through `physgen bench` from the CLI like the built-in ones."""
    method = Method("hold-still", lambda task, budget: {"action": 0.0}, _run_hold_still, work=lambda values: 1)
    registry.register_method(method)
    request.addfinalizer(lambda: registry.REGISTRY.pop("hold-still"))
    with pytest.raises(PhysgenError, match="'hold-still' is registered already"):
        registry.register_method(method)
    out = tmp_path / "toy"
    assert main(["bench", "--task", "fork", "--methods", "hold-still,bc", "--seeds", "2", "--episodes", "3",
                 "--budget", "smoke", "--no-videos", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    protocol = json.loads((out / "protocol.json").read_text())["experiment"]
    assert protocol["methods"] == ["hold-still", "bc"] and protocol["hyperparameters"]["hold-still"] == {"action": 0.0}
    units = results["units"]["hold-still"]
    # standing still at the start never reaches fork's goal: known truth
    assert [u["seed"] for u in units] == [0, 1] and not any(e["success"] for u in units for e in u["episodes"])
    assert all(e["return"] == units[0]["episodes"][i]["return"] for u in units for i, e in enumerate(u["episodes"]))
    assert "hold-still" in (out / "report.md").read_text()
    assert main(["bench", "--task", "fork", "--methods", "no-such", "--budget", "smoke", "--out", str(out)]) == 2
    assert ("unknown method(s) no-such; use some of diffusion, flow, bc, ppo, rssm-mpc, ppo-wm, flow-1step, "
            "hold-still") in capsys.readouterr().err
