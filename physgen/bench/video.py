"""Rollout videos: recorded episodes replayed through the task's Gymnasium environment and rendered.

MuJoCo tasks render offscreen (`MUJOCO_GL`, which the hopper task sets to `egl` unless chosen or unavailable); the 2-D
tasks draw their own frames. MP4 through imageio-ffmpeg, GIF when that fails.
"""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v2 as imageio
import jax
import numpy as np

from physgen.bench.failures import task_categories
from physgen.bench.units import row_folder, unit_path
from physgen.bench.registry import load_agent
from physgen.data import load_dataset
from physgen.envs import Task
from physgen.envs.rollout import episode_seeds, run_episodes
from physgen.errors import PhysgenError
from physgen.seeds import EVALUATION

FAILURE_VIDEOS = 5
SUCCESS_VIDEOS = 2
MAX_FPS = 25
MUJOCO_SIZE = 240


def _mujoco_camera(env):
    """A fast offscreen view of a MuJoCo environment: tracking its first body, without shadows, reflections or
    skybox (about 10x cheaper per frame with software OpenGL). None for other environments."""
    unwrapped = env.unwrapped
    if not (hasattr(unwrapped, "model") and hasattr(unwrapped, "data")):
        return None
    import mujoco

    try:
        renderer = mujoco.Renderer(unwrapped.model, MUJOCO_SIZE, MUJOCO_SIZE)
    except (mujoco.FatalError, RuntimeError, ImportError) as error:
        raise PhysgenError(f"MuJoCo could not render offscreen ({error}); set MUJOCO_GL=egl (or osmesa) before "
                           "starting Python, or pass --no-videos") from None
    camera = mujoco.MjvCamera()
    camera.type, camera.trackbodyid, camera.distance, camera.elevation = mujoco.mjtCamera.mjCAMERA_TRACKING, 1, 3.0, -20

    def frame():
        renderer.update_scene(unwrapped.data, camera)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
            renderer.scene.flags[flag] = 0
        return renderer.render()

    return frame


def _frames(task: Task, episode_seed: int, actions: np.ndarray):
    env = task.make_env(render_mode="rgb_array")
    env.reset(seed=int(episode_seed))
    frame = _mujoco_camera(env) or env.render
    stride = max(1, math.ceil(task.control_hz / MAX_FPS))
    yield frame()
    for t, action in enumerate(actions):
        env.step(action)
        if (t + 1) % stride == 0 or t + 1 == len(actions):
            yield frame()
    env.close()


def render_episode(task: Task, episode_seed: int, actions: np.ndarray, path: Path) -> Path:
    """Replay `actions` from the reset of `episode_seed` and write the frames to `path` (.mp4, or .gif on failure)."""
    fps = task.control_hz / max(1, math.ceil(task.control_hz / MAX_FPS))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with imageio.get_writer(path, fps=fps, macro_block_size=8) as writer:
            for frame in _frames(task, episode_seed, actions):
                writer.append_data(frame)
        return path
    except (OSError, RuntimeError, ValueError):
        path.unlink(missing_ok=True)
        gif = path.with_suffix(".gif")
        imageio.mimwrite(gif, list(_frames(task, episode_seed, actions)), duration=1000 / fps)
        return gif


def pick_episodes(records: list[dict], categories: tuple[str, ...], seed: int = 0) -> list[tuple[int, int, str]]:
    """(record index, episode index, label) of up to 5 failures spread over their primary categories (round robin
    over `categories`, the task's in rule order, episodes shuffled by a seeded generator) and 2 successes."""
    rng = np.random.default_rng(seed)
    outcomes = [(r, e, episode["category"]) for r, record in enumerate(records)
                for e, episode in enumerate(record["episodes"])]
    failures = {c: [o for o in outcomes if o[2] == c] for c in categories}
    queues = {c: [items[i] for i in rng.permutation(len(items))] for c, items in failures.items() if items}
    picked = []
    while queues and len(picked) < FAILURE_VIDEOS:
        for category in list(queues):
            if len(picked) < FAILURE_VIDEOS:
                picked.append(queues[category].pop())
            if not queues[category]:
                del queues[category]
    successes = [o for o in outcomes if o[2] is None]
    picked += [(*successes[i][:2], "success") for i in rng.permutation(len(successes))[:SUCCESS_VIDEOS]]
    return picked


def failure_videos(out: Path, task: Task, units: dict[str, list[dict]]) -> dict[str, list[str]] | str:
    """Render the picked episodes of every method into `out/videos/<method>/`; the paths, relative to `out`, or
    why rendering failed (the results stand without the videos)."""
    try:
        return _render_picked(out, task, units)
    except PhysgenError as error:
        return str(error)


def _render_picked(out: Path, task: Task, units: dict[str, list[dict]]) -> dict[str, list[str]]:
    written = {}
    for method, records in units.items():
        files = []
        for r, e, label in pick_episodes(records, task_categories(task)):
            record = records[r]
            arrays = np.load(unit_path(out, method, record["seed"]).with_suffix(".npz"))
            episode = record["episodes"][e]
            name = f"{label}_seed{record['seed']}_episode{episode['episode_seed']}.mp4"
            path = render_episode(task, episode["episode_seed"], arrays["actions"][e, : episode["length"]],
                                  out / "videos" / row_folder(method) / name)
            files.append(str(path.relative_to(out)))
        written[method] = files
    return written


def checkpoint_videos(task: Task, checkpoint: Path, episodes: int, out: Path) -> list[Path]:
    """Roll out a policy checkpoint (diffusion, flow, bc or ppo) on `episodes` evaluation episodes and render each."""
    agent, params = load_agent(checkpoint, task.name)
    # success rules such as hopper's need the expert's return: a missing dataset fails here, before any rollout
    expert_return = load_dataset(task).metadata.get("ref_max_score")
    seeds = episode_seeds(EVALUATION, episodes)
    rollouts = run_episodes(task, agent, jax.tree.map(lambda x: x[None], params), seeds, expert_return)
    outcomes = [(int(s), rollouts.actions[0, e, : rollouts.lengths[0, e]],
                 {k: v[0, e] for k, v in rollouts.events.items()}, rollouts.returns[0, e]) for e, s in enumerate(seeds)]
    paths = []
    for seed, actions, events, episode_return in outcomes:
        fired = [k for k in task.events if np.any(events[k])]
        label = "_".join(fired) or "no_events"
        paths.append(render_episode(task, seed, actions, out / f"episode{seed}_{label}_return{episode_return:.0f}.mp4"))
    return paths
