"""Atomic writes: a temporary file beside the target, then a rename, so a reader never sees half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def write_json(path: Path, value) -> None:
    """Write `value` as JSON (numpy arrays and scalars as lists and numbers), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1, default=lambda x: np.asarray(x).tolist()))
    os.replace(partial, path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
