"""`physgen compare RUN_A RUN_B ...`: one report over several finished `physgen bench` runs, so that a method added
later is compared with the methods of earlier runs without training them again.

The runs must share the task, the training seeds, the evaluation episodes (their count and environment seeds, and
those of the curves' earlier points), the dataset (id and episode count) and the statistics' settings: the report's
intervals are over training seeds and its differences are paired on the same episodes, which holds only when every
row was trained on the same data and evaluated on the same environment seeds. Runs that differ in any of these are
refused with the field and both values. Budgets, `--set` changes and commits may differ: each row's hyperparameters
are in the report, each run's commit, budget, changes and variants in `protocol.json` under `compared_runs`.

Rows keep their names, except that a name found in several runs becomes `name@label` in each of them, the label
being the run's folder name, or where two runs share it, the last two (three, ...) parts of every run's path, as many
as make the labels distinct. The ablation section is kept only when every run varied the same values and no row was
renamed (a renamed row's series would mix runs). Latency is each run's, measured on its own machine; videos and the
world models' open-loop evaluation stay in each run's own report.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from pathlib import Path

from physgen.bench.registry import REGISTRY, bench_command
from physgen.bench.report import write_results_and_report
from physgen.bench.writeup import write_writeup
from physgen.bench.units import latency_path, read_unit
from physgen.envs import get_task
from physgen.errors import PhysgenError
from physgen.io import check_folder, read_json, write_json

# (field path in the experiment, why it must be shared), checked in this order
SHARED = (("task", "the task"), ("episodes", "evaluation episodes"), ("evaluation_seeds", "evaluation episodes"),
          ("curve_episodes", "evaluation episodes"), ("training_seeds", "training seeds"),
          ("dataset.id", "dataset"), ("dataset.episodes", "dataset"), ("statistics", "interval settings"))


class Run:
    """A finished bench run: its folder, protocol, and per row its units (one per training seed) and latency."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.protocol = read_json(folder / "protocol.json")
        if self.protocol is None:
            raise PhysgenError(f"{folder} is not a physgen bench run (no readable protocol.json); pass the --out "
                               "folder of a finished `physgen bench`")
        if "compared_runs" in self.protocol:
            raise PhysgenError(f"{folder} is a comparison, not a bench run; compare the runs it lists instead")
        self.experiment = self.protocol["experiment"]
        unknown = [spec["method"] for spec in self.experiment["rows"].values() if spec["method"] not in REGISTRY]
        if unknown:
            raise PhysgenError(f"{folder} has rows of {', '.join(unknown)}, not a registered method here; "
                               "register it (physgen.bench.register_method) before comparing")
        seeds = self.experiment["training_seeds"]
        self.units = {row: [read_unit(folder, row, s) for s in seeds] for row in self.experiment["rows"]}
        self.latency = {row: read_json(latency_path(folder, row)) for row in self.units}
        lacking = [row for row in self.units if self.latency[row] is None or None in self.units[row]]
        if lacking or read_json(folder / "results.json") is None:
            missing = f"units of {', '.join(lacking)}" if lacking else "results.json"
            command = bench_command(get_task(self.experiment["task"]), self.experiment)
            raise PhysgenError(f"{folder} is unfinished (no {missing}); rerun `{command} --out {folder}` to finish it")


def _field(experiment: dict, path: str):
    for key in path.split("."):
        experiment = experiment[key]
    return experiment


def _check_shared(runs: list[Run]) -> None:
    """Refuse runs that differ from the first in a field the comparison's intervals rely on."""
    first = runs[0]
    for run in runs[1:]:
        for path, what in SHARED:
            mine, theirs = _field(first.experiment, path), _field(run.experiment, path)
            if mine != theirs:
                raise PhysgenError(f"cannot compare {first.folder} and {run.folder}: {path} differs ({mine} and "
                                   f"{theirs}); rows are compared only on the same {what}, so rerun one of them "
                                   "with the other's --task, --seeds, --episodes and dataset")


def _labels(runs: list[Run]) -> list[str]:
    """Each run's label: the fewest trailing path parts, the same number for every run, that tell them apart (the
    whole paths at most, which differ)."""
    for parts in itertools.count(1):
        labels = ["/".join(run.folder.parts[-parts:]) for run in runs]
        if len(set(labels)) == len(labels):
            return labels


def _row_names(runs: list[Run]) -> list[dict[str, str]]:
    """Per run, {its row: the comparison's row}: `name@label` for a name found in several runs."""
    counts = Counter(row for run in runs for row in run.experiment["rows"])
    return [{row: f"{row}@{label}" if counts[row] > 1 else row for row in run.experiment["rows"]}
            for run, label in zip(runs, _labels(runs))]


def _agreed(runs: list[Run], key: str, otherwise):
    """The runs' common value of `key`, or `otherwise` where they differ."""
    values = [run.experiment[key] for run in runs]
    return values[0] if all(v == values[0] for v in values) else otherwise


def _union(runs: list[Run], key: str) -> list:
    """The items of every run's list `key` (None as empty), each once, in order."""
    return list(dict.fromkeys(item for run in runs for item in run.experiment[key] or []))


def _merged_protocol(runs: list[Run], names: list[dict[str, str]]) -> dict:
    """The first run's protocol with every run's rows, renamed by `names`, and a record of the compared runs."""
    renamed = any(row != new for mine in names for row, new in mine.items())
    budgets = ", ".join(dict.fromkeys(run.experiment["budget"] for run in runs))
    experiment = {**runs[0].experiment, "methods": _union(runs, "methods"),
                  # every run's rows, renamed by `names`
                  **{key: {mine[row]: value for run, mine in zip(runs, names)
                           for row, value in run.experiment[key].items()}
                     for key in ("rows", "hyperparameters", "curve_steps")},
                  "budget": budgets, "budget_settings": _agreed(runs, "budget_settings", None),
                  "overrides": _agreed(runs, "overrides", {}), "ppo_left_out": _agreed(runs, "ppo_left_out", None),
                  "variants": {} if renamed else _agreed(runs, "variants", {}),
                  "world_model_datasets": _union(runs, "world_model_datasets") or None}
    compared = [{"folder": str(run.folder), "git_commit": run.protocol["environment"]["git_commit"],
                 "budget": run.experiment["budget"], "overrides": run.experiment["overrides"],
                 "variants": run.experiment["variants"]} for run in runs]
    return {"experiment": experiment, "environment": runs[0].protocol["environment"], "compared_runs": compared}


def _check_out(out: Path) -> Path:
    """`out` if it is missing, empty or an earlier comparison: never a bench run or a folder of other files."""
    check_folder(out, "--out")
    if (out / "units").exists():
        raise PhysgenError(f"--out {out} holds a physgen bench run; pass another folder for the comparison")
    if out.is_dir() and any(out.iterdir()) and "compared_runs" not in (read_json(out / "protocol.json") or {}):
        raise PhysgenError(f"--out {out} holds other files, not an earlier comparison; pass a new or empty folder")
    return out


def compare_runs(runs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write protocol.json, results.json, report.md, writeup.md and figures comparing the rows of finished bench
    `runs` into `out` (default runs/compare/<task>) and return it; every argument is checked before anything is
    written."""
    started = time.perf_counter()
    folders = [Path(run).resolve() for run in runs]
    repeated = [str(folder) for i, folder in enumerate(folders) if folder in folders[:i]]
    if repeated:
        raise PhysgenError(f"{', '.join(repeated)} is given more than once; compare distinct runs")
    if len(folders) < 2:
        raise PhysgenError("compare needs at least two finished bench runs")
    loaded = [Run(folder) for folder in folders]
    _check_shared(loaded)
    task = get_task(loaded[0].experiment["task"])
    out = _check_out(Path(out if out is not None else Path("runs") / "compare" / task.name).absolute())
    names = _row_names(loaded)
    protocol = _merged_protocol(loaded, names)
    units = {mine[row]: records for run, mine in zip(loaded, names) for row, records in run.units.items()}
    latency = {mine[row]: value for run, mine in zip(loaded, names) for row, value in run.latency.items()}
    write_json(out / "protocol.json", protocol)
    write_results_and_report(out, task, protocol, units, latency, time.perf_counter() - started, videos=False,
                             command="physgen compare " + " ".join(str(run) for run in runs) + ", the runs of: "
                             + "; ".join(bench_command(task, run.experiment) for run in loaded))
    write_writeup(out)
    return out
