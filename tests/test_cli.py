import pytest

from physgen.cli import main


def test_tasks_lists_every_task_with_its_facts(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for fact in ("fork:", "maze:", "hopper:", "50 Hz, horizon 100", "125 Hz, horizon 1000", "events: collision",
                 "success: no fall for all 1000 steps", "gymnasium id: physgen/Maze-v0",
                 "recipe: chunks: T_o 2, T_p 4, T_a 1", "quick 16,000 steps, batch 128, width 256",
                 "diffusion: sample prediction (epsilon on full)", "recipe: chunks: T_o 2, T_p 16, T_a 8"):
        assert fact in out


def test_data_writes_a_dataset_and_reports_it(capsys):
    assert main(["data", "--task", "maze", "--episodes", "3", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote physgen/maze/expert-v0: 3 episodes") and "ref_max_score" in out


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
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("physgen: error: ") and message in err and err.count("\n") == 1


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
