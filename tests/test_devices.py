import json
import os
import subprocess
import sys

import pytest

from physgen.devices import fit_mesh, padded_count, seed_mesh
from physgen.errors import PhysgenError

# Run in a subprocess: the CPU is split into 4 devices only by XLA_FLAGS set before JAX starts. It benches flow on fork
# (smoke) with 3 seeds on 1 and on 4 devices (4 devices fit 3 seeds as 2 groups, [0, 1] and [2, 2]: padding), records
# hopper episodes of 3 PPO policies on 4 devices, and prints for each check the largest difference it finds.
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
from physgen.policies.ppo import GaussianAgent, PPOConfig, agent_params, new_learner

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
hopper, ppo = get_task("hopper"), PPOConfig()  # 3 untrained PPO policies: episodes of about 100 steps
agents = agent_params(jax.vmap(lambda key: new_learner(hopper, ppo, key))(jax.random.split(jax.random.key(0), 3)))
gaussian = GaussianAgent.for_task(hopper, ppo)
spread = record_episodes(hopper, gaussian, agents, episodes, devices=4)
by_group = [record_episodes(hopper, gaussian, jax.tree.map(lambda x: x[np.array(group)], agents), episodes)
            for group in groups]
by_group = jax.tree.map(lambda *x: np.concatenate(x)[:3], *by_group)
checks["hopper by groups"] = largest(zip(jax.tree.leaves(spread), jax.tree.leaves(by_group)))
print(json.dumps(checks))
"""


def test_fork_smoke_trains_alike_on_1_and_4_devices(tmp_path):
    checks = _run_on_host_devices(SCRIPT, 4, str(tmp_path))
    assert checks["layout"] == [2, 4]  # 3 seeds on 4 devices: 2 devices of 2 seeds, the last seed padded
    assert checks["seed_devices"] == [1, 2]  # as used
    assert checks["training"] == 0.0  # every seed's weights, raw and EMA, and normalizers: bitwise
    # each device ran the one-device program on its seeds; all seeds on one device may differ from that in the last
    # bits (XLA picks kernels by the batch's size: physgen.devices), so the two runs' rollouts are not compared
    assert checks["evaluation by groups"] == 0.0, checks
    # hopper's environments step on the CPU, and each device acts for its group of seeds as one device would
    assert checks["hopper by groups"] == 0.0, checks


# PPO and the RSSM (tiny configs, fork) train 4 seeds on 2 host devices, and each device's pair of seeds as one device
# trains that pair; prints the largest difference of each.
PPO_RSSM_SCRIPT = """
import json
import jax, numpy as np
from physgen.data import Trajectories
from physgen.data.trajectories import flatten_episodes
from physgen.envs import get_task
from physgen.policies.ppo import GaussianAgent, PPOConfig, agent_params, new_learner
from physgen.envs.rollout import expert_policy, rollout_jax
from physgen.policies.ppo import PPOConfig, train_ppo
from physgen.world_models.rssm import RSSMConfig
from physgen.world_models.train import train_world_models

task = get_task("fork")
RSSM = RSSMConfig.of(deter=16, hidden=16, stoch=4, batch_size=4, sequence_length=8, steps=4, steps_per_call=2)
PPO = PPOConfig(total_steps=128, num_envs=4, rollout_steps=16, minibatches=2, epochs=1, eval_episodes=0)
data = Trajectories.from_steps(**flatten_episodes(task, rollout_jax(task, expert_policy(task), 0, 3)))


def ppo(seeds, devices):
    final = []
    train_ppo(task, PPO, seeds, progress=False, devices=devices, callback=lambda _, learners: final.append(learners))
    return final[-1].params


def rssm(seeds, devices):
    trained = train_world_models(task, RSSM, data, seeds, progress=False, devices=devices)
    return trained.params, trained.metrics


largest = lambda a, b: max(float(np.max(np.abs(np.asarray(x, float) - np.asarray(y, float))))
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
pairs = lambda train: jax.tree.map(lambda a, b: np.concatenate([a, b]), train([0, 1], None), train([2, 3], None))
print(json.dumps({name: largest(train([0, 1, 2, 3], 2), pairs(train))
                  for name, train in (("ppo", ppo), ("rssm", rssm))}))
"""


def _run_on_host_devices(script: str, devices: int, *args) -> dict:
    env = {**os.environ, "XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""),
                                                 f"--xla_force_host_platform_device_count={devices}"])}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ppo_and_the_rssm_train_each_devices_seeds_as_one_device_trains_them():
    assert _run_on_host_devices(PPO_RSSM_SCRIPT, 2) == {"ppo": 0.0, "rssm": 0.0}  # bitwise


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
