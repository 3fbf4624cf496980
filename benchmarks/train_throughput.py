"""Training throughput of the offline policies at the hopper recipe's size, beside the machine's peak and PyTorch.

For MLP diffusion, flow and BC (hopper's quick recipe: T_o 2, T_p 4, width 256, depth 3, batch 128), prints:
  - seed-steps/s (gradient steps per second summed over seeds) for 1 seed and for 10 seeds trained together
    (vmapped), timed between `train_policies` calls after the first (compiled) one;
  - the FLOPs of one gradient step (loss, gradient, AdamW update) from XLA's cost analysis, the GFLOP/s that
    rate achieves, and its share of the peak, measured in the same run as the median of a 2048 x 2048 x 2048
    jitted float32 matmul;
  - the seed-steps/s of the step's matrix products alone (same shapes, random operands, one after another in one
    jitted program): the ceiling for this step's arithmetic on XLA's CPU kernels, and the share of it physgen
    reaches;
  - with `--baseline DIR` (a checkout of another physgen version, e.g. `git worktree add /tmp/old HEAD~5`): the
    same measurement of that version's code, in a subprocess, interleaved with this one's;
  - with the `compare` extra: the same MLP and loss trained by eager PyTorch (AdamW, gradient clipping, EMA), one
    model, in a subprocess, and physgen's ratio to it.

    python benchmarks/train_throughput.py [--steps 300] [--repeats 3] [--batch 128] [--methods diffusion,flow,bc]
                                          [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

OBS_DIM, ACT_DIM, DATA_STEPS = 11, 3, 100_000
SIZE = dict(action_steps=4, exec_steps=1, hidden=256, batch_size=128)  # hopper's quick recipe
METHODS = {"diffusion": {}, "flow": {}, "bc": {}}  # diffusion predicts the clean chunk, as the recipe does


def random_data():
    from physgen.data import Trajectories

    rng = np.random.default_rng(0)
    return Trajectories.from_steps(rng.normal(size=(DATA_STEPS, OBS_DIM)).astype(np.float32),
                                   rng.uniform(-1, 1, (DATA_STEPS, ACT_DIM)).astype(np.float32),
                                   np.zeros(DATA_STEPS, np.float32),
                                   rng.normal(size=(DATA_STEPS, OBS_DIM)).astype(np.float32),
                                   np.zeros(DATA_STEPS, bool), [1000] * (DATA_STEPS // 1000))


def seed_steps_per_second(method: str, seeds: int, steps: int) -> float:
    """Seed-steps/s of `train_policies` over calls 2-4 of `steps` steps each (the first call compiles)."""
    from physgen.envs import get_task
    from physgen.policies.policy import PolicyConfig
    from physgen.policies.train import train_policies

    make = getattr(PolicyConfig, "of", PolicyConfig)  # versions before the nested configs took the fields flat
    config = make(method=method, steps=4 * steps, steps_per_call=steps, **SIZE, **METHODS[method])
    marks = []
    train_policies(get_task("hopper"), config, random_data(), list(range(seeds)), progress=False,
                   callback=lambda done, trained: marks.append((done, time.perf_counter())))
    (first_steps, first_time), (last_steps, last_time) = marks[0], marks[-1]
    return seeds * (last_steps - first_steps) / (last_time - first_time)


def one_step(method: str, seeds: int):
    """One gradient step of `seeds` seeds (vmapped when several): the loss, its gradient and the AdamW update."""
    import optax

    from physgen.data import Normalizer, sample_windows
    from physgen.policies.policy import Policy, PolicyConfig

    config = PolicyConfig.of(method=method, **SIZE, **METHODS[method])
    policy, params = Policy.create(config, OBS_DIM, ACT_DIM, jax.random.key(0))
    data, optimizer = random_data(), config.optim.optimizer()
    norms = Normalizer.fit(data.observations), Normalizer.fit(data.actions)

    def step(params, opt_state, key):
        chunking = config.chunking
        batch = sample_windows(data, key, config.optim.batch_size, chunking.obs_steps, chunking.action_steps, *norms)
        grads = jax.grad(policy.loss)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    arguments = params, optimizer.init(params), jax.random.key(1)
    if seeds == 1:
        return step, arguments
    return jax.vmap(step), jax.tree.map(lambda leaf: jax.numpy.stack([leaf] * seeds), arguments)


def step_flops(method: str) -> float:
    """FLOPs of one gradient step of one seed, per XLA's cost analysis."""
    step, arguments = one_step(method, 1)
    analysis = jax.jit(step).lower(*arguments).compile().cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def matrix_products(jaxpr):
    """(operand shapes, dimension numbers) of every dot_general in `jaxpr` and in the jaxprs it calls."""
    from jax.extend.core import jaxprs_in_params

    for equation in jaxpr.eqns:
        if equation.primitive.name == "dot_general":
            yield [variable.aval.shape for variable in equation.invars], equation.params["dimension_numbers"]
        for inner in jaxprs_in_params(equation.params):
            yield from matrix_products(inner)


def matmul_floor(method: str, seeds: int, repeats: int) -> float:
    """Seed-steps/s of a step's matrix products alone: the same shapes and dimensions, on random operands, in one
    jitted program, one after another as in the step (an optimization barrier makes each wait for the one before:
    independent products run side by side on XLA:CPU and fight over the cores). No trainer computing this step with
    XLA's CPU kernels is faster."""
    step, arguments = one_step(method, seeds)
    products = list(matrix_products(jax.make_jaxpr(step)(*arguments).jaxpr))
    keys = iter(jax.random.split(jax.random.key(0), 2 * len(products)))
    operands = [[jax.random.normal(next(keys), shape) for shape in shapes] for shapes, _ in products]
    numbers = [dimensions for _, dimensions in products]

    def in_sequence(operands):
        outputs = [jax.lax.dot_general(*operands[0], numbers[0])]
        for (a, b), dimensions in zip(operands[1:], numbers[1:]):
            a, _ = jax.lax.optimization_barrier((a, outputs[-1]))
            outputs.append(jax.lax.dot_general(a, b, dimensions))
        return outputs

    products_only = jax.jit(in_sequence)
    jax.block_until_ready(products_only(operands))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready([products_only(operands) for _ in range(50)])
        times.append((time.perf_counter() - start) / 50)
    return seeds / float(np.median(times))


def peak_gflops(n: int = 2048, repeats: int = 20) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n))
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / np.median(times) / 1e9


def torch_steps_per_second(method: str, steps: int) -> float | None:
    """Steps/s of the same MLP and loss in eager PyTorch (one model), after 20 warm-up steps."""
    try:
        import torch
    except ImportError:
        return None
    sys.path.insert(0, os.path.dirname(__file__))
    from torch_reference import MLPDenoiser

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    horizon, batch = SIZE["action_steps"], SIZE["batch_size"]
    net = MLPDenoiser((horizon, ACT_DIM), 2 * OBS_DIM, SIZE["hidden"])
    ema = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-6)
    obs, actions = torch.randn(DATA_STEPS, OBS_DIM), torch.rand(DATA_STEPS, ACT_DIM) * 2 - 1
    grid = torch.arange(101) / 100
    alpha_bar = torch.cos((grid + 0.008) / 1.008 * torch.pi / 2) ** 2
    alphas_cumprod = torch.cumprod(1 - torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=0.999), 0)

    def step():
        index = torch.randint(0, DATA_STEPS - horizon, (batch,))
        cond = obs[index[:, None] + torch.arange(2)].reshape(batch, -1)
        x1 = actions[index[:, None] + torch.arange(horizon)]
        noise = torch.randn_like(x1)
        if method == "diffusion":
            t = torch.randint(0, 100, (batch,))
            ab = alphas_cumprod[t][:, None, None]
            loss = ((net(ab.sqrt() * x1 + (1 - ab).sqrt() * noise, t / 100, cond) - x1) ** 2).mean()
        elif method == "flow":
            t = torch.rand(batch)
            xt = (1 - t[:, None, None]) * noise + t[:, None, None] * x1
            loss = ((net(xt, t, cond) - (x1 - noise)) ** 2).mean()
        else:
            loss = ((net(torch.zeros_like(x1), torch.zeros(batch), cond) - x1) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(net.parameters()), 1e-3)

    for _ in range(20):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def in_fresh_interpreter(call: str, physgen: str | None = None):
    """The value of `call` (an expression on this module, `t`) computed in a fresh interpreter, whose threads then
    leave this one's measurements alone (PyTorch's keep spinning after a step); `physgen`: the checkout to import."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import json, train_throughput as t; t.SIZE['batch_size'] = {SIZE['batch_size']}; "
            f"print(json.dumps({call}))")
    env = {**os.environ, **({"PYTHONPATH": os.path.abspath(physgen)} if physgen else {})}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="gradient steps per timed call (3 timed calls)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per row; the median is printed")
    parser.add_argument("--baseline", default=None, help="a checkout of another physgen version to measure beside")
    parser.add_argument("--batch", type=int, default=SIZE["batch_size"], help="batch size (default: the recipe's)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    SIZE["batch_size"] = args.batch
    from physgen.bench import protocol

    peak, machine = peak_gflops(), protocol.machine()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {machine}; peak "
          f"(2048^3 float32 matmul, median of 20): {peak:.0f} GFLOP/s; medians of {args.repeats} measurements",
          flush=True)
    header = f"{'method':<10} {'seeds':>5} {'seed-steps/s':>12} {'MFLOP/step':>10} {'GFLOP/s':>8} {'% peak':>6}"
    print(header + (f" {'baseline':>9} {'speed-up':>8}" if args.baseline else "")
          + f" {'matmuls':>8} {'of them':>7} {'pytorch':>8} {'ratio':>6}")
    rows, baseline_commit = [], None
    if args.baseline:
        baseline_commit = subprocess.run(["git", "-C", args.baseline, "rev-parse", "--short", "HEAD"],
                                         capture_output=True, text=True).stdout.strip() or None
        print(f"earlier code: {args.baseline} (commit {baseline_commit})")
    for method in methods:
        flops = step_flops(method)
        torch_rate = in_fresh_interpreter(f"t.torch_steps_per_second({method!r}, 200)")
        for seeds in (1, 10):
            rate = float(np.median([seed_steps_per_second(method, seeds, args.steps) for _ in range(args.repeats)]))
            floor = matmul_floor(method, seeds, args.repeats)
            row = dict(method=method, seeds=seeds, seed_steps_per_s=rate, mflop_per_step=flops / 1e6,
                       gflops=rate * flops / 1e9, peak_gflops=peak, machine=machine,
                       matmuls_only_seed_steps_per_s=floor, pytorch_steps_per_s=torch_rate)
            line = (f"{method:<10} {seeds:>5} {rate:12.0f} {flops / 1e6:10.0f} {rate * flops / 1e9:8.0f} "
                    f"{100 * rate * flops / 1e9 / peak:5.0f}%")
            if args.baseline:
                base = float(np.median([in_fresh_interpreter(f"t.seed_steps_per_second({method!r}, {seeds}, "
                                                             f"{args.steps})", args.baseline)
                                        for _ in range(args.repeats)]))
                row.update(baseline_seed_steps_per_s=base, baseline_commit=baseline_commit)
                line += f" {base:9.0f} {rate / base:7.2f}x"
            line += f" {floor:8.0f} {100 * rate / floor:6.0f}%"
            if torch_rate is not None:
                line += f" {torch_rate:8.0f} {rate / torch_rate:5.1f}x"
            rows.append(row)
            print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
