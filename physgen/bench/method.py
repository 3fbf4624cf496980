"""What a bench method declares (`Method`) and what its run is given (`Job`); `physgen.bench.registry` holds them.

A method trains every seed of a run together, turns what it trained into an agent, evaluates it with the job's
`Curves` at its curve points (the last one on every evaluation episode), and writes its latency and its units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from physgen.bench.units import Curves, Evaluation, write_latency
from physgen.envs import Task


class Job(NamedTuple):
    """One method's share of a run."""

    out: Path
    task: Task
    seeds: list[int]
    pending: list[int]  # the seeds whose units are to be written
    evaluation: Evaluation
    hyperparameters: dict  # the method's, as protocol.json holds them
    config: Any  # the config(s) they describe (`Method.configure`)
    train: Any  # the expert dataset's training split (Trajectories)
    advance: Callable[[int], None]  # progress: training work done per seed

    def finish(self, method: str, curves: Curves, latency: dict) -> None:
        """Write the latency (first, so that a run killed between them resumes with it) and the pending units."""
        write_latency(self.out, method, latency)
        curves.write_units(self.out, method, self.pending)


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
    generative: bool = False  # compared against the non-generative methods (P(improvement), differences)
    curve_axis: str = "gradient steps"
    curve_steps: Callable[[dict], list[int]] | None = None  # fixed in the protocol where known before training
    datasets: Callable[[Task], list[str]] | None = None  # datasets it learns from besides the expert one
    load: Callable[[Path, str | None], tuple] | None = None
    configure: Callable[[dict], Any] = dict
