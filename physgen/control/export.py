"""A policy as one self-contained file: the sampler with its parameters, normalizers and bounds baked in,
serialized with `jax.export` (StableHLO), or as an ONNX model (jax2onnx, the `onnx` extra). Loading a jax export
needs jax and numpy only: no training code, no checkpoint; an ONNX model needs an ONNX runtime only.

    export_checkpoint("runs/hopper/flow/seed_0", "policy.jaxexport")      # `physgen export`
    policy = load_exported("policy.jaxexport")
    chunk = policy.act(obs_history, seed)    # (T_p, act_dim); execute the first `policy.exec_steps`
    export_checkpoint("runs/hopper/flow/seed_0", "policy.onnx", format="onnx")  # (obs_history, noise) -> chunk

`weights=` ("float32", "bfloat16", "int8"; `physgen.policies.quantize`) replaces the config's storage form of the
weight matrices: the file holds them quantized, as constants the program dequantizes, and records the choice.

File layout: MAGIC, the header's length (8 bytes, little-endian), the JSON header, the serialized `Exported`.
The header holds the dimensions, chunking, bounds, task, method, weights and config, and a SHA-256 of the rest of the
header (as sorted JSON) and the serialized bytes: a flipped bit in either is refused. An ONNX model carries the
same fields (less the digest, key and platforms) as JSON in its metadata entry `physgen`.
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
EXPORT_FORMATS = ("jaxexport", "onnx")  # each is also the file extension `physgen export` writes by default
ONNX_INSTALL = "pip install 'physgen[onnx]'"


def export_policy(policy, state, path: str | Path, steps: int | None = None, task: str | None = None,
                  platforms: tuple[str, ...] = PLATFORMS, weights: str | None = None) -> Path:
    """Write `act(policy, state, ...)` for one observation history to `path` (atomically); returns the path.

    The exported function maps (obs_history float32 (T_o, obs_dim), key data uint32 (2,)) to the raw, clipped
    chunk float32 (T_p, act_dim), with `steps` sampler steps (default: the config's), on each of `platforms`;
    `weights` (default: the config's) is the form its weight matrices are stored in.
    """
    from physgen.policies import act, stored_weights  # deferred: loading an export never imports the training code

    path = _check_request(path, steps, policy.config)
    policy, state = stored_weights(policy, state, weights)

    def sample(obs_history, key_data):
        key = jax.random.wrap_key_data(key_data, impl=KEY_IMPL)
        return act(policy, state, obs_history[None], key, steps)[0]

    specs = (jax.ShapeDtypeStruct((policy.config.chunking.obs_steps, policy.obs_dim), jnp.float32),
             jax.ShapeDtypeStruct((2,), jnp.uint32))
    payload = bytes(jax.export.export(jax.jit(sample), platforms=platforms)(*specs).serialize())
    header = {"format": FORMAT, **_header(policy, state, steps, task), "key_impl": KEY_IMPL,
              "platforms": list(platforms)}
    encoded = json.dumps({**header, "sha256": _digest(header, payload)}).encode()
    return write_bytes(path, MAGIC + struct.pack("<Q", len(encoded)) + encoded + payload)


def export_onnx(policy, state, path: str | Path, steps: int | None = None, task: str | None = None,
                weights: str | None = None) -> Path:
    """Write `act(policy, state, ...)` for one observation history to `path` as an ONNX model (atomically).

    The model maps (obs_history float32 (T_o, obs_dim), noise float32 (N, T_p, act_dim)) to the raw, clipped chunk
    float32 (T_p, act_dim). The sampler's N standard normal draws are an input, not a key: ONNX's random operators
    cannot reproduce jax's generator (jax2onnx turns a key's draws into unseeded `RandomUniform`), and given noise
    keeps the model deterministic. `sampler_noise` gives the draws the jax sampler makes from a key; N is
    `noise_draws` in the metadata entry `physgen`. `weights` as for `export_policy`.
    """
    from physgen.policies import act, stored_weights  # deferred, as in export_policy

    path = _check_request(path, steps, policy.config)
    jax2onnx = _import_jax2onnx()
    policy, state = stored_weights(policy, state, weights)
    config = policy.config
    draws = _noise_draws(config, steps)
    specs = (jax.ShapeDtypeStruct((config.chunking.obs_steps, policy.obs_dim), jnp.float32),
             jax.ShapeDtypeStruct((draws, config.chunking.action_steps, policy.act_dim), jnp.float32))
    # the draws of one history: noise[0] the initial chunk, noise[1 + i] reverse step i's (as `sampler_noise`)
    model = jax2onnx.to_onnx(lambda obs_history, noise: act(policy, state, obs_history[None], None, steps,
                                                            noise=noise[:, None])[0],
                             specs, model_name="physgen_policy", input_names=["obs_history", "noise"],
                             output_names=["chunk"])
    model.metadata_props.add(key="physgen", value=json.dumps({**_header(policy, state, steps, task),
                                                               "noise_draws": draws}))
    return write_bytes(path, model.SerializeToString())


def sampler_noise(policy, key, steps: int | None = None) -> np.ndarray:
    """The standard normal draws (N, T_p, act_dim) that `act` makes from `key` (an int seed, a threefry key or its
    data), in the order an ONNX export takes them: given these, it returns what the jax export returns for the
    key. The splits mirror `Policy.sample` and `physgen.policies.diffusion.sample`."""
    key = jax.random.wrap_key_data(_key_data(key), impl=KEY_IMPL)
    shape = (1, policy.config.chunking.action_steps, policy.act_dim)  # act samples a batch of one history
    draws = _noise_draws(policy.config, steps)
    if draws == 0:
        return np.zeros((0, *shape[1:]), np.float32)
    if policy.config.method == "flow":
        return np.asarray(jax.random.normal(key, shape))
    initial, per_step = jax.random.split(key)
    noise = [jax.random.normal(initial, shape)]
    if draws > 1:
        noise += list(jax.vmap(lambda k: jax.random.normal(k, shape))(jax.random.split(per_step, draws - 1)))
    return np.concatenate(noise)


def export_checkpoint(checkpoint: str | Path, out: str | Path, steps: int | None = None,
                      task: str | None = None, format: str = "jaxexport", weights: str | None = None) -> Path:
    """`physgen export`: the EMA policy of a `physgen train` checkpoint as a `format` file (one of
    `EXPORT_FORMATS`) at `out`, its weights stored as `weights` (default: the checkpoint config's)."""
    from physgen import policies  # deferred, as in export_policy

    if format not in EXPORT_FORMATS:
        raise PhysgenError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if weights is not None and weights not in policies.quantize.WEIGHTS:
        raise PhysgenError(f"unknown weights {weights!r}; choose one of {', '.join(policies.quantize.WEIGHTS)}")
    _check_request(out, steps)  # before the checkpoint is read and the sampler traced
    if format == "onnx":
        _import_jax2onnx()  # a missing install too
    policy, state, meta = policies.load_policy(checkpoint, task)
    return (export_onnx if format == "onnx" else export_policy)(policy, state, out, steps, task=meta["task"],
                                                               weights=weights)


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


def _header(policy, state, steps: int | None, task: str | None) -> dict:
    """The fields both formats record: task, method, weights, dimensions, chunking, steps, bounds, config,
    version."""
    config = policy.config
    low, high = (np.broadcast_to(np.asarray(b, np.float32), (policy.act_dim,)).tolist()
                 for b in (state.action_low, state.action_high))
    return {"task": task, "method": config.method, "weights": config.weights, "obs_steps": config.chunking.obs_steps,
            "obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "action_steps": config.chunking.action_steps,
            "exec_steps": config.chunking.exec_steps, "inference_steps": steps or config.inference_steps,
            "action_low": low, "action_high": high, "config": config.as_flat(),
            "physgen_version": physgen.__version__}


def _noise_draws(config, steps: int | None) -> int:
    """How many chunk-shaped normal draws the sampler makes: the initial chunk, and one per step for DDPM and for
    DDIM with eta > 0 (DDIM with eta = 0 draws no step noise); none for BC."""
    if config.method == "bc":
        return 0
    d = config.diffusion
    if config.method == "diffusion" and not (d.sampler == "ddim" and d.ddim_eta == 0.0):
        return 1 + (steps or config.inference_steps)
    return 1


def _import_jax2onnx():
    try:
        import jax2onnx  # deferred: a heavy optional dependency (onnx, onnx-ir, its plugins), for ONNX exports only
    except ImportError:
        raise PhysgenError(f"exporting to ONNX needs jax2onnx; install it with {ONNX_INSTALL}") from None
    return jax2onnx


def _check_request(out: str | Path, steps, config=None) -> Path:
    """Refuse an output path that is a folder and a number of sampler steps that is not a positive integer (or,
    given the policy's `config`, more than a diffusion policy was trained with)."""
    out = Path(out)
    if out.is_dir():
        raise PhysgenError(f"the output {out} is a folder; name the file to write, e.g. {out / 'policy.jaxexport'}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise PhysgenError(f"steps must be a positive integer number of sampler steps, got {steps!r}; leave it "
                           "out for the policy's own")
    if config is not None and config.method == "diffusion" and steps and steps > config.diffusion.train_diffusion_steps:
        raise PhysgenError(f"steps must be at most the {config.diffusion.train_diffusion_steps} diffusion steps the "
                           f"policy was trained with, got {steps}")
    return out
