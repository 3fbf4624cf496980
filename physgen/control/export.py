"""A policy as one self-contained file: the sampler with its parameters, normalizers and bounds baked in,
serialized with `jax.export` (StableHLO). Loading needs jax and numpy only: no training code, no checkpoint.

    export_checkpoint("runs/hopper/flow/seed_0", "policy.jaxexport")      # `physgen export`
    policy = load_exported("policy.jaxexport")
    chunk = policy.act(obs_history, seed)    # (T_p, act_dim); execute the first `policy.exec_steps`

File layout: MAGIC, the header's length (8 bytes, little-endian), the JSON header, the serialized `Exported`.
The header holds the dimensions, chunking, bounds, task, method and config, and the SHA-256 of the serialized
bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import physgen
from physgen.errors import PhysgenError

MAGIC = b"physgen-jaxexport\n"
FORMAT = 1
KEY_IMPL = "threefry2x32"  # jax's default PRNG; integer seeds map to keys as jax.random.key(seed) does
PLATFORMS = ("cpu", "cuda")


def export_policy(policy, state, path: str | Path, steps: int | None = None, task: str | None = None,
                  platforms: tuple[str, ...] = PLATFORMS) -> Path:
    """Write `act(policy, state, ...)` for one observation history to `path` (atomically); returns the path.

    The exported function maps (obs_history float32 (T_o, obs_dim), key data uint32 (2,)) to the raw, clipped
    chunk float32 (T_p, act_dim), with `steps` sampler steps (default: the config's), on each of `platforms`.
    """
    from physgen.policies import act  # deferred, so that loading an export never imports the training code

    config = policy.config

    def sample(obs_history, key_data):
        key = jax.random.wrap_key_data(key_data, impl=KEY_IMPL)
        return act(policy, state, obs_history[None], key, steps)[0]

    specs = (jax.ShapeDtypeStruct((config.obs_steps, policy.obs_dim), jnp.float32),
             jax.ShapeDtypeStruct((2,), jnp.uint32))
    payload = bytes(jax.export.export(jax.jit(sample), platforms=platforms)(*specs).serialize())
    low, high = (np.broadcast_to(np.asarray(b, np.float32), (policy.act_dim,)).tolist()
                 for b in (state.action_low, state.action_high))
    header = {"format": FORMAT, "task": task, "method": config.method, "obs_steps": config.obs_steps,
              "obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "action_steps": config.action_steps,
              "exec_steps": config.exec_steps, "inference_steps": steps or config.inference_steps,
              "action_low": low, "action_high": high, "key_impl": KEY_IMPL, "platforms": list(platforms),
              "config": dataclasses.asdict(config),
              "physgen_version": physgen.__version__, "sha256": hashlib.sha256(payload).hexdigest()}
    encoded = json.dumps(header).encode()
    return _write_atomically(Path(path), MAGIC + struct.pack("<Q", len(encoded)) + encoded + payload)


def export_checkpoint(checkpoint: str | Path, out: str | Path, steps: int | None = None,
                      task: str | None = None) -> Path:
    """`physgen export`: the EMA policy of a `physgen train` checkpoint as an exported file at `out`."""
    from physgen.policies import load_policy  # deferred, as in export_policy

    policy, state, meta = load_policy(checkpoint, task)
    return export_policy(policy, state, out, steps, task=meta["task"])


class ExportedPolicy:
    """A loaded export: `act(obs_history, key) -> chunk (T_p, act_dim)`, and the header's fields."""

    def __init__(self, header: dict, exported: jax.export.Exported):
        self.header = header
        self.task, self.method = header["task"], header["method"]
        self.obs_steps, self.obs_dim, self.act_dim = header["obs_steps"], header["obs_dim"], header["act_dim"]
        self.action_steps, self.exec_steps = header["action_steps"], header["exec_steps"]
        self.action_low = np.asarray(header["action_low"], np.float32)
        self.action_high = np.asarray(header["action_high"], np.float32)
        self._call = jax.jit(exported.call)

    def act(self, obs_history, key=0) -> np.ndarray:
        """The raw, clipped chunk for a raw history (T_o, obs_dim); `key` is an int seed (as
        `jax.random.key`), a threefry key, or its raw data uint32 (2,)."""
        obs = np.asarray(obs_history, np.float32)
        if obs.shape != (self.obs_steps, self.obs_dim):
            raise PhysgenError(f"observation history has shape {obs.shape}, the exported policy expects "
                               f"{(self.obs_steps, self.obs_dim)} (obs_steps x obs_dim)")
        if not np.all(np.isfinite(obs)):
            raise PhysgenError("observation history holds NaN or Inf; check the sensor or state estimator")
        return np.asarray(self._call(obs, _key_data(key)))


def load_exported(path: str | Path) -> ExportedPolicy:
    """Read a file written by `export_policy` / `physgen export`."""
    path = Path(path)
    fix = f"create it with `physgen export --checkpoint CHECKPOINT --out {path}`"
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise PhysgenError(f"cannot read exported policy {path} ({error.strerror}); {fix}") from None
    if not blob.startswith(MAGIC):
        raise PhysgenError(f"{path} is not a physgen exported policy (it does not start with {MAGIC!r}); "
                           f"{fix}")
    try:
        (size,) = struct.unpack_from("<Q", blob, len(MAGIC))
        start = len(MAGIC) + 8
        header, payload = json.loads(blob[start:start + size]), blob[start + size:]
        intact = header["sha256"] == hashlib.sha256(payload).hexdigest()
    except (struct.error, ValueError, KeyError, TypeError):
        intact = False
    if not intact:
        raise PhysgenError(f"exported policy {path} is truncated or corrupt; {fix} again")
    if header.get("format") != FORMAT:
        raise PhysgenError(f"exported policy {path} has format {header.get('format')}, this physgen reads "
                           f"format {FORMAT}; export it again with this version")
    try:
        exported = jax.export.deserialize(bytearray(payload))
    except Exception as error:  # the serialization version of another jax release, among others
        raise PhysgenError(f"exported policy {path} could not be deserialized by jax {jax.__version__} "
                           f"({type(error).__name__}: {error}); export it again with this jax") from None
    return ExportedPolicy(header, exported)


def _key_data(key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key), impl=KEY_IMPL)
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    data = np.asarray(key)
    if data.shape != (2,) or data.dtype != np.uint32:
        raise PhysgenError(f"key must be an int seed, a threefry key or its data uint32 (2,), got "
                           f"{data.dtype} {data.shape}")
    return data


def _write_atomically(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path
