import json
import os
from pathlib import Path

import pytest

from physgen.cli import main
from physgen.errors import PhysgenError


def test_tasks_lists_every_task_with_its_facts(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for fact in ("fork:", "maze:", "push:", "hopper:", "50 Hz, horizon 100", "125 Hz, horizon 1000",
                 "events: collision", "events: contact, off_table, goal_reached",
                 "success: no fall for all 1000 steps", "gymnasium id: physgen/Maze-v0",
                 "recipe: chunks: T_o 2, T_p 4, T_a 1", "quick 8,000 steps, batch 128, width 256, learning rate 0.002",
                 "diffusion: sample prediction (epsilon on full)", "flow: sample prediction (velocity on full)",
                 "recipe: chunks: T_o 2, T_p 16, T_a 8"):
        assert fact in out


def test_data_writes_a_dataset_and_reports_it(capsys):
    assert main(["data", "--task", "maze", "--episodes", "3", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote physgen/maze/expert-v0: 3 episodes") and "ref_max_score" in out


SET = ["bench", "--task", "fork", "--budget", "smoke", "--methods"]  # then the methods and a --set


@pytest.mark.parametrize("argv, message", [
    (["data", "--task", "nope"], "unknown task 'nope'"),
    (["data", "--task", "fork", "--episodes", "0"], "--episodes must be at least 1"),
    (["train", "--task", "fork", "--method", "bc", "--seeds", "0"], "--seeds must be at least 1"),
    (["train", "--task", "fork", "--method", "bc", "--episodes", "0"], "--episodes must be at least 1"),
    (["train", "--task", "fork", "--method", "bc", "--steps", "0"], "steps must be at least 1"),
    (["data", "--task", "hopper", "--policy", "oracle"],
     "task 'hopper' has no policy 'oracle'; its policies: random, expert, medium"),
    (["data", "--task", "fork", "--policy", "oracle"], "task 'fork' has no policy 'oracle'; its policies: random, expert"),
    (["data", "--task", "hopper", "--policy", "noisy"], "task 'hopper' has no pure-JAX expert"),
    (["train", "--task", "fork", "--method", "rssm", "--images"], "only the VAE learns images"),
    ([*SET, "diffusion,bc", "--set", "stepz=3"],
     "no method of this run has the field stepz (--set); its fields: action_steps, batch_size"),
    ([*SET, "ppo", "--set", "prediction=epsilon"], "no method of this run has the field prediction (--set); its fields: "
     "anneal_lr"),
    ([*SET, "bc", "--set", "exec_steps=0"], "exec_steps (T_a=0) must be between 1 and action_steps"),
    ([*SET, "bc", "--set", "steps=1.5"], "bc: steps=1.5: steps takes int values such as 100"),
    ([*SET, "bc", "--set", "hidden"], "--set takes field=value[,field=value...], got 'hidden'"),
    ([*SET, "rssm-mpc", "--set", "mpc.planner=grid"], "planner must be one of cem, mppi, got 'grid'"),
    (["train", "--task", "fork", "--method", "ppo", "--set", "prediction=epsilon"],
     "unknown field 'prediction' in --set; the fields: anneal_lr"),
    (["train", "--task", "fork", "--method", "bc", "--set", "method=flow"], "--set cannot change the method"),
    ([*SET, "bc", "--vary", "exec_steps=1,4", "--vary", "stepz=1,2"], "bc has no field stepz (--vary)"),
    ([*SET, "bc,ppo", "--vary", "exec_steps=1,4"], "ppo has no field exec_steps (--vary); vary it in a run of the "
     "methods that have it, or vary one of: anneal_lr"),
    ([*SET, "bc", "--vary", "exec_steps=1,x"], "bc[exec_steps=x]: exec_steps=x: exec_steps takes int values such as"),
    ([*SET, "bc", "--vary", "exec_steps=1,99"], "bc[exec_steps=99]: exec_steps (T_a=99) must be between 1 and"),
    ([*SET, "bc", "--vary", "prediction=sample,noise"], "bc[prediction=noise]: prediction must be one of"),
    ([*SET, "bc", "--vary", "exec_steps=1,1"], "--vary names exec_steps or one of its values twice"),
    ([*SET, "bc", "--vary", "exec_steps"], "--vary takes field=value,value[,...], got 'exec_steps'"),
    ([*SET, "bc", "--set", "exec_steps=2", "--vary", "exec_steps=1,4"], "exec_steps is both set (--set) and varied"),
    ([*SET, "bc", "--vary", "method=bc,flow"], "--set and --vary cannot change a method"),
    (["bench", "--methods", "bc"], "physgen bench needs --task (or an experiment file: --config FILE.toml)"),
    (["bench", "--config", "experiments/hopper_chunking.toml", "--task", "fork", "--seeds", "2"],
     "--task, --seeds given with --config; put them in experiments/hopper_chunking.toml, or leave out --config"),
    (["bench", "--config", "no/such.toml"], "cannot read the experiment file no/such.toml (No such file or directory)"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("physgen: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("text, message", [
    ('task = "fork"\nseeds = "ten"\n', "wrong types: seeds (a int)"),
    ('task = "fork"\nepisode = 3\n', "unknown keys episode; an experiment file has task and optionally"),
    ('budget = "smoke"\n', ": no task;"),
    ('task = "fork"\n[vary]\nexec_steps = []\n', "every [vary] entry takes a non-empty array of values"),
    ('task = "fork\n', "is not valid TOML"),
])
def test_a_bad_experiment_file_is_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "experiment.toml"
    path.write_text(text)
    assert main(["bench", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_experiment_file_reads_as_the_flags_would(tmp_path):
    from physgen.bench.experiments import experiment_toml, read_experiment

    path = tmp_path / "experiment.toml"
    path.write_text('task = "fork"\nmethods = ["bc"]\n[set]\nrssm.steps = 60\nunet_dims = [16, 32]\n'
                    '[vary]\nensemble = ["null", 0.1]\nlearning_rate = [1e-3, 0.0003]\n')
    experiment = read_experiment(path)
    assert experiment == {"task_name": "fork", "methods": ["bc"], "seeds": None, "episodes": None, "budget": "quick",
                          "dataset": "expert-v0", "overrides": {"rssm.steps": "60", "unet_dims": "[16,32]"},
                          "variants": {"ensemble": ["null", "0.1"], "learning_rate": ["0.001", "0.0003"]}}
    protocol = {"task": "fork", "budget": "quick", "methods": ["bc"], "training_seeds": [0, 1], "episodes": 4,
                "dataset": {"id": "physgen/fork/expert-v0"}, "overrides": experiment["overrides"],
                "variants": experiment["variants"]}
    path.write_text(experiment_toml(protocol))
    assert read_experiment(path) == {**experiment, "seeds": 2, "episodes": 4, "dataset": "physgen/fork/expert-v0"}


def test_argument_errors_exit_with_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data"])
    assert exit_info.value.code == 2


def test_world_models_train_from_the_command_line(tmp_path, capsys):
    assert main(["data", "--task", "fork", "--policy", "noisy", "--episodes", "12", "--seed", "5"]) == 0
    assert capsys.readouterr().out.startswith("wrote physgen/fork/noisy-v0: 12 episodes")
    assert main(["train", "--task", "fork", "--method", "rssm", "--steps", "2", "--dataset", "noisy-v0",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "rssm on fork (noisy-v0): 2 steps x 1 seeds" in out and "open-loop RMSE" in out
    assert (tmp_path / "fork" / "rssm" / "seed_0").is_dir()
    assert main(["train", "--task", "fork", "--method", "vae", "--steps", "20", "--dataset", "noisy-v0",
                 "--out", str(tmp_path)]) == 0
    assert "held-out reconstruction RMSE per seed" in capsys.readouterr().out


SMOKE_BENCH = ["--budget", "smoke", "--methods", "bc", "--seeds", "1", "--episodes", "1"]


@pytest.mark.parametrize("argv, message", [
    (["data", "--task", "fork", "--seed", "-1"], "--seed must be at least 0, got -1"),
    (["train", "--task", "fork", "--method", "bc", "--eval-seed", "-1"], "--eval-seed must be at least 0, got -1"),
    (["train", "--task", "fork", "--method", "bc", "--out", "{file}"],
     "--out {file}/fork/bc is not a folder ({file} is a file)"),
    (["train", "--task", "fork", "--method", "ppo", "--out", "{file}"], "--out {file}/fork/ppo is not a folder"),
    (["bench", "--task", "fork", *SMOKE_BENCH, "--out", "{file}"], "--out {file} is not a folder ({file} is a file)"),
    (["bench", "--task", "fork", *SMOKE_BENCH, "--out", "{file}/run"], "--out {file}/run is not a folder"),
    (["video", "--task", "fork", "--checkpoint", "nowhere", "--out", "{file}"], "--out {file} is not a folder"),
    (["sweep-steps", "--checkpoint", "nowhere", "--out", "{file}"], "--out {file} is not a folder"),
    (["sweep-delay", "--checkpoint", "nowhere", "--out", "{file}"], "--out {file} is not a folder"),
    (["sweep-delay", "--checkpoint", "nowhere", "--delays", "0,two"], "--delays takes comma-separated integers"),
    (["train", "--task", "fork", "--method", "ppo", "--devices", "2"], "--devices 2: JAX finds 1 cpu device(s)"),
    (["train", "--task", "fork", "--method", "bc", "--devices", "x"], "--devices takes a number or 'all', got 'x'"),
    (["export", "--checkpoint", "nowhere", "--out", "{file}/policy.jaxexport"], "--out {file} is not a folder"),
    (["train", "--task", "fork", "--method", "bc", "--dataset", "expert-v0,noisy-v0"],
     "--dataset takes one dataset for bc, got 'expert-v0,noisy-v0'; only the world models (rssm, vae)"),
    (["bench", "--task", "hopper", "--obs", "image"], "task 'hopper' has no image variant; the tasks seen through a"),
    (["bench", "--task", "fork", "--obs", "image", "--methods", "bc,ppo"],
     "ppo cannot learn from the camera frames task 'fork-image' observes; choose from diffusion, flow, bc"),
])
def test_bad_seeds_and_paths_are_refused_in_one_line_before_any_work(tmp_path, capsys, argv, message):
    taken = tmp_path / "taken"
    taken.write_text("a file where a folder is expected")
    assert main([arg.replace("{file}", str(taken)) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("physgen: error: ") and message.replace("{file}", str(taken)) in err
    assert err.count("\n") == 1 and "--policy" not in err


def test_a_read_only_out_folder_is_refused(tmp_path, monkeypatch, capsys):
    # Tests may run as root, whom file modes do not stop: the folder is made read-only in os.access's answer.
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != tmp_path and access(path, mode, **kw))
    assert main(["bench", "--task", "fork", *SMOKE_BENCH, "--out", str(tmp_path / "run")]) == 2
    assert f"--out {tmp_path / 'run'} cannot be written ({tmp_path} is read-only)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_datasets_path_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    taken = tmp_path / "datasets"
    taken.write_text("")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(taken))
    for argv in (["data", "--task", "fork", "--episodes", "1"], ["train", "--task", "fork", "--method", "bc"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"MINARI_DATASETS_PATH {taken} is not a folder" in err and err.count("\n") == 1


def test_set_changes_the_methods_configs_and_is_recorded(tmp_path, capsys):
    from physgen.bench.protocol import make_rows
    from physgen.bench.registry import bench_command, get_methods
    from physgen.envs import get_task

    task, methods = get_task("fork"), get_methods(["diffusion", "bc", "ppo", "rssm-mpc"])
    rows = make_rows(task, methods, "smoke", {"exec_steps": "4", "hidden": "32", "rssm.steps": "60",
                                              "mpc.horizon": "5", "unet_dims": "16,32"}, {})
    hyper = {row: spec["hyperparameters"] for row, spec in rows.items()}
    assert [hyper[m]["exec_steps"] for m in ("diffusion", "bc")] == [4, 4]
    assert hyper["diffusion"]["unet_dims"] == (16, 32) and hyper["diffusion"]["steps_per_call"] == 25
    assert hyper["rssm-mpc"]["rssm"]["hidden"] == 32 and hyper["rssm-mpc"]["rssm"]["steps"] == 60
    assert hyper["rssm-mpc"]["rssm"]["steps_per_call"] == 15  # the budget's 4 curve points kept
    assert hyper["rssm-mpc"]["mpc"]["horizon"] == 5
    assert hyper["ppo"]["hidden"] == (32,)  # every method's field of that name: PPO's layers too
    with pytest.raises(PhysgenError, match="rssm-mpc: rssm.hidden=x: rssm.hidden takes int values such as 64"):
        make_rows(task, methods, "smoke", {"rssm.hidden": "x"}, {})
    experiment = {"budget": "smoke", "methods": ["bc"], "training_seeds": [0, 1], "episodes": 4,
                  "dataset": {"id": "physgen/fork/expert-v0"}, "overrides": {"exec_steps": "4"}}
    assert bench_command(task, experiment) == ("physgen bench --task fork --budget smoke --methods bc "
                                                "--set exec_steps=4")
    mine = {**experiment, "dataset": {"id": "me/fork-walks-v0"}}
    assert bench_command(task, mine) == ("physgen bench --task fork --budget smoke --methods bc "
                                         "--dataset me/fork-walks-v0 --set exec_steps=4")
    experiment["variants"] = {"hidden": ["16", "32"], "ensemble": ["null", "0.1"]}
    assert bench_command(task, experiment).endswith("--set exec_steps=4 --vary hidden=16,32 --vary ensemble=null,0.1")
    assert main(["data", "--task", "fork", "--episodes", "10"]) == 0
    assert main(["train", "--task", "fork", "--method", "bc", "--set", "steps=3,hidden=8,batch_size=4,exec_steps=2",
                 "--episodes", "1", "--out", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "fork" / "bc" / "seed_0" / "meta" / "metadata").read_text())["config"]
    assert (config["steps"], config["hidden"], config["batch_size"], config["exec_steps"]) == (3, 8, 4, 2)
