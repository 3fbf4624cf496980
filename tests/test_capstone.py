"""docs/capstone.md, run: every command of its bash blocks in order at smoke size on fork, the files it names, and
the writeup.md of its runs checked against their results.json."""

import contextlib
import io
import json
import re
import shlex
import time
from pathlib import Path

import pytest

from physgen.bench.report import TRUSTED_COVERAGE
from physgen.bench.writeup import write_writeup
from physgen.cli import main
from physgen.errors import PhysgenError

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "capstone.md"
VARIABLES = {"TASK": "fork"}  # the guide's task variable, set to the fastest task whatever the guide picks
# smoke sizes, per sub-command: each flag replaced where the guide gives it, added where it does not
SMOKE = {"data": {"--episodes": "200"}, "train": {"--seeds": "2", "--steps": "20", "--episodes": "2"},
         "bench": {"--budget": "smoke", "--seeds": "2", "--episodes": "2"}, "video": {"--episodes": "2"}}
# and the online methods made cheaper where a bench runs them (`--set`, as a user would shrink them): the test checks
# that the commands run, not what these learn
SMOKE_SET = {"ppo": "epochs=2", "rssm-mpc": "population=16,elites=4,iterations=1"}
SECTIONS = ["## Setup", "## Protocol", "## Results", "## Ablations", "## Failure analysis", "## Limitations"]


def guide_lines(text: str) -> list[str]:
    """The command lines of the guide's bash blocks, its variables expanded; any other line is refused, so that
    nothing in a block goes unrun."""
    lines, assigned = [], set()
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if len(words) == 1 and re.fullmatch(r"[A-Z_]+=\S+", words[0]):
                assigned.add(words[0].split("=")[0])
                continue
            assert words[0] == "physgen", f"a line of a bash block this test cannot run: {line!r}"
            lines.append(expand(line))
    assert assigned == set(VARIABLES), f"the guide assigns {assigned}, the test sets {set(VARIABLES)}"
    return lines


def expand(text: str) -> str:
    for name, value in VARIABLES.items():
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return text


def smoke(argv: list[str]) -> list[str]:
    argv = list(argv)
    for flag, value in SMOKE.get(argv[0], {}).items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    if argv[0] == "bench" and "--methods" in argv:
        settings = [SMOKE_SET[m] for m in argv[argv.index("--methods") + 1].split(",") if m in SMOKE_SET]
        assert "--set" not in argv, "the guide sets fields itself: merge them with SMOKE_SET"
        argv += ["--set", ",".join(settings)] if settings else []
    return argv


@pytest.fixture(scope="module")
def guide_run(tmp_path_factory):
    """Run the guide's commands in a fresh folder with its own datasets: (folder, [(line, argv, exit code,
    output, run folder or None)])."""
    folder = tmp_path_factory.mktemp("capstone")
    patch = pytest.MonkeyPatch()
    patch.setenv("MINARI_DATASETS_PATH", str(folder / "datasets"))
    patch.chdir(folder)
    steps = []
    try:
        for line in guide_lines(GUIDE.read_text()):
            argv = smoke(shlex.split(line, comments=True)[1:])
            output, started = io.StringIO(), time.perf_counter()
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                code = main(argv)
            report = re.search(r"^report: (.+)/report\.md$", output.getvalue(), re.MULTILINE)
            out = Path(report.group(1)) if report and code == 0 else None
            steps.append((line, argv, code, output.getvalue(), out))
            print(f"{time.perf_counter() - started:5.1f} s  {' '.join(argv)}")
    finally:
        patch.undo()
    return folder, steps


def test_every_command_of_the_guide_runs_at_smoke_size(guide_run):
    _, steps = guide_run
    for line, argv, code, output, _ in steps:
        assert code == 0, f"`{line}` (run as physgen {' '.join(argv)}) exited {code}:\n{output[-2000:]}"
    # the study the issue asks for: dataset, diffusion, a world model, the comparison with BC and PPO over 10+
    # seeds, an ablation, failure videos, a later method compared, a plan
    lines = [line for line, *_ in steps]
    assert {shlex.split(line)[1] for line in lines} >= {"tasks", "data", "train", "bench", "video", "compare", "plan"}
    benches = [shlex.split(line) for line in lines if line.startswith("physgen bench")]
    comparison = next(words for words in benches if "--vary" not in words)
    methods = comparison[comparison.index("--methods") + 1].split(",")
    assert {"diffusion", "bc", "ppo"} <= set(methods) and {"rssm-mpc", "ppo-wm"} & set(methods)
    assert any(line.startswith("physgen train") and "rssm" in line.split() for line in lines)
    assert int(comparison[comparison.index("--seeds") + 1]) >= 10
    assert any("--vary" in words for words in benches)


def test_the_files_the_guide_names_appear(guide_run):
    folder, _ = guide_run
    named = sorted({expand(path) for path in re.findall(r"`(runs/[^`\s]+)`", GUIDE.read_text())})
    assert any(path.endswith("/writeup.md") for path in named) and len(named) >= 8
    for path in named:
        pattern = re.sub(r"<[^>]+>", "*", path).rstrip("/")  # `videos/<row>/`: any row
        assert list(folder.glob(pattern)), f"the guide names {path}, which its commands did not write"


def run_folders(steps) -> dict[str, Path]:
    """The folders the guide's bench and compare commands wrote, by kind: comparison, ablation, compare."""
    folders = {}
    for line, _, _, _, out in steps:
        if out is not None:
            kind = "compare" if " compare " in f" {line} " else "ablation" if "--vary" in line else "comparison"
            folders.setdefault(kind, out)
    return folders


def interval(value: dict, digits: int = 2) -> str:
    return f"{value['estimate']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def test_the_writeup_quotes_results_and_links_what_exists(guide_run):
    folders = run_folders(guide_run[1])
    assert set(folders) == {"comparison", "ablation", "compare"}
    for kind, out in folders.items():
        text = (out / "writeup.md").read_text()
        assert [line for line in text.splitlines() if line in SECTIONS] == SECTIONS
        assert text.count("> TODO:") >= len(SECTIONS)
        results = json.loads((out / "results.json").read_text())
        for row, s in results["summary"].items():
            normalized = interval(s["normalized_return"]) if s["normalized_return"] else "n/a"
            success = interval(s["success_mean"]) + (" (approximate)" if s["coverage"] < TRUSTED_COVERAGE else "")
            assert f"| {row} | {success} | {normalized} | {interval(s['return'], 1)} |" in text
            for base, v in s.get("improvement_over", {}).items():
                assert f"| {row} | {base} | {interval(v['difference'])} | {interval(v['probability'])} |" in text
        prose = re.sub(r"`[^`]*`", "", text)  # links, not code spans; a row's folder holds balanced parentheses
        links = re.findall(r"\]\(((?:[^()\s]|\([^()\s]*\))+)\)", prose)
        assert all((out / link).is_file() for link in links), [link for link in links if not (out / link).is_file()]
        figures = [link for link in links if link.endswith(".png")]
        assert "success.png" in figures and "failures.png" in figures
        if kind == "comparison":
            videos = [link for link in links if link.startswith("videos/")]
            rendered = [p.relative_to(out).as_posix() for p in (out / "videos").rglob("*") if p.is_file()]
            assert sorted(videos) == sorted(rendered)
            assert "### World model" in text and any(link.endswith("open_loop.png") for link in figures)
        if kind == "ablation":
            (field, series), = results["ablations"].items()
            assert f"ablation_{field}.png" in figures
            for point in series[0]["points"][1:]:
                assert f"| {point['row']} | {interval(point['success'])} |" in text
                assert f"| {interval(point['success_difference'])} |" in text


def test_the_writeup_is_the_same_when_written_again(guide_run):
    out = run_folders(guide_run[1])["comparison"]
    first = (out / "writeup.md").read_text()
    assert write_writeup(out).read_text() == first


def test_a_folder_without_a_finished_run_is_refused(tmp_path):
    (tmp_path / "protocol.json").write_text("{}")
    with pytest.raises(PhysgenError, match="no readable results.json in .*finished physgen bench"):
        write_writeup(tmp_path)
    assert not (tmp_path / "writeup.md").exists()
