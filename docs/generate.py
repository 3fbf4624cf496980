"""Write the measured figures a user reads from result files copied to `docs/results/`, never typed by hand:
the README's main-job table, `docs/results.md`, `docs/train_throughput.md`, the coverage table of
`docs/intervals.md`, `docs/index.md` (the README as the documentation's front page, links made relative to
`docs/`), and the main job's return against training time, `docs/images/hopper-frontier.png` (`--check` compares
the text files only).

    cp runs/bench/hopper/results.json docs/results/hopper-quick.json
    python benchmarks/train_throughput.py --baseline DIR --batch 128 --json docs/results/train-throughput-batch128.json
    python benchmarks/coverage.py --json docs/results/coverage.json
    cp RUN/results.json docs/results/task-NAME.json                  # a bench run on another task or budget
    cp RUN/results.json docs/results/deployment-NAME.json            # a bench run of deployment settings
    cp SWEEP/sweep-delay.json docs/results/sweep-delay-TASK.json     # a physgen sweep-delay,
    cp SWEEP/sweep-delay.png docs/images/sweep-delay-TASK.png        # and its figure
    cp RUN/results.json docs/results/world-models-NAME.json          # a bench (or compare) run of ppo, ppo-wm,
    cp RUN/sample_efficiency.png docs/images/world-models-NAME.png   # rssm-mpc, and its figure
    python docs/generate.py            # rewrite the generated files
    python docs/generate.py --check    # exit 1 when a generated file differs from what it would write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from matplotlib.figure import Figure  # drawn without pyplot: no backend is chosen or changed

from physgen.io import write_figure, write_text
from physgen.stats import interval_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
MAIN_JOB = RESULTS / "hopper-quick.json"
COVERAGE = RESULTS / "coverage.json"
README = ROOT / "README.md"
INDEX = ROOT / "docs" / "index.md"
RESULTS_PAGE = ROOT / "docs" / "results.md"
THROUGHPUT = ROOT / "docs" / "train_throughput.md"
INTERVALS = ROOT / "docs" / "intervals.md"
FRONTIER_FIGURE = ROOT / "docs" / "images" / "hopper-frontier.png"
BAR_MINUTES, BAR_RETURN = 15, 0.85  # the main job's bar: this long, this normalised return for diffusion and flow
BEGIN = "<!-- main-job table: written by docs/generate.py from docs/results/hopper-quick.json -->"
END = "<!-- end of main-job table -->"
GENERATED = "<!-- written by docs/generate.py from docs/results/*.json: edit the generator, not this page -->"
# the interval columns of benchmarks/coverage.py's rows, in the order intervals.md introduces them
COVERAGE_COLUMNS = {"report": "the report's rate interval", "returns": "the report's return interval",
                    "returns_t": "t-interval over the seeds' mean returns", "pooled_wilson": "pooled Wilson",
                    "percentile_bootstrap": "percentile bootstrap"}


def _run_line(run: dict) -> str:
    return (f"`{run['command']}` ({run['budget']} budget: {run['seeds']} seeds x {run['episodes']} evaluation "
            f"episodes; dataset, training and evaluation {run['minutes']:.1f} minutes, peak memory "
            f"{run['peak_memory_gib']:.2f} GiB, on {run['machine']}, from an empty dataset folder)")


def main_job_table(results: dict) -> str:
    """The README's short table: success and normalised return per method, with the run that measured them."""
    lines = [_run_line(results["run"]) + ". Means over seeds with 95% intervals over seeds; more in "
             "[the results page](docs/results.md):", "", "| method | success | normalised return |", "|---|---|---|"]
    for method, s in results["summary"].items():
        normalized = interval_text(s["normalized_return"]) if s["normalized_return"] else "n/a"
        lines.append(f"| {method} | {interval_text(s['success_mean'])} | {normalized} |")
    return "\n".join([BEGIN, *lines, END])


def render(readme: str, results: dict) -> str:
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + main_job_table(results) + readme[end:]


def index_page(readme: str) -> str:
    """The README as the site's front page: its links into `docs/` made relative to `docs/`."""
    return readme.replace("](docs/", "](")


def _main_job_section(results: dict) -> list[str]:
    run, summary = results["run"], results["summary"]
    lines = ["## The main job", "", f"{_run_line(run)}, devices {', '.join(run['devices'])}. Reproduce it with "
             f"`{run['command']}`; the figures below come from its `results.json`, copied to "
             "`docs/results/hopper-quick.json`. Means over seeds with 95% intervals over seeds "
             "([how they are computed](intervals.md)).", "",
             "| method | success | normalised return | return | success per seed |", "|---|---|---|---|---|"]
    for method, s in summary.items():
        normalized = interval_text(s["normalized_return"]) if s["normalized_return"] else "n/a"
        lines.append(f"| {method} | {interval_text(s['success_mean'])} | {normalized} | "
                     f"{interval_text(s['return'], 0)} | {' '.join(f'{x:.1f}' for x in s['per_seed_success'])} |")
    lines += ["", "Generative methods against each baseline, on the same evaluation episodes: the difference in "
              "success and the probability that a seed of the first beats a seed of the second.", "",
              "| comparison | difference in success | P(improvement) |", "|---|---|---|"]
    for method, s in summary.items():
        for baseline, c in s.get("improvement_over", {}).items():  # generative methods only
            lines.append(f"| {method} - {baseline} | {interval_text(c['difference'])} | "
                         f"{interval_text(c['probability'])} |")
    lines += ["", "Failure categories, share of all episodes ([the categories](failures.md)):", "",
              "| method | category | share |", "|---|---|---|"]
    for method, s in summary.items():
        lines += [f"| {method} | {category} | {interval_text(rate)} |" for category, rate in s["failures"].items()]
    lines += ["", "Time per phase:", "", "| phase | seconds |", "|---|---|"]
    for phase, seconds in run["seconds_per_phase"].items():
        parts = seconds.items() if isinstance(seconds, dict) else [("", seconds)]  # a method's: training, evaluation
        lines += [f"| {f'{phase} {part}'.strip()} | {secs:.0f} |" for part, secs in parts]
    lines += ["", "Latency: one sampled chunk (`PolicyRunner.act`), one action of the `Controller` (no prefetch), "
              "and the highest rate at which 99% of the controller's calls finish within their period:", "",
              "| method | compile (s) | chunk p50 / p99 (us) | action p50 / p99 (us) | sustainable rate (Hz) |",
              "|---|---|---|---|---|"]
    for method, lat in results["latency"].items():
        lines.append(f"| {method} | {lat['compile_s']:.2f} | {lat['chunk_p50_us']:.0f} / {lat['chunk_p99_us']:.0f} "
                     f"| {lat['action_p50_us']:.0f} / {lat['action_p99_us']:.0f} | {lat['sustainable_hz']:,.0f} |")
    return lines + [""] + _frontier_section(results)


def frontier(results: dict) -> dict[str, list[dict]]:
    """Per method with normalised returns on its curve: each curve point's step, normalised return and success, and
    the training seconds it took (the method's training time, pro rata to steps)."""
    points = {}
    for method, curve in results["curves"].items():
        if not all(p.get("normalized_return") for p in curve):
            continue
        seconds = results["run"]["seconds_per_phase"][method]["training"]
        points[method] = [{"step": p["step"], "seconds": seconds * p["step"] / curve[-1]["step"],
                           "normalized_return": p["normalized_return"],
                           "success": {k: p[k] for k in ("estimate", "low", "high")}} for p in curve]
    return points


def frontier_figure(points: dict[str, list[dict]]) -> Figure:
    """Normalised return against training minutes per method, bands over seeds, the bar's return dotted."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, curve in points.items():
        minutes = [p["seconds"] / 60 for p in curve]
        ax.plot(minutes, [p["normalized_return"]["estimate"] for p in curve], marker="o", label=method)
        ax.fill_between(minutes, [p["normalized_return"]["low"] for p in curve],
                        [p["normalized_return"]["high"] for p in curve], alpha=0.2)
    ax.axhline(BAR_RETURN, color="gray", ls=":", lw=1)
    ax.set(xlabel="training minutes (this machine)", ylabel="normalised return",
           title="the main job: return against training time")
    ax.legend()
    return fig


def _frontier_section(results: dict) -> list[str]:
    points = frontier(results)
    if not points:
        return []
    run, phases = results["run"], results["run"]["seconds_per_phase"]
    # the dataset, evaluations and videos (timed after `minutes`): what fewer steps do not shorten
    fixed = run["minutes"] * 60 + phases["videos"] - sum(phases[m]["training"] for m in points)
    per_method = (BAR_MINUTES * 60 - fixed) / len(points)
    lines = ["### Return against training time", "",
             f"![normalised return against training minutes](images/{FRONTIER_FIGURE.name})", "",
             "The same run's curve points (the last on every evaluation episode, the others on "
             f"{results['curves'][next(iter(points))][0]['episodes']} per seed), the training time pro rata to "
             "steps:", "", "| method | step | training minutes | normalised return | success |",
             "|---|---|---|---|---|"]
    for method, curve in points.items():
        lines += [f"| {method} | {p['step']:,} | {p['seconds'] / 60:.1f} | {interval_text(p['normalized_return'])} | "
                  f"{interval_text(p['success'])} |" for p in curve]
    lines += ["", f"Within {BAR_MINUTES} minutes on this run's machine, the {fixed / 60:.1f} minutes that fewer steps "
              f"do not shorten (dataset, evaluations, videos) leave {max(per_method, 0) / 60:.1f} minutes of training "
              "per method:"]
    for method, curve in points.items():
        seconds_per_step = curve[-1]["seconds"] / curve[-1]["step"]
        affordable = [p for p in curve if p["seconds"] <= per_method]
        reached = next((p for p in curve if p["normalized_return"]["estimate"] >= BAR_RETURN), None)
        lines.append(f"- {method}: {max(per_method, 0) / seconds_per_step:,.0f} steps"
                     + (f", where the curve stood at {interval_text(affordable[-1]['normalized_return'])} "
                        f"(step {affordable[-1]['step']:,})" if affordable else "")
                     + (f"; its mean first reached {BAR_RETURN} at step {reached['step']:,}, "
                        f"{reached['seconds'] / 60:.1f} minutes of training" if reached else
                        f"; its mean never reached {BAR_RETURN}") + ".")
    return lines + [""]


def _throughput_files() -> list[tuple[Path, int]]:
    """The throughput result files with the batch each was measured at (named in the file: `...-batch128.json`)."""
    return [(path, int(path.stem.rsplit("batch", 1)[1]))
            for path in sorted(RESULTS.glob("train-throughput-batch*.json"))]


def _throughput_section() -> list[str]:
    lines = ["## Training throughput", "", "Gradient steps per second summed over seeds, at hopper's recipe size, "
             "beside eager PyTorch on the same MLP and loss; every column in "
             "[training throughput](train_throughput.md).", ""]
    for path, batch in _throughput_files():
        lines += [f"`python benchmarks/train_throughput.py --baseline DIR --batch {batch} --json docs/results/"
                  f"{path.name}`:", "", "| method | seeds | seed-steps/s | % of peak | % of matmuls alone | "
                  "physgen / PyTorch |", "|---|---|---|---|---|---|"]
        for r in json.loads(path.read_text()):
            floor, torch = r.get("matmuls_only_seed_steps_per_s"), r.get("pytorch_steps_per_s")
            lines.append(f"| {r['method']} | {r['seeds']} | {r['seed_steps_per_s']:.0f} | "
                         f"{100 * r['gflops'] / r['peak_gflops']:.0f}% | "
                         + (f"{100 * r['seed_steps_per_s'] / floor:.0f}% | " if floor else "| ")
                         + (f"{r['seed_steps_per_s'] / torch:.1f}x |" if torch else "|"))
        lines.append("")
    return lines


def _success_table(path: Path, remark: str) -> list[str]:
    """A bench run's success, normalised return and per-seed success, row by row, under the command that ran it."""
    results = json.loads(path.read_text())
    run = results["run"]
    lines = [f"`{run['command']}` ({run['budget']} budget, {run['seeds']} seeds x {run['episodes']} evaluation "
             f"episodes, {run['minutes']:.1f} minutes on {run['machine']}; `docs/results/{path.name}`). Means "
             f"over seeds with 95% intervals over seeds; {remark}", "",
             "| row | success | normalised return | success per seed |", "|---|---|---|---|"]
    for row, s in results["summary"].items():
        normalized = interval_text(s["normalized_return"]) if s["normalized_return"] else "n/a"
        lines.append(f"| {row} | {interval_text(s['success_mean'])} | {normalized} | "
                     f"{' '.join(f'{x:.1f}' for x in s['per_seed_success'])} |")
    return lines + [""]


def _tasks_section() -> list[str]:
    """Bench runs beside the main job: other tasks, and other budgets (`docs/results/task-*.json`)."""
    paths = sorted(RESULTS.glob("task-*.json"))
    lines = ["## Other tasks and budgets", ""] if paths else []
    for path in paths:
        lines += _success_table(path, "success per seed over its evaluation episodes.")
    return lines


def _images_section() -> list[str]:
    """Bench runs of the same task from states and from camera frames (`docs/results/images-*.json`), and the act
    latency of image policies (`docs/results/latency-images.json`)."""
    lines = ["## Image policies", ""]
    for path in sorted(RESULTS.glob("images-*.json")):
        lines += _success_table(path, "success per seed over its evaluation episodes.")
    latency = RESULTS / "latency-images.json"
    if latency.exists():
        result = json.loads(latency.read_text())
        lines += [f"`python benchmarks/image_latency.py --calls {result['calls']}` on {result['machine']} (JAX "
                  f"{result['jax']}; `docs/results/{latency.name}`): `PolicyRunner.act` in microseconds, image and "
                  "state policies timed alternately in the same run.", "",
                  "| policy | input | p50 | p95 | p99 |", "|---|---|---|---|---|"]
        lines += [f"| {r['policy']} | {r['input']} | {r['p50_us']:.0f} | {r['p95_us']:.0f} | {r['p99_us']:.0f} |"
                  for r in result["rows"]]
        lines.append("")
    return lines if len(lines) > 2 else []


def _deployment_section() -> list[str]:
    """Bench runs of deployment settings (one-step students, quantized weights, delays, real-time chunking) and
    delay sweeps."""
    lines = ["## Deployment: one-step students, quantized weights, late chunks, real-time chunking", ""]
    for path in sorted(RESULTS.glob("deployment-*.json")):
        lines += _success_table(path, "rows that differ only in how they act share training.")
    for path in sorted(RESULTS.glob("sweep-delay-*.json")):
        sweep = json.loads(path.read_text())
        delays = ",".join(str(d) for d in dict.fromkeys(r["delay"] for r in sweep["rows"]))
        lines += [f"`physgen sweep-delay --checkpoint {sweep['checkpoint']} --delays {delays} --episodes "
                  f"{sweep['episodes']}` ({sweep['method']} on {sweep['task']}, T_p {sweep['action_steps']}, T_a "
                  f"{sweep['exec_steps']}, one training seed; `docs/results/{path.name}`). Success with Wilson 95% "
                  f"intervals over episodes; ensembling at k = {sweep['ensemble']}; action change: the mean "
                  "|a_t - a_(t-1)| per step.", "", "| mode | delay | success | return | action change |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['mode']} | {r['delay']} | {interval_text(r['success'])} | {r['return']:.1f} | "
                  f"{r['action_change']:.4f} |" for r in sweep["rows"]]
        figure = ROOT / "docs" / "images" / f"{path.stem}.png"
        lines += ["", f"![success against delay on {sweep['task']}](images/{figure.name})"] if figure.exists() else []
        lines.append("")
    return lines


def _steps(value) -> str:
    return "never" if value is None else f"{value:,.0f}"


def _world_models_section() -> list[str]:
    """Bench runs of PPO and the world-model methods: final outcomes and real environment steps to success 0.8."""
    paths = sorted(RESULTS.glob("world-models-*.json"))
    lines = ["## World models: PPO with and without a learned model", ""] if paths else []
    for path in paths:
        results = json.loads(path.read_text())
        run = results["run"]
        took = "" if run["command"].startswith("physgen compare") else f", {run['minutes']:.1f} minutes"
        lines += [f"`{run['command']}` ({run['budget']} budget, {run['seeds']} seeds x {run['episodes']} evaluation "
                  f"episodes{took} on {run['machine']}; `docs/results/{path.name}`). Means "
                  "over seeds with 95% intervals over seeds; real steps to success 0.8: the median over seeds with "
                  "a distribution-free 95% interval ('never': not within the run).", "",
                  "| row | success | return | real steps to success 0.8 | seeds that got there |",
                  "|---|---|---|---|---|"]
        efficiency = results.get("sample_efficiency", {})
        for row, s in results["summary"].items():
            steps = efficiency.get(row)
            to_target = (f"{_steps(steps['steps_to_target']['estimate'])} [{_steps(steps['steps_to_target']['low'])}, "
                         f"{_steps(steps['steps_to_target']['high'])}] | {steps['reached']} of {steps['seeds']}"
                         if steps else "no real steps | -")
            lines.append(f"| {row} | {interval_text(s['success_mean'])} | {interval_text(s['return'], 1)} | "
                         f"{to_target} |")
        figure = ROOT / "docs" / "images" / f"{path.stem}.png"
        lines += ["", f"![success and return against real steps](images/{figure.name})"] if figure.exists() else []
        lines.append("")
    return lines


def _coverage_section(rows: list[dict]) -> list[str]:
    lines = ["## Interval coverage", "", "`python benchmarks/coverage.py --json docs/results/coverage.json`: the "
             f"share of simulated runs whose 95% interval held the true mean success, over {len(rows)} settings "
             "(seeds, episodes, rate, spread of the seeds); each setting's row is in [intervals](intervals.md).", "",
             "| interval | lowest coverage | settings below 0.94 |", "|---|---|---|"]
    for column, name in COVERAGE_COLUMNS.items():
        values = [r[column] for r in rows]
        lines.append(f"| {name} | {min(values):.3f} | {sum(v < 0.94 for v in values)} |")
    return lines + [""]


def results_page(results: dict, coverage: list[dict]) -> str:
    lines = [GENERATED, "# Results", "", "Every figure on this page is read from a result file in `docs/results/`, "
             "which the command named beside it wrote; `python docs/generate.py` rewrites the page, and the test "
             "suite fails when it is out of date. Other benchmarks (`benchmarks/*.py`: environment throughput, "
             "sampler latency, PPO and RSSM training speed, the fork policies, world-model open-loop error) print "
             "their figures on the machine they run on.", ""]
    return "\n".join(lines + _main_job_section(results) + _tasks_section() + _images_section() + _throughput_section()
                     + _deployment_section() + _world_models_section() + _coverage_section(coverage))


def throughput_page() -> str:
    lines = ["# Training throughput", "", "Written by `docs/generate.py` from `docs/results/train-throughput-*.json`, "
             "which `python benchmarks/train_throughput.py --baseline DIR --batch B --json FILE` printed (DIR: a "
             "checkout of an earlier version, named under each table's title). Seed-steps/s: gradient steps per second "
             "summed over seeds; peak: a 2048^3 float32 matmul measured in the same run; matmuls alone: the step's "
             "matrix products by themselves (same shapes, random operands, one after another in one jitted program), "
             "the ceiling for this step on XLA's CPU kernels; PyTorch: the same MLP and loss in eager mode, one "
             "model, in its own process. Tables measured on "
             "different machines differ in every absolute figure; compare the ratios within a table.", ""]
    for path, _ in _throughput_files():
        rows = json.loads(path.read_text())
        earlier = f" Earlier code: commit {rows[0]['baseline_commit']}." if rows[0].get("baseline_commit") else ""
        machine = f" on {rows[0]['machine']}" if rows[0].get("machine") else ""
        lines += [f"## {path.stem}", "", f"Peak {rows[0]['peak_gflops']:.0f} GFLOP/s{machine}.{earlier}", "",
                  "| method | seeds | seed-steps/s | MFLOP/step | GFLOP/s | % of peak | earlier code | speed-up | "
                  "matmuls alone | % of matmuls alone | PyTorch steps/s | physgen / PyTorch |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            base = r.get("baseline_seed_steps_per_s")
            floor = r.get("matmuls_only_seed_steps_per_s")
            torch = r.get("pytorch_steps_per_s")
            lines.append(f"| {r['method']} | {r['seeds']} | {r['seed_steps_per_s']:.0f} | {r['mflop_per_step']:.0f} | "
                         f"{r['gflops']:.0f} | {100 * r['gflops'] / r['peak_gflops']:.0f}% | "
                         + (f"{base:.0f} | {r['seed_steps_per_s'] / base:.2f}x | " if base else "| | ")
                         + (f"{floor:.0f} | {100 * r['seed_steps_per_s'] / floor:.0f}% | " if floor else "| | ")
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


def pages() -> dict[Path, str]:
    """Every generated file and the text it should hold."""
    results, coverage = json.loads(MAIN_JOB.read_text()), json.loads(COVERAGE.read_text())
    readme = render(README.read_text(), results)
    return {README: readme, INDEX: index_page(readme), RESULTS_PAGE: results_page(results, coverage),
            THROUGHPUT: throughput_page(), INTERVALS: intervals_page(coverage)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    expected = pages()
    stale = [path for path, text in expected.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        write_text(path, expected[path])
    if points := frontier(json.loads(MAIN_JOB.read_text())):
        write_figure(FRONTIER_FIGURE, frontier_figure(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
