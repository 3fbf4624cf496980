"""Experiment files: a bench run's task, methods, seeds, budget, `--set` changes and `--vary` values in TOML.

    task = "fork"
    budget = "quick"
    methods = ["diffusion", "bc"]
    seeds = 10
    episodes = 10
    dataset = "expert-v0"   # physgen's own (generated when missing), or any local Minari dataset id

    [set]
    steps = 4000

    [vary]
    exec_steps = [1, 4, 8]

Every run writes its own as `experiment.toml` (defaults filled in), so `physgen bench --config RUN/experiment.toml
--out NEW` reproduces it. Values are TOML's own (a tuple field's value is an array, `ensemble = "null"` turns temporal
ensembling off) and are read as `--set` and `--vary` read their text.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from physgen.envs import task_reference
from physgen.errors import PhysgenError

KEYS = {"task": str, "budget": str, "methods": list, "seeds": int, "episodes": int, "dataset": str, "set": dict,
        "vary": dict}


def _text(value) -> str:
    """A TOML value as the text `--set` would take for it."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def flatten_table(table: dict, prefix: str = "") -> dict:
    """A table with its nested tables' keys dotted: `{"rssm": {"steps": 60}}` (TOML's `rssm.steps = 60`, or the
    world-model methods' nested hyperparameters) as `{"rssm.steps": 60}`."""
    flat = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        flat.update(flatten_table(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def read_experiment(path: str | Path) -> dict:
    """The `run_bench` arguments an experiment file holds (task, methods, seeds, episodes, budget, dataset,
    overrides, variants), each checked for its type; a missing file, bad TOML or an unknown key is refused."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise PhysgenError(f"cannot read the experiment file {path} ({error.strerror}); pass an existing .toml "
                           "file to --config") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise PhysgenError(f"{path} is not valid TOML ({error}); fix it, or copy one from experiments/") from None
    unknown = [key for key in data if key not in KEYS]
    wrong = [f"{key} (a {KEYS[key].__name__})" for key, value in data.items()
             if key in KEYS and (type(value) is not KEYS[key])]
    if unknown or wrong or "task" not in data:
        problem = (f"unknown keys {', '.join(unknown)}" if unknown else f"wrong types: {', '.join(wrong)}" if wrong
                   else "no task")
        raise PhysgenError(f"{path}: {problem}; an experiment file has task and optionally budget, methods, seeds, "
                           "episodes, dataset, [set] and [vary]")
    changes, vary = flatten_table(data.get("set", {})), flatten_table(data.get("vary", {}))
    if not all(isinstance(values, list) and values for values in vary.values()):
        raise PhysgenError(f"{path}: every [vary] entry takes a non-empty array of values, e.g. exec_steps = [1, 4]")
    return {"task_name": data["task"], "methods": data.get("methods"), "seeds": data.get("seeds"),
            "episodes": data.get("episodes"), "budget": data.get("budget", "quick"),
            "dataset": data.get("dataset", "expert-v0"),
            "overrides": {name: _text(value) for name, value in changes.items()} or None,
            "variants": {name: [_text(v) for v in values] for name, values in vary.items()} or None}


def _literal(text: str) -> str:
    """A value's text as a TOML literal: a number or boolean as itself where it reads back as the same text, else a
    string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    return text if isinstance(value, (bool, int, float)) and _text(value) == text else json.dumps(text)


def experiment_toml(experiment: dict) -> str:
    """The experiment file of a run's protocol experiment (`physgen.bench.protocol.make_protocol`)."""
    lines = ["# physgen bench --config <this file> --out <folder> reproduces the run this file was written by",
             f"task = {json.dumps(task_reference(experiment['task']))}", f"budget = {json.dumps(experiment['budget'])}",
             f"methods = {json.dumps(experiment['methods'])}", f"seeds = {len(experiment['training_seeds'])}",
             f"episodes = {experiment['episodes']}", f"dataset = {json.dumps(experiment['dataset']['id'])}"]
    if experiment["overrides"]:
        lines += ["", "[set]", *(f"{name} = {_literal(text)}" for name, text in experiment["overrides"].items())]
    if experiment["variants"]:
        lines += ["", "[vary]", *(f"{name} = [{', '.join(_literal(t) for t in texts)}]"
                                  for name, texts in experiment["variants"].items())]
    return "\n".join(lines) + "\n"
