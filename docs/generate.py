"""Write the README's main-job table and `docs/train_throughput.md` from result files copied to `docs/results/`,
so that the figures a user reads are the ones a run printed, never typed by hand.

    cp runs/bench/hopper/results.json docs/results/hopper-quick.json
    python benchmarks/train_throughput.py --baseline DIR --json docs/results/train-throughput-batch128.json
    python benchmarks/coverage.py --json docs/results/coverage.json
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
INTERVALS = ROOT / "docs" / "intervals.md"
COVERAGE = ROOT / "docs" / "results" / "coverage.json"


def _interval(summary: dict) -> str:
    return f"{summary['estimate']:.2f} [{summary['low']:.2f}, {summary['high']:.2f}]"


def main_job_table(results: dict) -> str:
    run = results["run"]
    lines = [f"`{run['command']}` ({run['budget']} budget: {run['seeds']} seeds x {run['episodes']} evaluation "
             f"episodes; dataset, training and evaluation {run['minutes']:.1f} minutes, peak memory "
             f"{run['peak_memory_gib']:.2f} GiB, on {run['machine']}, from an empty dataset folder). Means over seeds with 95% "
             "intervals over seeds ([docs/intervals.md](docs/intervals.md)):", "",
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


def intervals_page(rows: list[dict]) -> str:
    lines = ["# Intervals", "", "Written by `docs/generate.py` from `docs/results/coverage.json`, which "
             "`python benchmarks/coverage.py` printed. Every interval in a `physgen bench` report is over training "
             "seeds: a new seed is what a user of the method gets, and seeds differ more than episodes of one seed do.",
             "", "- Success, failure-category and curve rates: Clopper-Pearson at Korn and Graubard's effective sample "
             "size. All episodes count, shrunk by the design effect that the seeds' spread implies, and again for "
             "estimating that spread from a few seeds (t quantile). When every seed scores the same (near 0 or 1 with "
             "few episodes) the interval is that of the episodes alone, never a point.",
             "- Returns and normalised returns: the rates' interval on the returns rescaled to [0, 1] by the run's "
             "smallest and largest. A few seeds that fail far below the rest make the mean's distribution skewed; "
             "the t-interval over the seeds' means used before ignored that and covered 0.91-0.93 there (returns "
             "(t) column), the beta shape of the rates' interval follows it (returns column).",
             "- Difference between two methods: both meet the same evaluation episodes, so the difference carries no "
             "luck of easier episodes; its interval is Newcombe's square-and-add of the two rate intervals.",
             "- P(improvement), the chance that a seed of one method beats a seed of the other: Newcombe's score "
             "interval with the Hanley-McNeil variance. It measured as well as the difference in the coverage test "
             "(tests/test_stats.py, 5 or more seeds).",
             "- Dropped: the percentile bootstrap (under-covers with 5-10 seeds), the pooled Wilson interval (treats "
             "the episodes of all seeds as independent) and the IQM (its bootstrap interval under-covered as well, "
             "and over one task it trims away the seeds that fail).", "",
             "Coverage: the share of simulated runs whose 95% interval held the true mean success. Each seed's "
             "success rate is drawn from a Beta around the rate with the given spread, the standard deviation of "
             "the seeds' success on the log-odds scale (0.3: seeds alike; 1.2: as far apart as hopper's BC seeds), "
             "then its episodes are Bernoulli. Report: the interval the report prints; the returns column scores "
             "successes 0.9-1.1 and failures 0-0.6. Each report checks its own intervals the same way at its seeds, "
             "episodes and estimated spread, and calls one approximate below 0.94; with a spread well beyond 1.2 "
             "(a rare seed that fails outright) a few seeds cannot see what the mean hides, and no interval from "
             "them covers. `physgen plan` uses the same simulation for how many seeds and episodes a comparison "
             "needs.", "",
             "| spread | seeds | episodes | rate | runs | report | pooled Wilson | percentile bootstrap | returns | "
             "returns (t) |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['spread']} | {r['seeds']} | {r['episodes']} | {r['rate']} | {r['runs']:,} | {r['report']:.3f} | "
              f"{r['pooled_wilson']:.3f} | {r['percentile_bootstrap']:.3f} | {r['returns']:.3f} | "
              f"{r['returns_t']:.3f} |" for r in rows]
    lines.append("\nThe bootstrap column uses a tenth of the runs.")
    return "\n".join(lines) + "\n"


def render(readme: str, results: dict) -> str:
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + main_job_table(results) + readme[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    pages = {readme: render(readme.read_text(), json.loads(MAIN_JOB.read_text())), THROUGHPUT: throughput_page(),
             INTERVALS: intervals_page(json.loads(COVERAGE.read_text()))}
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
