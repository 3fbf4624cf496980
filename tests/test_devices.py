import json
import os
import subprocess
import sys

import pytest

from physgen.devices import fit_mesh, padded_count, seed_mesh
from physgen.errors import PhysgenError

# Run in a subprocess: the CPU is split into 4 devices only by XLA_FLAGS set before JAX starts. It benches flow on fork
# (smoke) with 3 seeds on 1 and on 4 devices (4 devices fit 3 seeds as 2 groups, [0, 1] and [2, 2]: padding), and
# prints for each check the largest difference it finds.
SCRIPT = """
import json, sys
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
from physgen.bench import run_bench
from physgen.checkpoint import load_checkpoint
from physgen.devices import fit_mesh, mesh_size, padded_count, seed_mesh
from physgen.envs import get_task
from physgen.envs.rollout import record_episodes
from physgen.policies import ChunkingAgent, load_policy

root = Path(sys.argv[1])
runs = {d: run_bench("fork", methods=["flow"], seeds=3, episodes=2, budget="smoke", out=root / str(d), progress=False,
                     videos=False, devices=d) for d in (1, 4)}
largest = lambda pairs: max(float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float)))) for a, b in pairs)
checks = {"layout": [mesh_size(fit_mesh(seed_mesh(4), 3)), padded_count(3, fit_mesh(seed_mesh(4), 3))],
          "seed_devices": [json.loads((runs[d] / "protocol.json").read_text())["environment"]["seed_devices"]
                           for d in (1, 4)]}
arrays = {d: [jax.tree.leaves(load_checkpoint(runs[d] / "checkpoints" / "flow" / f"seed_{s}", "fork")[0])
              for s in range(3)] for d in (1, 4)}
checks["training"] = largest(zip(sum(arrays[1], []), sum(arrays[4], [])))
# each device's group of seeds, evaluated on one device: what the 4-device run's units must hold
loaded = [load_policy(runs[4] / "checkpoints" / "flow" / f"seed_{s}", "fork") for s in range(3)]
agent, episodes = ChunkingAgent(loaded[0][0]), json.loads((runs[4] / "protocol.json").read_text())
episodes = np.asarray(episodes["experiment"]["evaluation_seeds"])
groups = {(0, 1): (0, 1), (2, 2): (2,)}
recorded = {}
for group, kept in groups.items():
    states = jax.tree.map(lambda *x: jnp.stack(x), *(loaded[s][1] for s in group))
    obs, actions = record_episodes(get_task("fork"), agent, states, episodes)[:2]
    recorded.update({s: (obs[i], actions[i]) for i, s in enumerate(kept)})
units = [np.load(runs[4] / "units" / "flow" / f"seed_{s}.npz") for s in range(3)]
checks["evaluation by groups"] = largest((u[k], recorded[s][i]) for s, u in enumerate(units)
                                         for i, k in enumerate(("observations", "actions")))
print(json.dumps(checks))
"""


def test_fork_smoke_trains_alike_on_1_and_4_devices(tmp_path):
    env = {**os.environ, "XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""),
                                                 "--xla_force_host_platform_device_count=4"])}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    checks = json.loads(done.stdout.strip().splitlines()[-1])
    assert checks["layout"] == [2, 4]  # 3 seeds on 4 devices: 2 devices of 2 seeds, the last seed padded
    assert checks["seed_devices"] == [1, 2]  # as used
    assert checks["training"] == 0.0  # every seed's weights, raw and EMA, and normalizers: bitwise
    # each device ran the one-device program on its seeds; all seeds on one device may differ from that in the last
    # bits (XLA picks kernels by the batch's size: physgen.devices), so the two runs' rollouts are not compared
    assert checks["evaluation by groups"] == 0.0, checks


def test_seed_mesh_refuses_what_jax_cannot_provide():
    assert seed_mesh(None) is None and seed_mesh(1) is None and seed_mesh("1") is None
    assert seed_mesh("all") is None  # this process sees one device
    with pytest.raises(PhysgenError, match=r"--devices 2: JAX finds 1 cpu device.*xla_force_host_platform"):
        seed_mesh(2)
    with pytest.raises(PhysgenError, match="a number or 'all'"):
        seed_mesh("some")
    with pytest.raises(PhysgenError, match="at least 1"):
        seed_mesh(0)


def test_one_device_places_nothing():
    assert fit_mesh(None, 10) is None and padded_count(3, None) == 3
