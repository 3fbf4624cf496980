"""Orbax checkpoints holding a model's arrays (parameters, EMA, normalizers) and the JSON that rebuilds it.

`meta` holds at least `method`, `task` and `config` (a dict of the frozen config dataclass), so a checkpoint loads
with nothing else. Orbax writes into a temporary folder and renames it when complete: a crash leaves no checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

import physgen
from physgen.errors import PhysgenError

REQUIRED_META = ("method", "task", "config")


def save_checkpoint(path: str | Path, arrays: Any, meta: dict) -> Path:
    """Write `arrays` (a pytree of arrays, e.g. pure dicts) and `meta` (JSON) to `path`, replacing what was there."""
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    meta = {**meta, "physgen_version": physgen.__version__}
    if dataclasses.is_dataclass(meta["config"]):
        meta["config"] = dataclasses.asdict(meta["config"])
    path = Path(path).absolute()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(path, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
                          force=True)
    return path


def load_checkpoint(path: str | Path, task: str | None = None) -> tuple[Any, dict]:
    """(arrays, meta) of a checkpoint; with `task`, refuse a checkpoint trained on another task."""
    path = Path(path).absolute()
    if not (path / "meta").is_dir() or not (path / "arrays").is_dir():
        raise PhysgenError(f"{path} is not a physgen checkpoint (no arrays/ and meta/ inside); pass the folder that "
                           "`physgen train` wrote")
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(path, ocp.args.Composite(arrays=ocp.args.StandardRestore(),
                                                                     meta=ocp.args.JsonRestore()))
    except Exception as error:  # orbax raises many types for truncated or foreign files
        raise PhysgenError(f"checkpoint {path} could not be read ({type(error).__name__}: {error}); it is corrupt "
                           "or incomplete: train it again") from None
    meta = restored["meta"]
    if task is not None and meta.get("task") != task:
        raise PhysgenError(f"checkpoint {path} was trained on task {meta.get('task')!r}, not {task!r}")
    return restored["arrays"], meta
