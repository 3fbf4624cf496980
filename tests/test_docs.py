import importlib.util
import json
import subprocess
import sys
from pathlib import Path

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


def test_the_readme_main_job_table_is_the_one_generated_from_the_committed_results():
    generate = _generator()
    readme = (ROOT / "README.md").read_text()
    results = json.loads(generate.MAIN_JOB.read_text())
    assert generate.render(readme, results) == readme
    for method, summary in results["summary"].items():
        mean = summary["success_mean"]
        assert f"| {method} | {mean['estimate']:.2f} [{mean['low']:.2f}, {mean['high']:.2f}] |" in readme
