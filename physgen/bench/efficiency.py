"""Sample efficiency: what the methods that learn by acting (PPO, ppo-wm) take from the real environment.

For each row whose curve is over real environment steps: success and mean return against those steps, with the
report's intervals over seeds at every point, and the real steps each seed needed to reach `TARGET` success (its
first curve point at or above it), summarised by their median with a distribution-free interval over seeds
(`stats.median_interval`; a seed that never got there counts as infinitely many steps, which keeps the interval
valid however many fall short).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from physgen import stats
from physgen.io import write_figure

TARGET = 0.8
AXIS = "real environment steps"


def sample_efficiency(units: dict[str, list[dict]], axis_of: dict[str, str], confidence: float) -> dict:
    """{row: {"points": [{"step", "success", "return"}], "steps_to_target", "reached", "seeds"}} for the rows on the
    real-step axis; an interval's end at infinity (seeds that never reached the target) is None."""
    efficiency = {}
    for row, records in units.items():
        if axis_of[row] != AXIS:
            continue
        points = []
        for i, point in enumerate(records[0]["curve"]):
            counts = [round(r["curve"][i]["success_rate"] * point["episodes"]) for r in records]
            returns = [r["curve"][i].get("returns") for r in records]
            points.append({"step": point["step"],
                           "success": stats.rate_interval(counts, point["episodes"], confidence).as_dict(),
                           "return": (stats.mean_interval(returns, confidence).as_dict()
                                      if all(x is not None for x in returns) else None)})
        steps = [next((float(p["step"]) for p in r["curve"] if p["success_rate"] >= TARGET), math.inf) for r in records]
        interval = stats.median_interval(steps, confidence).as_dict()
        interval["low"] = max(interval["low"], 0.0)  # steps are never negative
        efficiency[row] = {"points": points, "reached": int(np.isfinite(steps).sum()), "seeds": len(steps),
                           "steps_to_target": {k: (v if math.isfinite(v) else None) for k, v in interval.items()}}
    return efficiency


def efficiency_figure(out: Path, efficiency: dict) -> None:
    """`sample_efficiency.png`: success and mean return against real environment steps, bands over seeds."""
    fig = Figure(figsize=(12, 4))
    for ax, (field, label) in zip(fig.subplots(1, 2), (("success", "success rate"), ("return", "mean return"))):
        for row, result in efficiency.items():
            points = [p for p in result["points"] if p[field] is not None]
            steps = [p["step"] for p in points]
            ax.plot(steps, [p[field]["estimate"] for p in points], marker="o", label=row)
            ax.fill_between(steps, [p[field]["low"] for p in points], [p[field]["high"] for p in points], alpha=0.2)
        ax.set(xlabel=AXIS, ylabel=label)
        if field == "success":
            ax.axhline(TARGET, color="gray", ls=":", lw=1)
            ax.set_ylim(-0.02, 1.02)
        ax.legend()
    fig.suptitle("sample efficiency (mean over seeds, 95% CI over seeds)")
    write_figure(out / "sample_efficiency.png", fig)


def _steps_text(interval: dict) -> str:
    def text(v):
        return "never" if v is None else f"{v:,.0f}"

    return f"{text(interval['estimate'])} [{text(interval['low'])}, {text(interval['high'])}]"


def efficiency_section(efficiency: dict) -> list[str]:
    """The report's sample-efficiency section (empty without rows on real environment steps)."""
    if not efficiency:
        return []
    lines = ["## Sample efficiency", "",
             f"Real environment steps per seed until success first reached {TARGET:g} at a curve point (median over "
             "seeds; a distribution-free 95% interval between order statistics, in which a seed that never got "
             "there counts as infinitely many steps, 'never'; with 5 seeds or fewer it spans everything). The "
             "offline methods and `rssm-mpc` take no real steps.", "",
             f"| method | real steps to success {TARGET:g} | seeds that got there |", "|---|---|---|"]
    lines += [f"| {row} | {_steps_text(r['steps_to_target'])} | {r['reached']} of {r['seeds']} |"
              for row, r in efficiency.items()]
    lines += ["", "![sample efficiency](sample_efficiency.png)", ""]
    return lines
