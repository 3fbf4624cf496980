import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_docs_are_up_to_date():
    check = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr


def test_the_main_job_tables_are_the_ones_generated_from_the_committed_results():
    generate = _generator()
    readme, results_page = (ROOT / "README.md").read_text(), (ROOT / "docs" / "results.md").read_text()
    results = json.loads(generate.MAIN_JOB.read_text())
    assert generate.render(readme, results) == readme
    assert f"`{results['run']['command']}`" in results_page
    for method, summary in results["summary"].items():
        mean = summary["success_mean"]
        row = f"| {method} | {mean['estimate']:.2f} [{mean['low']:.2f}, {mean['high']:.2f}] |"
        assert row in readme and row in results_page


def test_the_frontier_gives_each_curve_point_its_share_of_the_training_time():
    generate = _generator()
    point = {"estimate": 0.5, "low": 0.4, "high": 0.6}
    curve = [{"step": s, "episodes": 2, **point, "normalized_return": point} for s in (250, 1000)]
    results = {"curves": {"flow": curve, "ppo": [{**curve[0], "normalized_return": None}]},
               "run": {"seconds_per_phase": {"flow": {"training": 120.0, "evaluation": 9.0}}}}
    points = generate.frontier(results)
    assert list(points) == ["flow"]  # a row without normalised returns has no place on the frontier
    assert [p["seconds"] for p in points["flow"]] == [30.0, 120.0]


def test_the_docs_front_page_is_the_readme_with_links_relative_to_docs():
    generate = _generator()
    readme = "See [results](docs/results.md) and ![figure](docs/images/a.png); keep [x](https://a.org/docs/b)."
    assert generate.index_page(readme) == ("See [results](results.md) and ![figure](images/a.png); "
                                           "keep [x](https://a.org/docs/b).")


def test_the_readme_starts_with_the_two_commands_and_stays_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[6].endswith("pip install -e . && physgen bench --task hopper")
    assert lines[7].endswith("pip install -e '.[test]' && python -m pytest -q")
    assert len(lines) < 200


def test_the_docs_build_without_warnings(tmp_path):
    # CI builds the documentation here: --strict turns every warning (a broken link, a page missing from the nav,
    # a docstring mkdocstrings cannot read) into a failure
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (the test extra includes it)")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "site" / "api" / "policies" / "index.html").exists()

