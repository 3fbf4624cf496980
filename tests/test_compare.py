import json
import re
import shutil

import pytest

from physgen.bench import run_bench
from physgen.bench.compare import compare_runs
from physgen.bench.units import unit_path
from physgen.cli import main
from physgen.data import generate_dataset
from physgen.envs import get_task
from physgen.envs.rollout import episode_seeds
from physgen.errors import PhysgenError
from physgen.seeds import EVALUATION

SMOKE = dict(seeds=2, episodes=3, budget="smoke", progress=False, videos=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished runs of `diffusion,bc`, of `bc` and of `diffusion` alone, on the same dataset."""
    root = tmp_path_factory.mktemp("compare")
    patch = pytest.MonkeyPatch()
    patch.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
    generate_dataset(get_task("fork"), episodes=200, seed=0)
    folders = {name: run_bench("fork", methods=methods, out=root / "runs" / name, **SMOKE)
               for name, methods in (("both", ["diffusion", "bc"]), ("bc", ["bc"]), ("diffusion", ["diffusion"]))}
    yield folders
    patch.undo()


def read(folder, name="results.json"):
    return json.loads((folder / name).read_text())


def edited_copy(source, target, **changes):
    """A copy of a finished run whose protocol's experiment has `changes`."""
    shutil.copytree(source, target)
    protocol = read(target, "protocol.json")
    protocol["experiment"].update(changes)
    (target / "protocol.json").write_text(json.dumps(protocol))
    return target


def test_runs_of_one_method_each_compare_as_one_run_of_both(runs, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs["bc"]), str(runs["diffusion"]), "--out", str(out)]) == 0
    together, compared = read(runs["both"])["summary"], read(out)["summary"]
    assert list(compared) == ["bc", "diffusion"]
    for row in ("bc", "diffusion"):  # each method trains as its own group: the same numbers
        assert compared[row] == together[row]
    assert "bc" in compared["diffusion"]["improvement_over"]
    protocol = read(out, "protocol.json")
    assert [r["folder"] for r in protocol["compared_runs"]] == [str(runs["bc"]), str(runs["diffusion"])]
    assert protocol["experiment"]["methods"] == ["bc", "diffusion"]
    command = read(out)["run"]["command"]  # with the bench commands that reproduce the runs
    assert command.startswith(f"physgen compare {runs['bc']} {runs['diffusion']}, the runs of: physgen bench --task fork")
    assert command.count("physgen bench") == 2
    report = (out / "report.md").read_text()
    assert report.startswith("# physgen compare: fork") and f"`{runs['diffusion']}` (commit " in report
    assert (out / "success.png").stat().st_size > 0 and not (out / "videos").exists()


def test_clashing_rows_are_named_after_their_runs_folder_or_its_last_parts(runs, tmp_path):
    out = compare_runs([runs["both"], runs["bc"]], tmp_path / "cmp")
    summary = read(out)["summary"]
    assert list(summary) == ["diffusion", "bc@both", "bc@bc"]
    assert summary["bc@both"] == summary["bc@bc"]  # bc trains alone in both runs: the same numbers
    assert set(summary["diffusion"]["improvement_over"]) == {"bc@both", "bc@bc"}
    copy = shutil.copytree(runs["bc"], tmp_path / "other" / "bc")
    summary = read(compare_runs([runs["bc"], copy], tmp_path / "cmp"))["summary"]  # a comparison is rewritten
    assert list(summary) == ["bc@runs/bc", "bc@other/bc"]


@pytest.mark.parametrize("changes, message", [
    ({"task": "maze"}, "task differs (fork and maze)"),
    ({"episodes": 4, "evaluation_seeds": episode_seeds(EVALUATION, 4).tolist()}, "episodes differs (3 and 4)"),
    ({"training_seeds": [0]}, "training_seeds differs ([0, 1] and [0])"),
    ({"dataset": {"id": "physgen/fork/expert-v0", "episodes": 100}}, "dataset.episodes differs (200 and 100)"),
])
def test_runs_on_other_episodes_seeds_or_tasks_are_refused_before_writing(runs, tmp_path, changes, message):
    other = edited_copy(runs["diffusion"], tmp_path / "other", **changes)
    with pytest.raises(PhysgenError, match="cannot compare .*" + re.escape(message)):
        compare_runs([runs["bc"], other], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_unfinished_repeated_and_misdirected_comparisons_are_refused_before_writing(runs, tmp_path):
    unfinished = shutil.copytree(runs["diffusion"], tmp_path / "unfinished")
    unit_path(unfinished, "diffusion", 1).with_suffix(".npz").unlink()
    rerun = (r"unfinished \(no units of diffusion\); rerun `physgen bench --task fork --budget smoke --methods "
             f"diffusion --episodes 3 --out {re.escape(str(unfinished))}` to finish it")
    comparison = compare_runs([runs["bc"], runs["diffusion"]], tmp_path / "comparison")
    refusals = [([runs["bc"], unfinished], tmp_path / "cmp", rerun),
                ([runs["bc"], tmp_path], tmp_path / "cmp", "not a physgen bench run"),
                ([runs["bc"], comparison], tmp_path / "cmp", "is a comparison, not a bench run"),
                ([runs["bc"], str(runs["bc"]) + "/"], tmp_path / "cmp", "given more than once"),
                ([runs["bc"]], tmp_path / "cmp", "at least two"),
                ([runs["bc"], runs["diffusion"]], runs["both"], "holds a physgen bench run"),
                ([runs["bc"], runs["diffusion"]], tmp_path, "holds other files")]
    before = {path: path.stat().st_mtime_ns for path in runs["both"].rglob("*")}
    for folders, out, message in refusals:
        with pytest.raises(PhysgenError, match=message):
            compare_runs(folders, out)
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "protocol.json").exists()
    assert {path: path.stat().st_mtime_ns for path in runs["both"].rglob("*")} == before
