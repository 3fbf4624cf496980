"""The ablation section of a bench report with `--vary`: per varied field, success and return against the field's
values (a figure), each value's difference in success from the first value, and the failure categories the choice
changes, all on the same evaluation episodes.

A series is one method with the other varied fields held at one combination of values. Differences use Newcombe's
square-and-add on the two rows' rate intervals, which assumes their seeds trained independently; rows that differ
only in evaluation fields share their training, which correlates them positively and makes the interval wider than
it needs to be, never narrower.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure  # drawn without pyplot: no backend is chosen or changed
import numpy as np

from physgen import stats
from physgen.io import write_figure
from physgen.stats import interval_text


def _series(experiment: dict, field: str) -> list[dict]:
    """The series of `field`: per method and combination of the other varied values, its rows in the field's order."""
    groups = {}
    for row, spec in experiment["rows"].items():
        others = {k: v for k, v in spec["varied"].items() if k != field}
        key = (spec["method"], json.dumps(others))
        groups.setdefault(key, {"method": spec["method"], "others": others, "rows": []})["rows"].append(row)
    return list(groups.values())


def _counts(records: list[dict], category: str | None = None) -> np.ndarray:
    """Per seed: its successful episodes, or its failures of `category`."""
    if category is None:
        return np.array([sum(e["success"] for e in r["episodes"]) for r in records])
    return np.array([sum(e["category"] == category for e in r["episodes"]) for r in records])


def ablations(units: dict[str, list[dict]], summary: dict, experiment: dict, confidence: float) -> dict:
    """Per varied field, its series; each row of a series with its value, success, returns and failure rates, and
    from the second on its difference in success and in every failure category's rate from the first row."""
    episodes, result = experiment["episodes"], {}
    for field in experiment["variants"]:
        result[field] = []
        for series in _series(experiment, field):
            first = units[series["rows"][0]]
            points = []
            for row in series["rows"]:
                s = summary[row]
                point = {"row": row, "value": experiment["rows"][row]["varied"][field],
                         "success": s["success_mean"], "normalized_return": s["normalized_return"],
                         "return": s["return"], "failures": s["failures"]}
                if row != series["rows"][0]:
                    ours = units[row]
                    point["success_difference"] = stats.difference_interval(
                        _counts(ours), _counts(first), episodes, confidence).as_dict()
                    point["failure_differences"] = {
                        c: stats.difference_interval(_counts(ours, c), _counts(first, c), episodes,
                                                     confidence).as_dict()
                        for c in dict.fromkeys([*s["failures"], *summary[series["rows"][0]]["failures"]])}
                points.append(point)
            result[field].append({"method": series["method"], "others": series["others"], "points": points})
    return result


def ablation_figures(out: Path, result: dict) -> None:
    """`ablation_<field>.png`: success and return (normalized where the task has reference scores) against the
    field's values, one line per series, with the intervals as error bars."""
    for field, all_series in result.items():
        fig = Figure(figsize=(11, 4))
        axes = fig.subplots(1, 2)
        normalized = all(p["normalized_return"] for s in all_series for p in s["points"])
        metrics = (("success", "success rate"),
                   ("normalized_return", "normalized return") if normalized else ("return", "return"))
        for ax, (key, label) in zip(axes, metrics):
            for series in all_series:
                points = [p[key] for p in series["points"]]
                estimates = np.array([p["estimate"] for p in points])
                errors = [estimates - [p["low"] for p in points], [p["high"] for p in points] - estimates]
                name = series["method"] + "".join(f", {k}={v}" for k, v in series["others"].items())
                ax.errorbar(range(len(points)), estimates, yerr=errors, marker="o", capsize=4, label=name)
            ax.set_xticks(range(len(all_series[0]["points"])), [p["value"] for p in all_series[0]["points"]])
            ax.set(xlabel=field, ylabel=label)
            ax.legend(fontsize=8)
        fig.suptitle(f"ablation of {field} (95% CI over seeds, same evaluation episodes)")
        write_figure(out / f"ablation_{field}.png", fig)


def ablation_section(result: dict) -> list[str]:
    """The report's lines: per field, a table of its series and the failure categories each choice changes."""
    if not result:
        return []
    lines = ["", "## Ablations", "",
             "Per varied field: each row's success, return and difference in success from the series' first value "
             "(Newcombe's square-and-add on the same evaluation episodes; rows that share their training are "
             "correlated, which makes it conservative), and the failure categories whose rate the choice changes "
             "(difference interval excluding 0)."]
    for field, all_series in result.items():
        lines += ["", f"### {field}", "", f"![ablation of {field}](ablation_{field}.png)", "",
                  "| row | success | normalized return | difference in success |", "|---|---|---|---|"]
        changes = []
        for series in all_series:
            first = series["points"][0]
            for point in series["points"]:
                normalized = interval_text(point["normalized_return"]) if point["normalized_return"] else "n/a"
                difference = interval_text(point["success_difference"]) if "success_difference" in point else "(first)"
                lines.append(f"| {point['row']} | {interval_text(point['success'])} | {normalized} | {difference} |")
                changed = [f"{category} {d['estimate']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                           for category, d in point.get("failure_differences", {}).items()
                           if d["low"] > 0 or d["high"] < 0]
                if changed:
                    changes.append(f"{point['row']} against {first['row']}: {', '.join(changed)}")
        lines += ["", "Failure categories the choice changes: " + ("; ".join(changes) if changes else
                  "none beyond its interval") + "."]
    return lines
