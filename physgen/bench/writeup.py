"""writeup.md: the skeleton of a study's write-up, from the files of a finished `physgen bench` (or `physgen
compare`) folder alone: setup, protocol, results with intervals, ablation, failure analysis, limitations.

Every number and figure comes from the folder (results.json, protocol.json, experiment.toml, the figures, videos/);
what only the student can write is a `> TODO:` line. Writing it again from the same folder gives the same file.
"""

from __future__ import annotations

from pathlib import Path

from physgen.bench.ablation import ablation_section
from physgen.bench.failures import hidden_by_aggregates
from physgen.bench.report import TRUSTED_COVERAGE, hyperparameter_lines
from physgen.bench.units import row_folder
from physgen.errors import PhysgenError
from physgen.io import read_json, write_text
from physgen.plan import POWER
from physgen.stats import interval_text

TODO = "> TODO:"
FIGURES = (("success.png", "final success"), ("curves.png", "success over training"))
VIDEO_SUFFIXES = (".mp4", ".gif", ".png")  # an episode's video (GIF where MP4 fails) and its filmstrip


def write_writeup(out: Path) -> Path:
    """Write `out/writeup.md` (atomically) from the finished run in `out`; its path."""
    out = Path(out)
    results, protocol = (_read(out, name) for name in ("results.json", "protocol.json"))
    experiment = protocol["experiment"]
    lines = [f"# {experiment['task']}: TODO your title", "",
             f"{TODO} the question this study answers, how, and the answer in one number with its interval from "
             "the Results.", "",
             *_setup(out, results, protocol), *_protocol(experiment), *_results(out, results),
             *_ablation(results), *_failures(out, results, protocol), *_limitations(results, experiment)]
    path = out / "writeup.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def _read(out: Path, name: str) -> dict:
    value = read_json(out / name)
    if value is None:
        raise PhysgenError(f"no readable {name} in {out}; the write-up needs the folder of a finished physgen bench "
                           "(or physgen compare): run it to the end there, or pass that folder")
    return value


def _setup(out: Path, results: dict, protocol: dict) -> list[str]:
    experiment, environment, run = protocol["experiment"], protocol["environment"], results["run"]
    seeds, dataset = experiment["training_seeds"], experiment["dataset"]
    scores = [f"{key} {dataset[key]:.3f}" for key in ("ref_min_score", "ref_max_score") if key in dataset]
    rows = experiment["rows"]
    lines = ["## Setup", "",
             f"- Task: `{experiment['task']}`.",
             f"- Dataset: `{dataset['id']}`, {dataset['episodes']} episodes, {dataset['validation_fraction']:.0%} "
             f"held out by episode (split seed {dataset['split_seed']})"
             + (f"; reference returns for the normalised score: {', '.join(scores)}" if scores else "") + ".",
             "- Methods (rows): " + ", ".join(f"`{row}`" + (f" ({spec['method']})" if row != spec["method"] else "")
                                               for row, spec in rows.items()) + ".",
             f"- Seeds: {len(seeds)} training seeds ({seeds[0]}..{seeds[-1]}) per row; {experiment['episodes']} "
             "evaluation episodes per seed, the same environment seeds for every row.",
             f"- Budget: `{experiment['budget']}`; checkpoint rule: {experiment['checkpoint_rule']}.",
             f"- Command: `{run['command']}`"
             + ("; `physgen bench --config experiment.toml --out NEW_FOLDER` runs the same experiment again"
                if (out / "experiment.toml").exists() else "") + ".",
             f"- Compute: {run['minutes']:.1f} minutes for the last invocation into this folder on {run['machine']} "
             f"({', '.join(run['devices'])}); commit {environment['git_commit'][:10]}, jax "
             f"{environment['packages']['jax']}."]
    for compared in protocol.get("compared_runs", []):
        lines.append(f"- Compared run: `{compared['folder']}` (budget `{compared['budget']}`, commit "
                     f"{compared['git_commit'][:10]}).")
    if experiment["ppo_left_out"]:
        lines.append(f"- Left out: {experiment['ppo_left_out']}.")
    changed = experiment.get("overrides") or {}
    lines.append("- Changed from the task's recipe (`--set`): "
                 + (", ".join(f"{k}={v}" for k, v in changed.items()) if changed else "nothing") + "; varied "
                 "(`--vary`): " + (", ".join(f"{k} over {', '.join(map(str, v))}"
                                             for k, v in experiment["variants"].items()) or "nothing") + ".")
    lines += ["", "<details><summary>Every hyperparameter (also in protocol.json): each method's first row in full, "
              "its other rows by the fields where they differ</summary>", "", *hyperparameter_lines(experiment)]
    return lines + ["", "</details>", "", f"{TODO} the task in two sentences: what the agent observes and does, "
                    "and when an episode succeeds (`physgen tasks` prints the success rule).", ""]


def _protocol(experiment: dict) -> list[str]:
    statistics, seeds = experiment["statistics"], len(experiment["training_seeds"])
    level = f"{statistics['confidence']:.0%}"
    return ["## Protocol", "",
            f"Every row trains {seeds} seeds and is evaluated on the same {experiment['episodes']} episodes per seed "
            "(shared environment seeds), so differences between rows are paired and no row meets easier episodes. "
            "An episode succeeds by the task's success rule; a row's success rate is the mean over its seeds with a "
            f"{level} interval over training seeds (Clopper-Pearson at Korn and Graubard's effective sample size, "
            "the seeds' spread counted as a design effect), so it covers what a new seed of the method would do, "
            "not only these seeds' luck. A difference between two rows is Newcombe's square-and-add interval on "
            "the same episodes, and P(improvement), the chance that a seed of one beats a seed of the other, "
            f"Newcombe's score interval; a comparison tells two rows apart when its {level} difference interval "
            "excludes 0. Failed episodes get one primary category, the cause that set in first (the rules: "
            "physgen's docs/failures.md; the intervals: docs/intervals.md).", ""]


def _results(out: Path, results: dict) -> list[str]:
    summary = results["summary"]
    lines = ["## Results", "", "| row | success | normalised return | return |", "|---|---|---|---|"]
    for row, s in summary.items():
        normalized = interval_text(s["normalized_return"]) if s["normalized_return"] else "n/a"
        approximate = " (approximate)" if s["coverage"] < TRUSTED_COVERAGE else ""
        lines.append(f"| {row} | {interval_text(s['success_mean'])}{approximate} | {normalized} | "
                     f"{interval_text(s['return'], 1)} |")
    lines += ["", "Per-seed success rates: " + "; ".join(
        f"{row} {', '.join(f'{r:.2f}' for r in s['per_seed_success'])}" for row, s in summary.items()) + "."]
    pairs = [(row, base, v) for row, s in summary.items() for base, v in s.get("improvement_over", {}).items()]
    if pairs:
        lines += ["", "| row | against | difference in success | P(improvement) | told apart |",
                  "|---|---|---|---|---|"]
        lines += [f"| {row} | {base} | {interval_text(v['difference'])} | {interval_text(v['probability'])} | "
                  f"{'yes' if v['difference']['low'] > 0 or v['difference']['high'] < 0 else 'no'} |"
                  for row, base, v in pairs]
    lines += [""] + [f"![{title}]({name})\n" for name, title in FIGURES if (out / name).exists()]
    lines += _world_model(out, results.get("world_model"))
    return lines + [f"{TODO} what the table answers: which rows the intervals tell apart, which they do not, and "
                    "what that means for your question.", ""]


def _world_model(out: Path, result: dict | None) -> list[str]:
    """The RSSMs' open-loop error against the simple predictors, first and last step ahead (runs with a world-model
    method only)."""
    if result is None:
        return []
    lines = ["### World model", "",
             f"Open-loop RMSE of the RSSMs on {result['chunks']} held-out chunks after {result['context']} observed "
             "steps (interval over seeds), beside holding the last observation and a fitted linear model:", "",
             "| steps ahead | RSSM | last observation | linear |", "|---|---|---|---|"]
    lines += [f"| {k + 1} | {interval_text(result['rssm'][k], 4)} | {result['last_observation'][k]:.4f} | "
              f"{result['linear'][k]:.4f} |" for k in sorted({0, len(result["rssm"]) - 1})]
    figure = next(iter(sorted(out.glob("world_model*/open_loop.png"))), None)
    return lines + ([""] + ([f"![open loop]({figure.relative_to(out).as_posix()})", ""] if figure else []))


def _ablation(results: dict) -> list[str]:
    section = ablation_section(results["ablations"])
    if not section:
        return ["## Ablations", "", "This run varied no field.", "",
                f"{TODO} name the design choice you ablate and run it with `physgen bench ... --vary FIELD=V1,V2` "
                "into its own folder; its writeup.md holds this section filled in.", ""]
    return section[1:] + ["", f"{TODO} what the choice changes, in success and in the failure categories, and why.",
                           ""]


def _failures(out: Path, results: dict, protocol: dict) -> list[str]:
    summary = results["summary"]
    categories = list(dict.fromkeys(c for s in summary.values() for c in s["failures"]))
    lines = ["## Failure analysis", "",
             "Failed episodes per row and each primary category's share of all episodes (interval over seeds):", "",
             "| row | failed | " + " | ".join(categories) + " |", "|---|---|" + "---|" * len(categories)]
    for row, s in summary.items():
        cells = [interval_text(s["failures"][c]) if c in s["failures"] else "0" for c in categories]
        lines.append(f"| {row} | {len(s['categories'])} | " + " | ".join(cells) + " |")
    hidden = hidden_by_aggregates({m: s["success_mean"] for m, s in summary.items()},
                                  {m: s["categories"] for m, s in summary.items()})
    lines += ["", "What success alone would hide: " + ("; ".join(hidden) if hidden else "nothing: no two rows share "
              "a success interval while failing differently") + ".", ""]
    lines += ["![failures by category](failures.png)", ""] if (out / "failures.png").exists() else []
    lines += _videos(out, summary, protocol)
    return lines + [f"{TODO} watch each video above and describe what happens before the failure: does the category "
                    "name the cause you see? Which failures share a cause across methods, and which are one "
                    "method's own?", "",
                    f"{TODO} pick the failure mode that matters most for your question and say what would test its "
                    "cause (a --vary of the field you suspect, more data, another dataset).", ""]


def _videos(out: Path, summary: dict, protocol: dict) -> list[str]:
    """Per row, the episodes the bench rendered (up to 5 failures spread over categories, 2 successes): each one's
    video and, for a failure, its filmstrip (a PNG of the frames leading up to it) where the run drew one."""
    if "compared_runs" in protocol:
        return ["Videos: in each compared run's own folder (videos/<row>/).", ""]
    lines = ["Rendered episodes (named by category or success, training seed and environment seed):", ""]
    for row in summary:
        episodes = {}
        for path in sorted((out / "videos" / row_folder(row)).glob("*")):
            if path.suffix in VIDEO_SUFFIXES:
                kind = "filmstrip" if path.suffix == ".png" else "video"
                episodes.setdefault(path.stem, []).append(f"[{kind}]({path.relative_to(out).as_posix()})")
        lines.append(f"- {row}: " + ("; ".join(f"{stem} ({', '.join(links)})" for stem, links in episodes.items())
                                     or "none rendered"))
    return lines + ["", f"{TODO} embed the filmstrips your analysis discusses (`![caption](videos/<row>/<file>.png)`) "
                    "and say what each shows.", ""]


def _limitations(results: dict, experiment: dict) -> list[str]:
    seeds, episodes, summary = len(experiment["training_seeds"]), experiment["episodes"], results["summary"]
    level = f"{experiment['statistics']['confidence']:.0%}"
    lines = ["## Limitations", "",
             f"- {seeds} training seeds x {episodes} evaluation episodes per row ({seeds * episodes} episodes); the "
             f"{level} intervals cover the variation between training seeds and between episodes of this task, "
             f"dataset (`{experiment['dataset']['id']}`), budget (`{experiment['budget']}`) and these "
             "hyperparameters, not other tasks, datasets or tuning.",
             f"- Checkpoint rule: {experiment['checkpoint_rule']}."]
    if experiment["budget"] == "smoke":
        lines.append("- The smoke budget checks that every step runs; its numbers are no result.")
    approximate = [row for row, s in summary.items() if s["coverage"] < TRUSTED_COVERAGE]
    if approximate:
        lines.append(f"- Approximate intervals (simulated coverage below {TRUSTED_COVERAGE}): "
                     + ", ".join(approximate) + ".")
    reach = [f"{row} against {base} (from {summary[base]['success_mean']['estimate']:.2f}): "
             + (f"{v['detectable_difference']:.2f}" if v["detectable_difference"] is not None else "none")
             for row, s in summary.items() for base, v in s.get("improvement_over", {}).items()]
    if reach:
        lines.append(f"- The smallest difference in success these seeds and episodes detect with {POWER:.0%} power: "
                     + "; ".join(reach) + " (`physgen plan --bench <this folder> --difference D` sizes a run for a "
                     "smaller one).")
    return lines + ["", f"{TODO} what this study cannot say, and what you would run next.", ""]
