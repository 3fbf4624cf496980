import itertools
import json
import os
import socket
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import jax
import numpy as np
import pytest

from physgen.checkpoint import load_checkpoint
from physgen.devices import _in_turns, initialize
from physgen.errors import PhysgenError

# One process of a run: joins `processes` processes through jax.distributed (none for 1), benches flow and PPO on fork
# (smoke, 4 seeds, every device), records hopper episodes of 3 seeds (every device), and prints what it was. A start
# that jax.distributed refuses exits with code 3.
SCRIPT = """
import json, sys
from pathlib import Path
import jax, numpy as np
from physgen.devices import initialize, is_writer
from physgen.envs import get_task
from physgen.envs.rollout import episode_seeds, record_episodes
from physgen.policies.ppo import GaussianAgent, PPOConfig, agent_params, new_learner
from physgen.errors import PhysgenError

coordinator, processes, process_id, out = sys.argv[1:]
if processes != "1":
    try:
        initialize(coordinator, int(processes), int(process_id))
    except PhysgenError as error:
        print(error)
        sys.exit(3)
from physgen.bench import run_bench
run_bench("fork", methods=["flow", "ppo"], seeds=4, episodes=2, budget="smoke", out=Path(out), progress=False,
          videos=False, devices="all")
hopper, ppo = get_task("hopper"), PPOConfig()  # 3 untrained PPO policies: episodes of about 100 steps
agents = agent_params(jax.vmap(lambda key: new_learner(hopper, ppo, key))(jax.random.split(jax.random.key(0), 3)))
recorded = record_episodes(hopper, GaussianAgent.for_task(hopper, ppo), agents, episode_seeds(0, 2), devices="all")
if is_writer():
    np.savez(out + "-hopper.npz", *jax.tree.leaves(recorded))
print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(), "writer": is_writer()}))
"""
TIMEOUT = 240  # seconds; a smoke bench takes well under a minute, a hung collective never ends


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _checkpoint_leaves(run: Path, method: str, seed: int) -> list:
    return jax.tree.leaves(load_checkpoint(run / "checkpoints" / method / f"seed_{seed}", "fork")[0])


def test_two_processes_bench_as_one_process_with_two_devices(tmp_path):
    """2 processes of 1 CPU device each (CPU collectives) against 1 process with the CPU split into 2 devices: the
    same 2 groups of seeds on 2 devices, so every checkpoint and unit (flow's and PPO's) is bitwise the same; process
    0 alone wrote. Hopper's episodes too: each process steps its devices' environments, each device acting for its
    seeds."""
    split = {**os.environ, "XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""),
                                                   "--xla_force_host_platform_device_count=2"])}
    one = subprocess.run([sys.executable, "-c", SCRIPT, "", "1", "0", str(tmp_path / "one")], env=split,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    coordinator = f"localhost:{_free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    launched = [subprocess.Popen([sys.executable, "-c", SCRIPT, coordinator, "2", str(i), str(tmp_path / "two")],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:
        outputs = [process.communicate(timeout=TIMEOUT) for process in launched]
    finally:
        for process in launched:
            process.kill()
    codes = [process.returncode for process in launched]
    if 3 in codes:
        pytest.skip(f"jax.distributed cannot start on this machine: {outputs[codes.index(3)][0].strip()}")
    assert codes == [0, 0], [stderr[-3000:] for _, stderr in outputs]
    printed = [_last_json(stdout) for stdout, _ in outputs]
    assert [(p["process"], p["processes"], p["writer"]) for p in printed] == [(0, 2, True), (1, 2, False)]
    runs = tmp_path / "one", tmp_path / "two"
    seed_devices = [json.loads((run / "protocol.json").read_text())["environment"]["seed_devices"] for run in runs]
    assert seed_devices == [2, 2]  # both spread the 4 seeds over 2 devices
    for method, seed in itertools.product(["flow", "ppo"], range(4)):
        for a, b in zip(*(_checkpoint_leaves(run, method, seed) for run in runs), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        units = [np.load(run / "units" / method / f"seed_{seed}.npz") for run in runs]
        for key in units[0].files:
            np.testing.assert_array_equal(units[0][key], units[1][key])
    results = [json.loads((run / "results.json").read_text()) for run in runs]
    assert results[0]["units"] == results[1]["units"]
    assert (tmp_path / "two" / "report.md").is_file()
    # hopper (Gymnasium): each process stepped its devices' seeds, [0, 1] and [2, 2], as one process steps them
    hopper = [np.load(f"{run}-hopper.npz") for run in runs]
    assert len(hopper[0].files) == len(hopper[1].files) > 4  # observations, actions, rewards, ends, events
    for key in hopper[0].files:
        assert len(hopper[0][key]) == 3
        np.testing.assert_array_equal(hopper[0][key], hopper[1][key])


def test_initialize_checks_its_arguments_before_starting():
    initialize()  # no argument: one process, nothing started
    with pytest.raises(PhysgenError, match="need --coordinator HOST:PORT"):
        initialize(processes=2, process_id=0)
    with pytest.raises(PhysgenError, match="HOST:PORT.*got 'localhost'"):
        initialize("localhost", 2, 0)
    with pytest.raises(PhysgenError, match="--processes must be at least 1"):
        initialize("localhost:1234", 0, 0)
    with pytest.raises(PhysgenError, match="--process-id must be from 0 to --processes - 1, got 2"):
        initialize("localhost:1234", 2, 2)


def test_devices_are_taken_in_turns_from_each_process():
    Device = namedtuple("Device", "id process_index")
    devices = [Device(0, 0), Device(1, 0), Device(2, 1), Device(3, 1)]  # JAX lists them by process
    assert [d.id for d in _in_turns(devices)] == [0, 2, 1, 3]
    assert _in_turns(devices[:2]) == devices[:2]  # one process: its order


def test_a_process_of_a_distributed_run_still_stops_on_sigterm():
    """jax.distributed's preemption notifier takes SIGTERM over and only records it; `initialize` puts the handler
    before it back, so that a `kill` or a scheduler's stop ends the process (here: the default handler)."""
    script = ("import os, signal, sys, time\nfrom physgen.devices import initialize\n"
              "initialize(sys.argv[1], 1, 0)\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(10)\nprint('went on')")
    ran = subprocess.run([sys.executable, "-c", script, f"localhost:{_free_port()}"], capture_output=True, text=True,
                         timeout=TIMEOUT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert ran.returncode == -15 and "went on" not in ran.stdout, (ran.returncode, ran.stdout, ran.stderr[-2000:])
