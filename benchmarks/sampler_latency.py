"""Latency of a full `act(obs)` call (numpy in, numpy out, after warm-up) and compile time, beside eager PyTorch.

physgen: `PolicyRunner.act` (one compiled program: normalize, sample, unnormalize, clip) for
  - MLP flow, 10 Euler steps (target p99 <= 200 us), MLP DDIM with 10 and 100 steps,
  - the one-step student of that MLP flow (`physgen distill`: one Euler step; target p99 <= 200 us),
  - the two MLP flow programs again with their weight matrices stored as bfloat16 and as int8 (per-channel scales,
    `physgen.policies.quantize`), each with its ratio to the float32 row of the same run,
  - the MLP flow and DDIM 10-step samplers guided by real-time chunking ("rtc": a chunk guided towards a previous
    one, delay 2, as the Controller's worker samples it; `physgen.policies.guidance`), with its ratio,
  - ConditionalUnet1D at Diffusion Policy's size for state inputs (dims 256/512/1024, 65 M parameters) and at
    physgen's default size (64/128/256), DDIM 10 steps (target p99 <= 10 ms).
PyTorch (if the `compare` extra is installed): the same networks in eager mode, DDIM driven by diffusers'
`DDIMScheduler` and flow by a hand-written Euler loop, under `torch.inference_mode()`. Prints p50/p95/p99 and the
ratio of medians and p99s, measured in the same run. ONNX Runtime (if the `onnx` extra is installed): the same
policy exported by `physgen.control.export_onnx`, run by an `onnxruntime.InferenceSession` on the CPU with its
default threading, the sampler's normal draws made in numpy at each call; its compile column is the export and the
session's creation. "net only" is the floor under physgen's row: the same number of network forward passes in one
compiled call on device arrays; "matvecs" (MLP rows) is only the matrix-vector products of those passes, in numpy:
a floor set by the CPU rather than by XLA. Observation 11-D and action 3-D (hopper's), T_o = 2, T_p = 16. Training
throughput: `benchmarks/train_throughput.py`.

    python benchmarks/sampler_latency.py [--calls 300] [--inline-dispatch]

`--inline-dispatch` runs every compiled call in the calling thread instead of handing it to JAX's CPU worker
thread (`jax.config.update("jax_cpu_enable_async_dispatch", False)` before JAX starts): a control loop waits for
each action anyway, and the hand-off costs tens of microseconds per call.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from physgen.control import export_onnx
from physgen.data import Normalizer
from physgen.policies.agent import ChunkingAgent
from physgen.policies.diffusion import step_contexts
from physgen.policies.policy import Policy, PolicyConfig, PolicyState
from physgen.policies.quantize import quantize
from physgen.policies.runner import PolicyRunner

OBS_DIM, ACT_DIM = 11, 3
DP_UNET = (256, 512, 1024)
CASES = [  # name, config changes, sampling steps
    ("MLP flow, Euler 10", dict(method="flow"), 10),
    ("MLP flow 1-step student", dict(method="flow"), 1),  # physgen distill's student is this program
    ("MLP DDIM 10", dict(method="diffusion"), 10),
    ("MLP DDIM 100", dict(method="diffusion"), 100),
    ("UNet 64/128/256 DDIM 10", dict(method="diffusion", network="unet"), 10),
    ("UNet DP-size DDIM 10", dict(method="diffusion", network="unet", unet_dims=DP_UNET, time_dim=256), 10),
]
QUANTIZED_CASES = ("MLP flow, Euler 10", "MLP flow 1-step student")  # timed again, stored as each of:
QUANTIZED = ("bfloat16", "int8")
GUIDED_CASES = ("MLP flow, Euler 10", "MLP DDIM 10")


def percentiles(seconds: list[float]) -> np.ndarray:
    return np.percentile(np.asarray(seconds) * 1e6, [50, 95, 99])


def time_calls(fn, calls: int) -> list[float]:
    for i in range(10):
        fn(i)
    out = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def physgen_runner(changes: dict, steps: int, weights: str = "float32") -> tuple[PolicyRunner, float]:
    """The runner and its compile seconds; its weight matrices stored as `weights` (quantized ahead, as a controller
    or an export stores them), the same float32 weights before that whatever `weights` is."""
    config = PolicyConfig.of(**changes, weights=weights)
    policy, params = Policy.create(config, OBS_DIM, ACT_DIM, jax.random.key(0))
    identity = Normalizer(jnp.zeros(OBS_DIM), jnp.ones(OBS_DIM))
    state = PolicyState(quantize(params, weights), identity, Normalizer(jnp.zeros(ACT_DIM), jnp.ones(ACT_DIM)),
                        -jnp.ones(ACT_DIM), jnp.ones(ACT_DIM))
    start = time.perf_counter()
    runner = PolicyRunner(policy, state, steps)
    return runner, time.perf_counter() - start


def network_alone(runner: PolicyRunner, steps: int):
    """`steps` chained forward passes of the runner's network in one compiled call on device arrays (the conditioning
    computed once for all of them, as the samplers do), without the sampler's arithmetic, normalization or numpy
    I/O: the floor under an `act` of that many steps."""
    policy, params = runner.policy, runner.state.params
    x = jnp.zeros((1, policy.config.chunking.action_steps, policy.act_dim))
    cond = jnp.zeros((1, policy.config.chunking.obs_steps * policy.obs_dim))

    @jax.jit
    def forward(params, x):
        contexts, apply = step_contexts(policy.network(params), jnp.arange(steps) / steps, cond, 1)
        for k in range(steps):
            x = apply(x, jax.tree.map(lambda c: c[k], contexts))
        return x

    forward(params, x).block_until_ready()
    return lambda i: forward(params, x).block_until_ready()


def numpy_matvecs(runner: PolicyRunner, steps: int):
    """Only the matrix-vector products of `steps` forward passes of an MLP denoiser, in numpy (BLAS), weights already
    in memory: no activation, conditioning or sampler arithmetic, a floor set by this CPU rather than by XLA."""
    net = runner.policy.network(runner.state.params)
    kernels = [np.asarray(layer.kernel[...]) for layer in [net.input, *net.hidden, net.output]]
    x = np.zeros((1, kernels[0].shape[0]), np.float32)

    def forward(i):
        for _ in range(steps):
            h = x
            for kernel in kernels:
                h = h @ kernel
        return h

    return forward


def onnx_act(runner: PolicyRunner, steps: int, folder: Path) -> tuple:
    """(`act(seed)` by ONNX Runtime on the runner's policy exported to ONNX, seconds to export and load it): numpy
    in, numpy out, the sampler's normal draws from one numpy generator, as a caller of the model makes them."""
    import onnxruntime

    start = time.perf_counter()
    path = export_onnx(runner.policy, runner.state, folder / "policy.onnx", steps)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # it warns about every unused constant jax2onnx leaves in the graph
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    seconds = time.perf_counter() - start
    obs = np.zeros(runner.obs_shape, np.float32)
    shape, rng = session.get_inputs()[1].shape, np.random.default_rng(0)

    def act(seed):
        return session.run(None, {"obs_history": obs, "noise": rng.standard_normal(shape, np.float32)})[0]

    return act, seconds


def torch_act(changes: dict, steps: int):
    """An eager-PyTorch `act(seed)`: numpy in, numpy out, the same network and sampler."""
    import torch
    from diffusers import DDIMScheduler

    import torch_reference as ref

    torch.manual_seed(0)
    config = PolicyConfig.of(**changes)
    chunk, cond_dim = (config.chunking.action_steps, ACT_DIM), config.chunking.obs_steps * OBS_DIM
    if config.net.network == "unet":
        net = ref.ConditionalUnet1D(chunk, cond_dim, config.net.unet_dims, config.net.time_dim)
    else:
        net = ref.MLPDenoiser(chunk, cond_dim, config.net.hidden, config.net.depth, config.net.time_dim)
    net.eval()
    scheduler = DDIMScheduler(num_train_timesteps=config.diffusion.train_diffusion_steps,
                              beta_schedule="squaredcos_cap_v2", clip_sample=True, set_alpha_to_one=True,
                              prediction_type=config.diffusion.prediction)
    scheduler.set_timesteps(steps)
    obs = np.zeros((config.chunking.obs_steps, OBS_DIM), np.float32)

    def act(seed):
        with torch.inference_mode():
            generator = torch.Generator().manual_seed(seed)
            cond = torch.from_numpy(obs).reshape(1, -1)
            x = torch.randn(1, *chunk, generator=generator)
            if config.method == "flow":
                for i in range(steps):
                    x = x + net(x, torch.full((1,), i / steps), cond) / steps
            else:
                for t in scheduler.timesteps:
                    eps = net(x, torch.full((1,), float(t) / config.diffusion.train_diffusion_steps), cond)
                    x = scheduler.step(eps, t, x).prev_sample
            return x.clamp(-1, 1).numpy()

    return act


def guided_act(runner: PolicyRunner, steps: int):
    """A chunk sampled at step T_a with real-time chunking's guidance (delay 2) towards the chunk sampled at step 0:
    numpy in and out, the agent's sample in one compiled call, as the Controller's worker runs it."""
    policy, (leaves, treedef) = runner.policy, jax.tree.flatten(runner.state)
    agent = ChunkingAgent(policy, steps, delay=2, rtc=True)
    chunking = policy.config.chunking

    def sample(leaves, history, previous, seed):
        state = jax.tree.unflatten(treedef, leaves)
        carry = agent.accept(agent.start(state, history[-1])._replace(history=history), previous, 0)
        return agent.sample(state, carry._replace(t=jnp.int32(chunking.exec_steps)), jax.random.key(seed))

    compiled = jax.jit(sample)
    history = np.zeros(runner.obs_shape, np.float32)
    previous = np.zeros((chunking.action_steps, policy.act_dim), np.float32)
    return lambda i: np.asarray(compiled(leaves, history, previous, i))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--inline-dispatch", action="store_true",
                        help="run each call in the calling thread (jax_cpu_enable_async_dispatch=False), as a control "
                             "process should")
    args = parser.parse_args()
    # must be set before JAX creates its CPU client
    jax.config.update("jax_cpu_enable_async_dispatch", not args.inline_dispatch)
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    try:
        import jax2onnx
        import onnxruntime

        jax2onnx.to_onnx(jnp.sin, [(1,)])  # loads its plugins, once: the first row's export time leaves that out
        onnx_versions = f"onnxruntime {onnxruntime.__version__}, jax2onnx {version('jax2onnx')}"
    except ImportError:
        onnx_versions = None
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch_version or 'not installed'}, "
          f"{onnx_versions or 'onnxruntime not installed'}, {os.cpu_count()} CPU cores; {args.calls} calls after 10 "
          f"warm-up calls; {'inline' if args.inline_dispatch else 'asynchronous'} dispatch; times in microseconds")
    scratch = tempfile.TemporaryDirectory(prefix="sampler_latency_")  # the ONNX exports; removed at exit
    folder = Path(scratch.name)
    print(f"{'case':<26} {'':>8} {'compile s':>9} {'p50':>9} {'p95':>9} {'p99':>9}")
    for name, changes, steps in CASES:
        runner, compile_seconds = physgen_runner(changes, steps)
        obs = np.zeros(runner.obs_shape, np.float32)
        calls = args.calls if "DP-size" not in name else max(20, args.calls // 10)
        ours = percentiles(time_calls(lambda i: runner.act(obs, i), calls))
        print(f"{name:<26} {'physgen':>8} {compile_seconds:9.2f} " + " ".join(f"{v:9.0f}" for v in ours), flush=True)
        floor = percentiles(time_calls(network_alone(runner, steps), calls))
        print(f"{'':<26} {'net only':>8} {'':>9} " + " ".join(f"{v:9.0f}" for v in floor), flush=True)
        if runner.policy.config.net.network == "mlp":
            floor = percentiles(time_calls(numpy_matvecs(runner, steps), calls))
            print(f"{'':<26} {'matvecs':>8} {'':>9} " + " ".join(f"{v:9.0f}" for v in floor), flush=True)
        for weights in QUANTIZED if name in QUANTIZED_CASES else ():
            stored, stored_compile = physgen_runner(changes, steps, weights)
            times = percentiles(time_calls(lambda i: stored.act(obs, i), calls))
            print(f"{'':<26} {weights:>8} {stored_compile:9.2f} " + " ".join(f"{v:9.0f}" for v in times)
                  + f"   vs float32: x{times[0] / ours[0]:.2f} (p50), x{times[2] / ours[2]:.2f} (p99)", flush=True)
        if name in GUIDED_CASES:
            guided = guided_act(runner, steps)
            start = time.perf_counter()
            guided(0)
            guided_compile = time.perf_counter() - start
            times = percentiles(time_calls(guided, calls))
            print(f"{'':<26} {'rtc':>8} {guided_compile:9.2f} " + " ".join(f"{v:9.0f}" for v in times)
                  + f"   vs unguided: x{times[0] / ours[0]:.2f} (p50), x{times[2] / ours[2]:.2f} (p99)", flush=True)
        if onnx_versions is not None:
            act, export_seconds = onnx_act(runner, steps, folder)
            onnx = percentiles(time_calls(act, calls))
            print(f"{'':<26} {'onnxrt':>8} {export_seconds:9.2f} " + " ".join(f"{v:9.0f}" for v in onnx)
                  + f"   physgen faster: x{onnx[0] / ours[0]:.1f} (p50), x{onnx[2] / ours[2]:.1f} (p99)", flush=True)
        if torch_version is None:
            continue
        theirs = percentiles(time_calls(torch_act(changes, steps), calls))
        print(f"{'':<26} {'pytorch':>8} {'':>9} " + " ".join(f"{v:9.0f}" for v in theirs)
              + f"   physgen faster: x{theirs[0] / ours[0]:.1f} (p50), x{theirs[2] / ours[2]:.1f} (p99)", flush=True)


if __name__ == "__main__":
    main()
