"""Safe files: atomic writes (a temporary file beside the target, then a rename, so a reader never sees half a
file), content digests, output folders checked before work starts, and a lock file that names its holder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from physgen.errors import PhysgenError

LOCK_NAME = "physgen.lock"


def _replace_atomically(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place (removed if `write` fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            write(file)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(path: Path, value) -> None:
    """Write `value` as JSON (numpy arrays and scalars as lists and numbers), atomically."""
    write_text(path, json.dumps(value, indent=1, default=lambda x: np.asarray(x).tolist()))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` atomically (the file's mode follows the umask, as every output's does)."""
    _replace_atomically(path, lambda file: file.write(data))
    return path


def write_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
    """Write `arrays` as one .npz file, atomically."""
    _replace_atomically(path, lambda file: (np.savez_compressed if compressed else np.savez)(file, **arrays))


def write_figure(path: Path, figure, dpi: int = 120) -> None:
    """Write a matplotlib figure as a PNG (its layout tightened first), atomically."""
    figure.tight_layout()
    _replace_atomically(path, lambda file: figure.savefig(file, format="png", dpi=dpi))


def read_json(path: Path):
    """The JSON value in `path`; None when the file is missing or not valid JSON (cut short by a full disk or a
    copy), so that callers redo what it recorded."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def file_digest(path: Path) -> str:
    """SHA-256 of a file's contents, in hex."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_folder(path: Path, what: str, write: bool = True) -> Path:
    """`path` if it is a folder, or can be made one, that this process can write into (`write`) or read: else a
    PhysgenError naming `what` (the option or variable that set it). Called before any work starts, so that a bad
    path fails in one line rather than after training."""
    existing = Path(path)
    while not existing.exists():  # the nearest ancestor that exists decides
        existing = existing.parent
    if not existing.is_dir():
        raise PhysgenError(f"{what} {path} is not a folder ({existing} is a file); choose another folder")
    if write and not os.access(existing, os.W_OK | os.X_OK):
        raise PhysgenError(f"{what} {path} cannot be written ({existing} is read-only); choose another folder or "
                           "make it writable")
    return Path(path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, holder: str):
    """Hold `folder/physgen.lock`, created exclusively and holding this process's pid, for the duration of the block.
    A lock whose process is gone (killed) is taken over; a live one is refused with a PhysgenError naming its pid."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                text = lock.read_text().strip()
            except FileNotFoundError:
                continue  # released meanwhile: try again
            pid = int(text) if text.isdigit() else 0  # empty: its holder was killed before writing its pid
            if pid_alive(pid):
                raise PhysgenError(f"{folder} is in use by another {holder} (pid {pid}); wait for it to end, or pass "
                                   "another --out") from None
            lock.unlink(missing_ok=True)  # stale: its process was killed
    with os.fdopen(descriptor, "w") as file:
        file.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
