"""results.json, report.md and its figures from the finished units of a benchmark run."""

from __future__ import annotations

import json
import resource
import time
from collections import Counter
from pathlib import Path

from matplotlib.figure import Figure  # drawn without pyplot: no backend is chosen or changed
import numpy as np

from physgen import plan, stats
from physgen.bench.ablation import ablation_figures, ablation_section, ablations
from physgen.bench.efficiency import efficiency_figure, efficiency_section, sample_efficiency
from physgen.bench.experiments import flatten_table
from physgen.bench.failures import LEAD_FRACTION, hidden_by_aggregates, task_categories
from physgen.bench.registry import REGISTRY, bench_command
from physgen.bench.video import FAILURE_VIDEOS, STRIP_FRAMES, SUCCESS_VIDEOS, Clip, failure_videos
from physgen.data import normalized_score
from physgen.io import write_figure, write_json, write_text
from physgen.stats import interval_text
from physgen.envs import Task


INTERVALS = ("Intervals: 95% over training seeds (docs/intervals.md): success and failure rates Clopper-Pearson at "
             "Korn and Graubard's effective sample size (the seeds' spread counted as a design effect), returns "
             "the same on the returns rescaled to [0, 1] by the run's extremes, differences Newcombe's "
             "square-and-add, P(improvement) Newcombe's score interval.")
TRUSTED_COVERAGE = 0.94  # the coverage every simulated cell with 5 or more seeds must reach (tests/test_stats.py)



def summarize_units(units: dict[str, list[dict]], statistics: dict, categories: tuple[str, ...], rows: dict) -> dict:
    """Per row: the success and return statistics, the failure categories with their intervals and the simulated
    coverage of the success interval at this run's seeds, episodes, rates and spread; per generative method's row,
    its comparison with each baseline's row of the same varied values. `categories`: the task's failure categories,
    in rule order; `rows`: the protocol's {row: {"method", "varied"}}."""
    confidence, seed = statistics["confidence"], statistics["bootstrap_seed"]
    summary, counts = {}, {}
    for method, records in units.items():
        success = np.array([[e["success"] for e in r["episodes"]] for r in records], float)
        counts[method] = success.sum(axis=1)
        normalized = [[e["normalized_return"] for e in r["episodes"]] for r in records]
        has_returns = all(v is not None for row in normalized for v in row)
        result = stats.summarize(success, np.array(normalized, float) if has_returns else None, confidence)
        result["return"] = stats.mean_interval([[e["return"] for e in r["episodes"]] for r in records],
                                               confidence).as_dict()
        seeds, episodes = success.shape
        result["spread"] = plan.spread_from_rates(success.mean(axis=1), episodes) if min(success.shape) > 1 else None
        result["coverage"] = plan.checked_coverage(seeds, episodes, result["success_mean"], result["spread"],
                                                   confidence, seed)
        named = [[e["category"] for e in r["episodes"]] for r in records]
        result["failures"] = {c: stats.rate_interval([row.count(c) for row in named], episodes, confidence).as_dict()
                              for c in categories if any(c in row for row in named)}
        result["categories"] = [c for row in named for c in row if c is not None]
        result["evidence"] = _evidence_by_category([e for r in records for e in r["episodes"]])
        summary[method] = result
    generative = {row: REGISTRY[rows[row]["method"]].generative for row in units}
    for row in (r for r in units if generative[r]):
        summary[row]["improvement_over"] = {
            base: _comparison(summary[row], summary[base], counts[row], counts[base], episodes, confidence, seed)
            for base in units if not generative[base] and rows[base]["varied"] == rows[row]["varied"]}
    return summary


def _evidence_by_category(episodes: list[dict]) -> dict[str, dict]:
    """Per primary category: its failures, their median onset and failure steps and median peak distance from the
    training states before failing (in units of the out-of-distribution threshold)."""
    failed = [e for e in episodes if e["category"] is not None]
    summary = {}
    for category in dict.fromkeys(e["category"] for e in failed):
        evidence = [e["evidence"] for e in failed if e["category"] == category]
        summary[category] = {"failures": len(evidence),
                             **{f"median_{key}": float(np.median([v[key] for v in evidence]))
                                for key in ("onset_step", "failure_step", "support_distance")}}
    return summary


def _comparison(ours: dict, base: dict, ours_counts: np.ndarray, base_counts: np.ndarray, episodes: int,
                confidence: float, seed: int) -> dict:
    """Difference in success on the shared episodes, P(improvement) and the smallest difference this run's seeds and
    episodes detect with 80% power at the baseline's rate and the larger of the two spreads."""
    seeds = len(base_counts)
    spread = max(s["spread"] or 0.0 for s in (ours, base))
    detectable = (plan.detectable_difference(base["success_mean"]["estimate"], spread, seeds, episodes,
                                             confidence=confidence, seed=seed) if min(seeds, episodes) > 1 else None)
    return {"difference": stats.difference_interval(ours_counts, base_counts, episodes, confidence).as_dict(),
            "probability": stats.probability_of_improvement(ours["per_seed_success"], base["per_seed_success"],
                                                            confidence).as_dict(),
            "detectable_difference": detectable}


def _curves(units: dict[str, list[dict]], statistics: dict, dataset: dict) -> dict[str, list[dict]]:
    """Per row and curve point: the success interval over seeds and, where the dataset has reference scores and the
    point kept its returns, the normalised return's (`normalized_return`, else None)."""
    curves = {}
    for method, records in units.items():
        points = []
        for i, point in enumerate(records[0]["curve"]):
            counts = [round(r["curve"][i]["success_rate"] * point["episodes"]) for r in records]
            interval = stats.rate_interval(counts, point["episodes"], statistics["confidence"])
            returns = [r["curve"][i].get("returns") for r in records]
            normalized = (stats.mean_interval(normalized_score(dataset, returns), statistics["confidence"]).as_dict()
                          if "ref_max_score" in dataset and all(x is not None for x in returns) else None)
            points.append({"step": point["step"], "episodes": point["episodes"], **interval.as_dict(),
                           "normalized_return": normalized})
        curves[method] = points
    return curves


def _figures(out: Path, summary: dict, curves: dict, categories: tuple[str, ...], rows: dict) -> None:
    methods = list(summary)
    axis_of = {m: REGISTRY[rows[m]["method"]].curve_axis for m in curves}
    groups = [(label, {m: p for m, p in curves.items() if axis_of[m] == label})
              for label in dict.fromkeys(axis_of.values())]
    fig = Figure(figsize=(6 * len(groups), 4))
    axes = fig.subplots(1, len(groups), squeeze=False)
    for ax, (label, members) in zip(axes[0], groups):
        for method, points in members.items():
            steps = [p["step"] for p in points]
            ax.plot(steps, [p["estimate"] for p in points], marker="o", label=method)
            ax.fill_between(steps, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2)
        ax.set(xlabel=label, ylabel="success rate", ylim=(-0.02, 1.02))
        ax.legend()
    fig.suptitle("success over training (mean over seeds, 95% CI over seeds)")
    write_figure(out / "curves.png", fig)

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    means = [summary[m]["success_mean"] for m in methods]
    ax.bar(methods, [s["estimate"] for s in means],
           yerr=[[s["estimate"] - s["low"] for s in means], [s["high"] - s["estimate"] for s in means]], capsize=6)
    ax.set(ylabel="final success rate", ylim=(0, 1.02), title="final success (95% CI over seeds)")
    write_figure(out / "success.png", fig)

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bottom = np.zeros(len(methods))
    for category in categories:
        rates = np.array([summary[m]["failures"].get(category, {"estimate": 0.0})["estimate"] for m in methods])
        if rates.any():
            ax.bar(methods, rates, bottom=bottom, label=category)
            bottom += rates
    ax.set(ylabel="share of all episodes", ylim=(0, 1.02), title="failures by category")
    ax.legend(fontsize=8)
    write_figure(out / "failures.png", fig)


def _world_model_section(path: Path | None, experiment: dict) -> list[str]:
    """The RSSMs' own evaluation and what each method took from the real environment (empty without world models)."""
    if path is None:
        return [""]
    result = json.loads(path.read_text())
    hyper = {spec["method"]: experiment["hyperparameters"][row] for row, spec in reversed(experiment["rows"].items())}
    lines = ["", "## World model", "",
             f"The RSSMs of `rssm-mpc` and `ppo-wm` (one per training seed, trained on the training splits of "
             f"{', '.join(f'`{d}`' for d in result['datasets'])} in {result['training_seconds']:.0f} s) predict "
             f"{result['chunks']} held-out chunks open loop: they observe {result['context']} steps, then imagine "
             "the rest from the recorded actions. RMSE over observation dimensions (raw units), the RSSM's with a "
             "95% t-interval over seeds, beside the last observation held and a linear model fitted by "
             "least squares:", "", "| steps ahead | RSSM | last observation | linear |", "|---|---|---|---|"]
    for k in sorted({1, 5, 10, len(result["rssm"])}):
        if k <= len(result["rssm"]):
            lines.append(f"| {k} | {interval_text(result['rssm'][k - 1], 4)} | "
                         f"{result['last_observation'][k - 1]:.4f} | {result['linear'][k - 1]:.4f} |")
    lines += ["", f"![open loop]({path.parent.name}/open_loop.png)", "",
              f"Real data per seed: the offline methods learn from `{experiment['dataset']['id']}` and `rssm-mpc` "
              f"from the {result['training_episodes']:,} training episodes of the datasets above, neither takes an "
              "environment step; " + "; ".join(_real_steps(hyper)) + ".", ""]
    return lines


def _real_steps(hyper: dict) -> list[str]:
    """What the methods that learn by acting took from the real environment, per seed."""
    said = [f"PPO {hyper['ppo']['total_steps']:,} environment steps" if "ppo" in hyper else "PPO not run"]
    if "ppo-wm" in hyper:
        online = hyper["ppo-wm"]["online"]
        said.append(f"`ppo-wm` {online['real_steps']:,} (its RSSM learns online from them"
                    + (", its replay starting with the expert data" if online["offline_start"] else "") + ")")
    return said


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _report(out: Path, task: Task, protocol: dict, summary: dict, ablation: dict, curves: dict, latency: dict,
            videos: dict, seconds: float, timing: dict, categories: tuple[str, ...], open_loop: Path | None,
            efficiency: dict) -> str:
    experiment, environment = protocol["experiment"], protocol["environment"]
    seeds, episodes = experiment["training_seeds"], experiment["episodes"]
    compared = protocol.get("compared_runs")
    lines = [f"# physgen {'compare' if compared else 'bench'}: {task.name}", "",
             f"Budget `{experiment['budget']}`, {len(seeds)} training seeds ({seeds[0]}..{seeds[-1]}), {episodes} "
             f"evaluation episodes per seed on the same environment seeds for every method (paired), dataset "
             f"`{experiment['dataset']['id']}` ({experiment['dataset']['episodes']} episodes, 10% held out). "
             f"Checkpoint rule: {experiment['checkpoint_rule']}. Success rule: {task.success_rule}. {INTERVALS} "
             f"Full protocol: `protocol.json` (commit {environment['git_commit'][:10]}, "
             f"{environment['machine']}, jax {environment['packages']['jax']}). This invocation (dataset, "
             f"training, evaluation) took {seconds / 60:.1f} minutes; peak memory so far "
             f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB."]
    lines.append("")
    lines.append("Time per phase (as last run into this folder): " + "; ".join(
        f"{phase}: training {_minutes(s['training'])}, evaluation {_minutes(s['evaluation'])}"
        if isinstance(s, dict) else f"{phase} {_minutes(s)}" for phase, s in timing.items()) + ".")
    if compared:
        runs = ", ".join(f"`{r['folder']}` (commit {r['git_commit'][:10]})" for r in compared)
        lines += ["", f"Compares the finished runs {runs} on their shared evaluation episodes (a row named in several "
                  "runs is `row@run`); nothing was trained here, each row's latency was measured on its run's machine, "
                  "and videos and world-model evaluations are in each run's own report."]
    if experiment["ppo_left_out"]:
        lines += ["", f"**{experiment['ppo_left_out']}.**"]
    lines += ["", "## Success", "", "| method | success | normalised return | return | coverage check |",
              "|---|---|---|---|---|"]
    for method, s in summary.items():
        normalized = interval_text(s["normalized_return"]) if s["normalized_return"] else "n/a"
        check = f"{s['coverage']:.3f}" + (", approximate" if s["coverage"] < TRUSTED_COVERAGE else "")
        lines.append(f"| {method} | {interval_text(s['success_mean'])} | {normalized} | "
                     f"{interval_text(s['return'], 1)} | {check} |")
    spreads = ", ".join(f"{m} {s['spread']:.2f}" for m, s in summary.items() if s["spread"] is not None)
    lines += ["", f"Coverage check: the lowest share of {plan.RUNS:,} simulated runs with this run's seeds and "
              "episodes whose success interval held the true rate, for true rates at the interval's ends and middle "
              f"and seed spreads (log-odds standard deviation) of 0.3, 1.2 and the method's own ({spreads or 'n/a'}); "
              f"below {TRUSTED_COVERAGE} the interval is approximate. Returns: the rates' interval on the returns "
              "rescaled to [0, 1] (docs/intervals.md measures how it covers).", "", "Per-seed success rates:", ""]
    lines += [f"- {m}: {', '.join(f'{r:.2f}' for r in s['per_seed_success'])}" for m, s in summary.items()]
    pairs = [(m, b, v) for m, s in summary.items() for b, v in s.get("improvement_over", {}).items()]
    if pairs:
        lines += ["", "## Ablation: the generative component against the baselines", "",
                  "Difference in success rate on the same evaluation episodes, and the probability that a seed of "
                  "the generative method beats a seed of the baseline (0.5 = no difference):", "",
                  "| method | baseline | difference | P(improvement) |", "|---|---|---|---|"]
        lines += [f"| {m} | {b} | {interval_text(v['difference'])} | {interval_text(v['probability'])} |"
                  for m, b, v in pairs]
    lines += ["", "![success](success.png)", *ablation_section(ablation),
              *_world_model_section(open_loop, experiment), *efficiency_section(efficiency),
              "## Latency", "",
              f"First seed of each method on this machine, numpy in and out, after compilation; per action through "
              f"`physgen.control.Controller` at the task's {task.control_hz:g} Hz (a new chunk every T_a calls, no "
              "prefetch); PPO, ppo-wm and rssm-mpc (filter and plan) compute every action in one call, so their chunk "
              "and action figures are the same; sustainable rate: 99% of calls within their period.", "",
              "| method | compile | chunk p50 / p99 | action p50 / p99 | sustainable rate |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {v['compile_s']:.1f} s | {v['chunk_p50_us']:,.0f} / {v['chunk_p99_us']:,.0f} us | "
              f"{v['action_p50_us']:,.0f} / {v['action_p99_us']:,.0f} us | {v['sustainable_hz']:,.0f} Hz |"
              for m, v in latency.items()]
    lines += ["", "## Success over training", "", "Success rate (mean over seeds, interval as above) at each "
              "evaluated training step (gradient steps; rssm-mpc: the RSSM's gradient steps; PPO and ppo-wm: real "
              "environment steps).", "", "| method | step: success |", "|---|---|"]
    for method, points in curves.items():
        lines.append(f"| {method} | " + "; ".join(f"{p['step']:,}: {interval_text(p)}" for p in points) + " |")
    lines += ["", f"Earlier points use the first {experiment['curve_episodes']} evaluation episodes per seed, the last "
              "one all of them.", "", "![curves](curves.png)", "", "## Failures", "",
              "Each failed episode's primary category is the cause that set in first (docs/failures.md states "
              "every rule and its thresholds): action_saturation (saturated from the start), the task's own "
              f"detectors ({', '.join(task.failure_detectors) or 'none'}), distribution_shift (left the training "
              "states' support at least 10% of the horizon before failing); failures no cause explains are named "
              "by when and how they happened: early_instability, collision / fall, long_horizon, timeout, "
              "low_return. Rates are shares of all episodes with intervals over seeds as for success.", "",
              "| method | failed | " + " | ".join(categories) + " |", "|---|---|" + "---|" * len(categories)]
    for method, s in summary.items():
        cells = [interval_text(s["failures"][c]) if c in s["failures"] else "0" for c in categories]
        lines.append(f"| {method} | {len(s['categories'])} | " + " | ".join(cells) + " |")
    lines += ["", "Evidence per primary category (medians over its failures): the step the cause set in, the failure "
              "step, and the peak distance from the training states before failing in units of the "
              "out-of-distribution threshold (above 1: out of support).", "",
              "| method | category | failures | onset step | failure step | distance |", "|---|---|---|---|---|---|"]
    lines += [f"| {method} | {c} | {v['failures']} | {v['median_onset_step']:.0f} | {v['median_failure_step']:.0f} | "
              f"{v['median_support_distance']:.2f} |"
              for method, s in summary.items() for c, v in s["evidence"].items()]
    hidden = hidden_by_aggregates({m: s["success_mean"] for m, s in summary.items()},
                                  {m: s["categories"] for m, s in summary.items()})
    lines += ["", "What success or return alone would have hidden: " + ("; ".join(hidden) if hidden else
              "nothing: no two methods share a success interval while failing differently") + ".", "",
              "![failures](failures.png)", *gallery_section(videos),
              "## Hyperparameters", "", "Every field of a method's first row; its other rows (variants) by the "
              "fields where they differ from it.", "", *hyperparameter_lines(experiment)]
    return "\n".join(lines + _told_apart(summary, experiment)) + "\n"


def hyperparameter_lines(experiment: dict) -> list[str]:
    """One line per row: every field of each method's first row (a part's fields as `part.field`, as the world-model
    methods nest theirs), and its other rows (variants) by the fields where they differ from it."""
    first, lines = {}, []
    for row, values in experiment["hyperparameters"].items():
        flat = flatten_table(values)
        name, base = first.setdefault(experiment["rows"][row]["method"], (row, flat))
        shown = flat if name == row else {k: v for k, v in flat.items() if v != base[k]}
        lines.append(f"- {row}{'' if name == row else f' (as {name} but)'}: "
                     + ", ".join(f"{k}={v}" for k, v in shown.items()))
    return lines


def gallery_section(videos: dict[str, list[Clip]] | str) -> list[str]:
    """The failure gallery: per method (collapsed, so that many rows stay readable) a filmstrip of each picked failure
    with its caption and video, then its success videos; or why nothing was rendered."""
    lines = ["", "## Failure gallery", ""]
    if isinstance(videos, str):
        return [*lines, f"Not rendered: {videos}", ""]
    if not videos:
        return [*lines, "None rendered (`--no-videos`, or `physgen compare`: its runs' own reports hold theirs).", ""]
    lines += [f"Up to {FAILURE_VIDEOS} failures per method, picked by a seeded rule spread over the categories, and "
              f"{SUCCESS_VIDEOS} successes (seed: the training seed; episode: the evaluation episode's environment "
              f"seed). Each filmstrip shows {STRIP_FRAMES} frames of its video spread evenly over the lead-up to the "
              f"failure step, from the cause's onset or {LEAD_FRACTION:.0%} of the horizon before the failure, "
              "whichever is earlier (docs/failures.md); the step under each frame. Open a method to see its "
              "failures.", ""]
    for method, clips in videos.items():
        failures = [c for c in clips if c.filmstrip is not None]
        counts = ", ".join(f"{label} {n}" for label, n in Counter(c.label for c in failures).items())
        shown = f"{len(failures)} failure{'' if len(failures) == 1 else 's'}" + (f" ({counts})" if counts else "")
        lines += [f"<details><summary>{method}: {shown}</summary>", ""]
        for clip in failures:  # the caption's first line names the method and category, the heading the method
            lines += [f"![{', '.join(clip.caption)}]({clip.filmstrip})", "",
                      f"{clip.label}: {', '.join(clip.caption[1:])} ([video]({clip.video}))", ""]
        successes = [c.video for c in clips if c.filmstrip is None]
        lines += [f"Successes: {', '.join(f'[{Path(v).stem}]({v})' for v in successes) or 'none'}.", "",
                  "</details>", ""]
    return lines


def _told_apart(summary: dict, experiment: dict) -> list[str]:
    """The closing section: which comparisons this run's intervals settle, and how small a difference it could see."""
    seeds, episodes = len(experiment["training_seeds"]), experiment["episodes"]
    lines = ["", "## What this run can tell apart", ""]
    for method, base, v in ((m, b, v) for m, s in summary.items() for b, v in s.get("improvement_over", {}).items()):
        difference = v["difference"]
        verdict = ("told apart" if difference["low"] > 0 or difference["high"] < 0 else "not told apart")
        reach = (f"a difference of {v['detectable_difference']:.2f}" if v["detectable_difference"] is not None
                 else "no difference")
        lines.append(f"- {method} against {base}: {verdict} (difference {interval_text(difference)}); "
                     f"{seeds} seeds x {episodes} episodes detect {reach} from {base}'s "
                     f"{summary[base]['success_mean']['estimate']:.2f} with {plan.POWER:.0%} power.")
    if len(lines) == 3:
        lines.append("No comparison: the run has no generative method and baseline side by side.")
    lines += ["", "For how many seeds and episodes a smaller difference needs: `physgen plan --baseline RATE "
              "--difference D --bench <this folder>`."]
    return lines


def write_results_and_report(out: Path, task: Task, protocol: dict, units: dict[str, list[dict]], latency: dict,
                             seconds: float, videos: bool = True, command: str | None = None,
                             timing: dict | None = None) -> None:
    """results.json, report.md, figures and (`videos`) failure videos; `command`: the command line results.json
    records (default: the bench command of the protocol's experiment); `timing`: seconds per phase (the dataset,
    and per training its rows' training and evaluation), to which the videos' are added."""
    statistics = protocol["experiment"]["statistics"]
    categories = task_categories(task)
    experiment = protocol["experiment"]
    summary = summarize_units(units, statistics, categories, experiment["rows"])
    curves = _curves(units, statistics, experiment["dataset"])
    ablation = ablations(units, summary, experiment, statistics["confidence"])
    # the RSSMs' open-loop evaluation (with RSSM variants: the first variant's), None without world models
    open_loop = next(iter(sorted(out.glob("world_model*/open_loop.json"))), None)
    run = {"command": command or bench_command(task, experiment), "budget": experiment["budget"],
           "seeds": len(experiment["training_seeds"]), "episodes": experiment["episodes"], "minutes": seconds / 60,
           "peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "machine": protocol["environment"]["machine"], "devices": protocol["environment"]["jax_devices"]}
    _figures(out, summary, curves, categories, experiment["rows"])
    ablation_figures(out, ablation)
    efficiency = sample_efficiency(units, {row: REGISTRY[spec["method"]].curve_axis
                                           for row, spec in experiment["rows"].items()}, statistics["confidence"])
    if efficiency:
        efficiency_figure(out, efficiency)
    started = time.perf_counter()
    clips = failure_videos(out, task, units) if videos else {}
    run["seconds_per_phase"] = timing = {**(timing or {}), "videos": time.perf_counter() - started}
    write_json(out / "results.json", {"task": task.name, "run": run, "summary": summary, "ablations": ablation,
                                      "curves": curves, "sample_efficiency": efficiency, "latency": latency,
                                      "world_model": json.loads(open_loop.read_text()) if open_loop else None,
                                      "units": units})
    report = _report(out, task, protocol, summary, ablation, curves, latency, clips, seconds, timing, categories,
                     open_loop, efficiency)
    write_text(out / "report.md", report)
