"""ONNX export (jax2onnx): the model maps an observation history and the sampler's normal draws to the chunk that the
in-process policy and the jax export sample from the key those draws come from, on every sampler path; bad
requests are refused before any work."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from physgen import PhysgenError
from physgen.cli import main
from physgen.control import export_checkpoint, export_onnx, load_exported, sampler_noise
from physgen.data import Normalizer
from physgen.envs import get_task
from physgen.policies import Policy, PolicyConfig, PolicyState, TrainedPolicies, act, save_policy

SMALL = dict(hidden=32, depth=2, time_dim=16, obs_steps=2, action_steps=8, exec_steps=4, inference_steps=3)
OBS_DIM, ACT_DIM = 6, 2  # fork's, so that a policy can be checkpointed
LOW, HIGH = np.array([-1.0, 0.5], np.float32), np.array([1.0, 2.0], np.float32)
# float32 keeps about 7 significant digits, and onnxruntime and XLA order sums and approximate tanh, exp and softplus
# (Mish) with different kernels, so each operation may differ in its last bits; the sampler's steps compound
# that (a diffusion step divides by sqrt(1 - alpha_bar)). Actions are of order 1: 1e-4 is some 800 float32 steps
# (ulps) at 1.0, and a wrong draw, step or normalizer moves actions by orders of magnitude more (checked below).
ATOL = 1e-4
# jax2onnx's flax plugins read parameters through nnx's deprecated `.value`: its warning, not physgen's
pytestmark = pytest.mark.filterwarnings("ignore:'.value' access is now deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("jax2onnx", reason="the onnx extra is not installed: pip install 'physgen[onnx]'")
    return pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'physgen[onnx]'")


def tiny(**changes):
    """A randomly initialized policy with hand-made normalizers: the export's mechanics need no training."""
    policy, params = Policy.create(PolicyConfig.of(**{**SMALL, **changes}), OBS_DIM, ACT_DIM, jax.random.key(0))
    obs_norm = Normalizer(jnp.linspace(-0.5, 0.5, OBS_DIM), jnp.full(OBS_DIM, 1.5))
    act_norm = Normalizer(jnp.array([0.1, 1.0]), jnp.array([0.8, 0.9]))
    return policy, PolicyState(params, obs_norm, act_norm, jnp.asarray(LOW), jnp.asarray(HIGH))


def session(ort, path):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime warns about every unused constant jax2onnx leaves in the graph
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def histories():
    rng = np.random.default_rng(2)
    # the last one is far outside the normalizer's range: the observation clip must be in the model too
    return [rng.normal(size=(SMALL["obs_steps"], OBS_DIM)).astype(np.float32) for _ in range(3)] + [
        np.full((SMALL["obs_steps"], OBS_DIM), 40.0, np.float32)]


CASES = [  # config changes, sampler steps asked for, normal draws expected (the initial chunk, then one per step)
    (dict(method="flow"), None, 1),
    (dict(method="flow", integrator="midpoint"), None, 1),
    (dict(method="flow", target="sample"), None, 1),
    (dict(method="diffusion"), None, 1),  # DDIM with eta = 0 draws no step noise
    (dict(method="diffusion", sampler="ddpm"), None, 1 + SMALL["inference_steps"]),
    (dict(method="diffusion", ddim_eta=0.5, prediction="epsilon", schedule="linear"), None,
     1 + SMALL["inference_steps"]),
    (dict(method="diffusion", sampler="ddpm"), 20, 21),  # over 16 steps the sampler's loop stays rolled
    (dict(method="diffusion", network="unet", unet_dims=(16, 32)), None, 1),
    (dict(method="bc"), None, 0),
]


@pytest.mark.parametrize("changes, steps, draws", CASES)
def test_the_onnx_model_samples_what_the_policy_samples_given_the_same_draws(ort, tmp_path, changes, steps, draws):
    policy, state = tiny(**changes)
    model = session(ort, export_onnx(policy, state, tmp_path / "policy.onnx", steps, task="fork"))
    header = json.loads(model.get_modelmeta().custom_metadata_map["physgen"])
    assert (header["task"], header["method"], header["noise_draws"], header["inference_steps"]) == (
        "fork", changes["method"], draws, steps or SMALL["inference_steps"])
    assert [(i.name, i.shape) for i in model.get_inputs()] == [
        ("obs_history", [SMALL["obs_steps"], OBS_DIM]), ("noise", [draws, SMALL["action_steps"], ACT_DIM])]
    in_process = jax.jit(lambda history, key: act(policy, state, history[None], key, steps)[0])
    for seed, history in enumerate(histories()):
        noise = sampler_noise(policy, seed, steps)
        assert noise.shape == (draws, SMALL["action_steps"], ACT_DIM) and noise.dtype == np.float32
        (chunk,) = model.run(None, {"obs_history": history, "noise": noise})
        assert chunk.shape == (SMALL["action_steps"], ACT_DIM) and np.all(chunk >= LOW) and np.all(chunk <= HIGH)
        np.testing.assert_allclose(chunk, in_process(history, jax.random.key(seed)), rtol=0, atol=ATOL)
    if draws:  # other draws move the chunk far beyond the tolerance: the comparison above tells a wrong draw
        history, noise = histories()[0], sampler_noise(policy, 0, steps)
        chunk, other = (model.run(None, {"obs_history": history, "noise": z})[0] for z in (noise, -noise))
        assert np.abs(other - chunk).max() > 100 * ATOL


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_a_quantized_onnx_model_samples_what_the_policy_samples_with_those_weights(ort, tmp_path, weights):
    policy, state = tiny(method="flow")
    full = export_onnx(policy, state, tmp_path / "float32.onnx")
    path = export_onnx(policy, state, tmp_path / f"{weights}.onnx", weights=weights)
    model = session(ort, path)
    header = json.loads(model.get_modelmeta().custom_metadata_map["physgen"])
    assert header["weights"] == header["config"]["weights"] == weights
    assert path.stat().st_size < full.stat().st_size  # the weight matrices are stored in fewer bits
    quantized = policy._replace(config=policy.config.replace(weights=weights))
    in_process = jax.jit(lambda history, key: act(quantized, state, history[None], key)[0])
    unquantized = jax.jit(lambda history, key: act(policy, state, history[None], key)[0])
    apart = 0.0
    for seed, history in enumerate(histories()):
        (chunk,) = model.run(None, {"obs_history": history, "noise": sampler_noise(policy, seed)})
        np.testing.assert_allclose(chunk, in_process(history, jax.random.key(seed)), rtol=0, atol=ATOL)
        apart = max(apart, np.abs(chunk - unquantized(history, jax.random.key(seed))).max())
    assert apart > ATOL  # the tolerance tells the weights apart: the float32 policy's chunks are farther away


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    policy, state = tiny(method="diffusion", sampler="ddpm")
    stacked = jax.tree.map(lambda x: x[None], state)
    trained = TrainedPolicies(policy, stacked, stacked.params, np.zeros((1, 0)), (0,))
    return save_policy(tmp_path_factory.mktemp("checkpoint") / "seed_0", get_task("fork"), trained, 0), policy


def test_physgen_export_onnx_matches_the_jax_export_of_the_same_checkpoint(ort, checkpoint, tmp_path, monkeypatch,
                                                                           capsys):
    path, policy = checkpoint
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--checkpoint", str(path), "--format", "onnx"]) == 0  # --out after the format
    assert capsys.readouterr().out.startswith("wrote policy.onnx (")
    assert main(["export", "--checkpoint", str(path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.jaxexport", "policy.onnx"]
    steps = 5
    model = session(ort, export_checkpoint(path, tmp_path / "five.onnx", steps, format="onnx"))
    exported = load_exported(export_checkpoint(path, tmp_path / "five.jaxexport", steps))
    assert json.loads(model.get_modelmeta().custom_metadata_map["physgen"])["action_low"] == [-1.0, -1.0]
    for seed, history in enumerate(histories()):
        (chunk,) = model.run(None, {"obs_history": history, "noise": sampler_noise(policy, seed, steps)})
        np.testing.assert_allclose(chunk, exported.act(history, seed), rtol=0, atol=ATOL)
    model = session(ort, export_checkpoint(path, tmp_path / "int8.onnx", steps, format="onnx", weights="int8"))
    exported = load_exported(export_checkpoint(path, tmp_path / "int8.jaxexport", steps, weights="int8"))
    assert exported.header["weights"] == "int8"
    for seed, history in enumerate(histories()):
        (chunk,) = model.run(None, {"obs_history": history, "noise": sampler_noise(policy, seed, steps)})
        np.testing.assert_allclose(chunk, exported.act(history, seed), rtol=0, atol=ATOL)


def test_bad_onnx_requests_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no_checkpoint"  # never read: every request is refused first
    with pytest.raises(PhysgenError, match="unknown export format 'tflite'; choose one of jaxexport, onnx"):
        export_checkpoint(missing, tmp_path / "policy.tflite", format="tflite")
    assert main(["export", "--checkpoint", str(missing), "--format", "tflite", "--out", str(tmp_path / "p")]) == 2
    assert "unknown export format 'tflite'" in capsys.readouterr().err
    with pytest.raises(PhysgenError, match="steps must be a positive integer"):
        export_checkpoint(missing, tmp_path / "policy.onnx", steps=0, format="onnx")
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # importing it now fails, as where it is not installed
    with pytest.raises(PhysgenError, match=r"needs jax2onnx; install it with pip install 'physgen\[onnx\]'"):
        export_checkpoint(missing, tmp_path / "policy.onnx", format="onnx")
    with pytest.raises(PhysgenError, match="needs jax2onnx"):
        export_onnx(*tiny(method="flow"), tmp_path / "policy.onnx")
    assert not any(tmp_path.iterdir())
