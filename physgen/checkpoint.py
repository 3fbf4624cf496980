"""Orbax checkpoints holding a model's arrays (parameters, EMA, normalizers) and the JSON that rebuilds it.

`meta` holds at least `method`, `task` and `config` (a dict of the frozen config dataclass), so a checkpoint loads
with nothing else. Orbax writes into a temporary folder and renames it when complete: a crash leaves no checkpoint.
Orbax checks nothing on reading, so `meta["sha256"]` holds a digest of the arrays and the rest of meta, checked on
loading: a flipped byte would otherwise load as different (often NaN) weights.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import gc
import json
import logging
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
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
    if dataclasses.is_dataclass(meta["config"]):  # configs made of parts are written flat
        config = meta["config"]
        meta["config"] = config.as_flat() if hasattr(config, "as_flat") else dataclasses.asdict(config)
    if jax.process_count() > 1:  # orbax refuses arrays held by one process of several; numpy it writes
        arrays = jax.device_get(arrays)
    meta["sha256"] = _digest(arrays, meta)
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
    previous_hook = _filter_closed_loop_callbacks()
    try:
        # a read of this process alone, onto its first device: with several processes one process may load a
        # checkpoint the others do not (process 0 generating a dataset), and a checkpoint's devices (one process's)
        # need not exist in this one
        alone = ocp.options.MultiprocessingOptions(jax.process_index(), {jax.process_index()})
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler(), multiprocessing_options=alone) as checkpointer:
            restored = checkpointer.restore(path, ocp.args.Composite(
                arrays=ocp.args.StandardRestore(fallback_sharding=here), meta=ocp.args.JsonRestore()))
    except Exception as error:  # orbax raises many types for truncated or foreign files
        # TensorStore's messages carry its whole spec (over 1,000 characters): keep the start of the first line
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    else:
        reason = None
    if reason is not None:  # outside `except`, so that nothing keeps the failed reads' frames alive
        if _late_read not in logging.getLogger("asyncio").filters:
            logging.getLogger("asyncio").addFilter(_late_read)
        _collect_failed_reads()
        raise PhysgenError(f"checkpoint {path} could not be read ({reason}); it is corrupt or incomplete: train it "
                           "again")
    sys.unraisablehook = previous_hook  # kept after a failure: the other reads finish later
    arrays, meta = restored["arrays"], restored["meta"]
    # checkpoints written before digests (the shipped experts among them) have none to check
    if not isinstance(meta, dict) or ("sha256" in meta and meta["sha256"] != _digest(arrays, meta)):
        raise PhysgenError(f"checkpoint {path} is corrupt: its arrays or meta do not match the SHA-256 saved with "
                           "them; train it again or restore it from a backup")
    if task is not None and meta.get("task") != task:
        raise PhysgenError(f"checkpoint {path} was trained on task {meta.get('task')!r}, not {task!r}")
    return arrays, meta


def _digest(arrays: Any, meta: dict) -> str:
    """SHA-256 of meta (less its digest) and of every array's name, dtype, shape and bytes, in name order.

    Names join the tree path's keys as strings: orbax restores integer keys and list indices as string keys."""
    sha = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    named = [("/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path), leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]]
    for name, leaf in sorted(named, key=lambda item: item[0]):
        array = np.ascontiguousarray(leaf)
        sha.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def _filter_closed_loop_callbacks():
    """Install `_drop_closed_loop_callbacks` before `sys.unraisablehook` (once); return the hook it replaced."""
    hook = sys.unraisablehook
    if getattr(hook, "func", None) is not _drop_closed_loop_callbacks:
        sys.unraisablehook = functools.partial(_drop_closed_loop_callbacks, hook)
    return hook


def _drop_closed_loop_callbacks(previous_hook, unraisable) -> None:
    """When one read fails, orbax closes its event loop while TensorStore still finishes the others, whose
    callbacks then fail with "Event loop is closed", each printed as a traceback: drop those, pass on the rest."""
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
        previous_hook(unraisable)


def _late_read(record: logging.LogRecord) -> bool:
    """False (drop it) for asyncio's report of a read that failed after the load had already failed: collected
    later than `_collect_failed_reads`, it would print the whole TensorStore spec."""
    return "tensorstore_spec" not in record.getMessage()


def _collect_failed_reads() -> None:
    """Free the tasks of the reads that failed beside the first one, with asyncio's log off: each would log
    "Task exception was never retrieved" and its whole TensorStore spec when the garbage collector found it."""
    log = logging.getLogger("asyncio")
    disabled, log.disabled = log.disabled, True
    try:
        gc.collect()
    finally:
        log.disabled = disabled
