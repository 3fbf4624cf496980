"""A policy as one self-contained file: the sampler with its parameters, normalizers and bounds baked in,
serialized with `jax.export` (StableHLO). Loading needs jax and numpy only: no training code, no checkpoint.

    export_checkpoint("runs/hopper/flow/seed_0", "policy.jaxexport")      # `physgen export`
    policy = load_exported("policy.jaxexport")
    chunk = policy.act(obs_history, seed)    # (T_p, act_dim); execute the first `policy.exec_steps`

File layout: MAGIC, the header's length (8 bytes, little-endian), the JSON header, the serialized `Exported`.
The header holds the dimensions, chunking, bounds, task, method and config, and a SHA-256 of the rest of the
header (as sorted JSON) and the serialized bytes: a flipped bit in either is refused.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import physgen
from physgen.errors import PhysgenError
from physgen.io import write_bytes

MAGIC = b"physgen-jaxexport\n"
FORMAT = 2  # 2: the digest covers the header too
KEY_IMPL = "threefry2x32"  # jax's default PRNG; integer seeds map to keys as jax.random.key(seed) does
PLATFORMS = ("cpu", "cuda")


def export_policy(policy, state, path: str | Path, steps: int | None = None, task: str | None = None,
                  platforms: tuple[str, ...] = PLATFORMS) -> Path:
    """Write `act(policy, state, ...)` for one observation history to `path` (atomically); returns the path.

    The exported function maps (obs_history float32 (T_o, obs_dim), key data uint32 (2,)) to the raw, clipped
    chunk float32 (T_p, act_dim), with `steps` sampler steps (default: the config's), on each of `platforms`.
    """
    from physgen.policies import act  # deferred, so that loading an export never imports the training code

    path = _check_request(path, steps)
    config = policy.config
    if config.method == "diffusion" and steps is not None and steps > config.diffusion.train_diffusion_steps:
        raise PhysgenError(f"steps must be at most the {config.diffusion.train_diffusion_steps} diffusion steps the "
                           f"policy was trained with, got {steps}")

    def sample(obs_history, key_data):
        key = jax.random.wrap_key_data(key_data, impl=KEY_IMPL)
        return act(policy, state, obs_history[None], key, steps)[0]

    specs = (jax.ShapeDtypeStruct((config.chunking.obs_steps, policy.obs_dim), jnp.float32),
             jax.ShapeDtypeStruct((2,), jnp.uint32))
    payload = bytes(jax.export.export(jax.jit(sample), platforms=platforms)(*specs).serialize())
    low, high = (np.broadcast_to(np.asarray(b, np.float32), (policy.act_dim,)).tolist()
                 for b in (state.action_low, state.action_high))
    header = {"format": FORMAT, "task": task, "method": config.method, "obs_steps": config.chunking.obs_steps,
              "obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "action_steps": config.chunking.action_steps,
              "exec_steps": config.chunking.exec_steps, "inference_steps": steps or config.inference_steps,
              "action_low": low, "action_high": high, "key_impl": KEY_IMPL, "platforms": list(platforms),
              "config": config.as_flat(),
              "physgen_version": physgen.__version__}
    encoded = json.dumps({**header, "sha256": _digest(header, payload)}).encode()
    return write_bytes(path, MAGIC + struct.pack("<Q", len(encoded)) + encoded + payload)


def export_checkpoint(checkpoint: str | Path, out: str | Path, steps: int | None = None,
                      task: str | None = None) -> Path:
    """`physgen export`: the EMA policy of a `physgen train` checkpoint as an exported file at `out`."""
    from physgen.policies import load_policy  # deferred, as in export_policy

    _check_request(out, steps)  # before the checkpoint is read and the sampler traced
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
            raise PhysgenError("observation history holds NaN or Inf (or a value beyond float32); check the sensor "
                               "or state estimator")
        chunk = np.asarray(self._call(obs, _key_data(key)))
        if not np.all(np.isfinite(chunk)):  # clipping keeps NaN: a broken export must not reach the actuators
            raise PhysgenError("the exported policy produced a non-finite chunk; export it again from a checkpoint "
                               "that loads")
        return chunk


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
    corrupt = PhysgenError(f"exported policy {path} is truncated or corrupt; {fix} again")
    try:
        (size,) = struct.unpack_from("<Q", blob, len(MAGIC))
        start = len(MAGIC) + 8
        header, payload = json.loads(blob[start:start + size]), blob[start + size:]
        version = header.get("format")
    except (struct.error, ValueError, AttributeError):
        raise corrupt from None
    if version != FORMAT:
        raise PhysgenError(f"exported policy {path} has format {version}, this physgen reads format {FORMAT}; "
                           "export it again with this version")
    if header.get("sha256") != _digest(header, payload):
        raise corrupt
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


def _digest(header: dict, payload: bytes) -> str:
    """SHA-256 of the header (less its digest) as sorted JSON, then the payload."""
    fields = json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode()
    return hashlib.sha256(fields + payload).hexdigest()


def _check_request(out: str | Path, steps) -> Path:
    """Refuse an output path that is a folder and a number of sampler steps that is not a positive integer."""
    out = Path(out)
    if out.is_dir():
        raise PhysgenError(f"the output {out} is a folder; name the file to write, e.g. {out / 'policy.jaxexport'}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise PhysgenError(f"steps must be a positive integer number of sampler steps, got {steps!r}; leave it "
                           "out for the policy's own")
    return out
