"""What a bench method declares (`Method`) and what its run is given (`Job`); `physgen.bench.registry` holds them.

A method trains every seed of a run together, turns what it trained into an agent, evaluates it with the job's
`Curves` at its curve points (the last one on every evaluation episode), and writes its latency and its units.
A job holds one or more variants (rows of the report) of the method that differ only in its `evaluation_fields`:
they share one training, and each is evaluated and written under its own row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from physgen.bench.units import Curves, Evaluation, latency_path
from physgen.io import write_json
from physgen.envs import Task


class Variant(NamedTuple):
    """One row of the report: a method with its `--vary` values."""

    row: str  # the method's name, with the varied fields in brackets: `flow[exec_steps=2]`
    varied: dict[str, str]  # {field: value as given}
    hyperparameters: dict  # as protocol.json holds them
    config: Any  # the config(s) they describe (`Method.configure`)
    pending: list[int]  # the seeds whose units are to be written


class Job(NamedTuple):
    """One training of a method in a run, and the variants (at least one) evaluated on what it trained."""

    out: Path
    task: Task
    seeds: list[int]
    variants: list[Variant]
    evaluation: Evaluation
    train: Any  # the expert dataset's training split (Trajectories)
    advance: Callable[[int], None]  # progress: training work done per seed

    @property
    def config(self) -> Any:
        """The config to train with: the first variant's (the others differ only in evaluation fields)."""
        return self.variants[0].config

    @property
    def hyperparameters(self) -> dict:
        return self.variants[0].hyperparameters

    def finish(self, curves: Curves, latency: dict, variant: Variant | None = None) -> None:
        """Write a variant's (default: the first's) latency (its first seed's, machine-dependent, so kept apart from
        the outcomes; first, so that a run killed between them resumes with it) and its pending units."""
        variant = variant or self.variants[0]
        write_json(latency_path(self.out, variant.row), latency)
        curves.write_units(self.out, variant.row, variant.pending)


@dataclass(frozen=True)
class Method:
    """A method of `physgen bench`. `hyperparameters(task, budget)` is its whole config as flat JSON; `work` reads
    the training work per seed (the progress bar's unit) from it; `configure` builds the config(s) it describes,
    refusing a bad value (run before anything trains); `load(path, task)` gives the (agent, parameters) of a
    checkpoint it wrote, for `physgen video` and `sweep-steps`."""

    name: str
    hyperparameters: Callable[[Task, str], dict]
    run: Callable[[Job], None]
    work: Callable[[dict], int]
    online: bool = False  # learns by acting: joins the default methods only where the budget allows
    default: bool = True  # joins the default methods (False: run only when named with --methods)
    generative: bool = False  # compared against the non-generative methods (P(improvement), differences)
    frames: bool = False  # learns from camera frames too (a task's image variant: physgen.envs.images)
    curve_axis: str = "gradient steps"
    curve_steps: Callable[[dict], list[int]] | None = None  # fixed in the protocol where known before training
    datasets: Callable[[Task], list[str]] | None = None  # datasets it learns from besides the expert one
    load: Callable[[Path, str | None], tuple] | None = None
    configure: Callable[[dict], Any] = dict
    evaluation_fields: tuple[str, ...] = ()  # change how it acts, not what it learns: variants share its training
