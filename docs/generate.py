"""Write the README's main-job table and `docs/train_throughput.md` from result files copied to `docs/results/`,
so that the figures a user reads are the ones a run printed, never typed by hand.

    cp runs/bench/hopper/results.json docs/results/hopper-quick.json
    python benchmarks/train_throughput.py --baseline DIR --json docs/results/train-throughput-batch128.json
    python docs/generate.py            # rewrite the generated files
    python docs/generate.py --check    # exit 1 when a generated file differs from what it would write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = ROOT / "docs" / "results" / "hopper-quick.json"
BEGIN = "<!-- main-job table: written by docs/generate.py from docs/results/hopper-quick.json -->"
END = "<!-- end of main-job table -->"
THROUGHPUT = ROOT / "docs" / "train_throughput.md"


def _interval(summary: dict) -> str:
    return f"{summary['estimate']:.2f} [{summary['low']:.2f}, {summary['high']:.2f}]"


def main_job_table(results: dict) -> str:
    run = results["run"]
    lines = [f"`{run['command']}` ({run['budget']} budget: {run['seeds']} seeds x {run['episodes']} evaluation "
             f"episodes; dataset, training and evaluation {run['minutes']:.1f} minutes, peak memory "
             f"{run['peak_memory_gib']:.2f} GiB, on {run['machine']}, from an empty dataset folder). Means over seeds with 95% bootstrap intervals:", "",
             "| method | success | normalised return | return |", "|---|---|---|---|"]
    for method, s in results["summary"].items():
        normalized = _interval(s["normalized_return"]) if s["normalized_return"] else "n/a"
        ret = s["return"]
        lines.append(f"| {method} | {_interval(s['success_mean'])} | {normalized} | "
                     f"{ret['estimate']:.0f} [{ret['low']:.0f}, {ret['high']:.0f}] |")
    return "\n".join([BEGIN, *lines, END])


def throughput_page() -> str:
    lines = ["# Training throughput", "", "Written by `docs/generate.py` from `docs/results/train-throughput-*.json`, "
             "which `python benchmarks/train_throughput.py --baseline DIR --batch B --json FILE` printed (DIR: a "
             "checkout of the code before this version's changes). Seed-steps/s: gradient steps per second summed "
             "over seeds; peak: a 2048^3 float32 matmul measured in the same run; PyTorch: the same MLP and loss in "
             "eager mode, one model.", ""]
    for path in sorted((ROOT / "docs" / "results").glob("train-throughput-*.json")):
        rows = json.loads(path.read_text())
        lines += [f"## {path.stem}", "", f"Peak {rows[0]['peak_gflops']:.0f} GFLOP/s.", "",
                  "| method | seeds | seed-steps/s | MFLOP/step | GFLOP/s | % of peak | earlier code | speed-up | "
                  "PyTorch steps/s | physgen / PyTorch |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            base = r.get("baseline_seed_steps_per_s")
            torch = r.get("pytorch_steps_per_s")
            lines.append(f"| {r['method']} | {r['seeds']} | {r['seed_steps_per_s']:.0f} | {r['mflop_per_step']:.0f} | "
                         f"{r['gflops']:.0f} | {100 * r['gflops'] / r['peak_gflops']:.0f}% | "
                         + (f"{base:.0f} | {r['seed_steps_per_s'] / base:.2f}x | " if base else "| | ")
                         + (f"{torch:.0f} | {r['seed_steps_per_s'] / torch:.1f}x |" if torch else "| |"))
        lines.append("")
    return "\n".join(lines)


def render(readme: str, results: dict) -> str:
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + main_job_table(results) + readme[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    pages = {readme: render(readme.read_text(), json.loads(MAIN_JOB.read_text())), THROUGHPUT: throughput_page()}
    stale = [path for path, text in pages.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.name} is out of date: run python docs/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(pages[path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
