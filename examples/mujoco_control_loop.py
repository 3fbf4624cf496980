"""A policy driving a raw MuJoCo hopper in real time at 50 Hz through physgen's Controller.

    python examples/mujoco_control_loop.py [CHECKPOINT] [--seconds 10] [--prefetch 1] [--random-policy]

CHECKPOINT defaults to runs/hopper/flow/seed_0, where `physgen train --task hopper --method flow` writes it;
`--random-policy` acts with a randomly initialized MLP flow policy of the default size instead (the same cost
per call, no training needed). The model is Gymnasium's hopper.xml loaded with `mujoco` alone, no Gymnasium
environment; the observation (qpos[1:], clip(qvel, -10, 10)), the reset noise and the fall rule are Hopper-v5's.
A fall resets the hopper and starts a new controller episode.

Timing: Hopper-v5 acts at 125 Hz (4 physics steps of 2 ms). This loop acts at 50 Hz: one control period holds
the action for 10 physics steps (20 ms of simulated time), then sleeps to the next 20 ms deadline of the wall
clock. A policy trained at 125 Hz acts more slowly here than it learned to: the loop measures timing, not hopping.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium
import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from physgen import PhysgenError
from physgen.control import Controller
from physgen.data import Normalizer
from physgen.envs import get_task
from physgen.policies import Policy, PolicyConfig, PolicyState

HOPPER_XML = Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "hopper.xml"
RESET_NOISE = 5e-3


def observation(data: mujoco.MjData) -> np.ndarray:
    return np.concatenate([data.qpos[1:], np.clip(data.qvel, -10.0, 10.0)])


def healthy(data: mujoco.MjData) -> bool:
    z, angle = data.qpos[1:3]
    state = np.concatenate([data.qpos, data.qvel])[2:]
    return bool(np.all(np.abs(state) < 100.0) and z > 0.7 and abs(angle) < 0.2)


def reset(model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator) -> None:
    mujoco.mj_resetData(model, data)
    data.qpos[:] += rng.uniform(-RESET_NOISE, RESET_NOISE, model.nq)
    data.qvel[:] += rng.uniform(-RESET_NOISE, RESET_NOISE, model.nv)
    mujoco.mj_forward(model, data)


def random_policy() -> tuple[Policy, PolicyState]:
    task = get_task("hopper")
    policy, params = Policy.create(PolicyConfig.of(method="flow"), task.obs_dim, task.act_dim, jax.random.key(0))
    obs_norm = Normalizer(jnp.zeros(task.obs_dim), jnp.ones(task.obs_dim))
    act_norm = Normalizer(jnp.zeros(task.act_dim), jnp.ones(task.act_dim))
    return policy, PolicyState(params, obs_norm, act_norm, jnp.asarray(task.action_space.low),
                               jnp.asarray(task.action_space.high))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", default="runs/hopper/flow/seed_0")
    parser.add_argument("--random-policy", action="store_true", help="a randomly initialized MLP flow policy")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="control rate (Hz)")
    parser.add_argument("--prefetch", type=int, default=1, help="sample each chunk this many periods ahead")
    parser.add_argument("--rtc", action="store_true", default=None,
                        help="real-time chunking: guide each chunk towards the last (default: the policy's)")
    parser.add_argument("--weights", default=None, choices=("float32", "bfloat16", "int8"),
                        help="how the sampler stores its weight matrices (default: the policy's)")
    args = parser.parse_args()
    options = {"rate_hz": args.rate, "prefetch": args.prefetch, "rtc": args.rtc, "weights": args.weights}
    try:
        if args.random_policy:
            name, controller = "random MLP flow policy", Controller(*random_policy(), **options)
        elif not Path(args.checkpoint).is_dir():
            print(f"no checkpoint at {args.checkpoint}: make one with `physgen data --task hopper && "
                  "physgen train --task hopper --method flow`, or pass --random-policy")
            return 1
        else:
            name = args.checkpoint
            controller = Controller.from_checkpoint(args.checkpoint, task="hopper", **options)
    except PhysgenError as error:
        print(f"error: {error}")
        return 2

    model = mujoco.MjModel.from_xml_path(str(HOPPER_XML))
    data = mujoco.MjData(model)
    substeps = round(1.0 / (args.rate * model.opt.timestep))  # physics steps in one control period
    rng = np.random.default_rng(0)
    reset(model, data, rng)
    controller.reset()
    period, periods, overruns, falls = 1.0 / args.rate, round(args.seconds * args.rate), 0, 0
    start = deadline = time.perf_counter()
    for _ in range(periods):
        data.ctrl[:] = controller.act(observation(data))
        mujoco.mj_step(model, data, nstep=substeps)
        if not healthy(data):
            falls += 1
            reset(model, data, rng)
            controller.reset()
        deadline += period
        slack = deadline - time.perf_counter()
        if slack < 0:
            overruns, deadline = overruns + 1, time.perf_counter()  # late: count it and restart the schedule
        else:
            time.sleep(slack)
    elapsed = time.perf_counter() - start
    controller.close()

    stats = controller.stats()
    config = controller.agent.policy.config.chunking
    print(f"hopper (raw mujoco), {name}: T_p {config.action_steps}, T_a {config.exec_steps}, prefetch {args.prefetch}; "
          f"{substeps} physics steps of {model.opt.timestep * 1e3:g} ms per {period * 1e3:g} ms period")
    print(f"{stats['calls']} periods in {elapsed:.2f} s: achieved {stats['achieved_hz']:.2f} Hz "
          f"(target {args.rate:g} Hz)")
    print(f"act latency: p50 {stats['p50_us']:.0f} us, p95 {stats['p95_us']:.0f} us, "
          f"p99 {stats['p99_us']:.0f} us, max {stats['max_us']:.0f} us ({stats['chunks']} chunks sampled)")
    print(f"deadline misses: {stats['misses']} act calls over {period * 1e3:g} ms, {overruns} loop periods "
          f"overrun; {stats['flagged']} safe actions; {falls} falls (episode reset)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
