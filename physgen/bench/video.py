"""Rollout videos and failure filmstrips: a recorded episode is replayed once through the task's Gymnasium environment
and its frames make both the video (each frame under a caption band naming the episode and the step it shows) and,
for a failure, a filmstrip: one PNG of the frames leading up to the failure step, captioned the same way.

MuJoCo tasks render offscreen (`MUJOCO_GL`, which the hopper task sets to `egl` unless chosen or unavailable); the 2-D
tasks draw their own frames. MP4 through imageio-ffmpeg, GIF when that fails. Text is drawn with Pillow's own font
(no font file on the machine needed).
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import imageio.v2 as imageio
import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from physgen.bench.failures import LEAD_FRACTION, task_categories
from physgen.bench.units import row_folder, unit_path
from physgen.bench.registry import load_agent
from physgen.data import load_dataset
from physgen.envs import Task, image_shape, observes_frames
from physgen.envs.rollout import episode_seeds, run_episodes
from physgen.errors import PhysgenError
from physgen.io import write_bytes
from physgen.seeds import EVALUATION

FAILURE_VIDEOS = 5
SUCCESS_VIDEOS = 2
MAX_FPS = 25
MUJOCO_SIZE = 240
MIN_WIDTH = 240  # smaller frames (the 2-D tasks') are enlarged by a whole factor, so that captions fit beside them
STRIP_FRAMES = 6
FONT_SIZE = 12  # pixels: legible, and small enough that a caption's lines fit frames `MIN_WIDTH` wide
MACRO_BLOCK = 8  # the MP4 encoder's block: frame sides are padded to a multiple of it
LINE = FONT_SIZE + 3
PAD = 3
GAP = 2  # pixels between a filmstrip's frames, so that neighbouring views do not read as one scene
BAND, INK = (255, 255, 255), (20, 20, 20)


class Frames(NamedTuple):
    """An episode's rendered frames, the step each shows (the number of actions executed before it: 0, every
    stride-th step and the last) and the frame rate that plays them in real time."""

    images: list[np.ndarray]
    steps: list[int]
    fps: float


class Clip(NamedTuple):
    """A rendered episode of a run: its video and filmstrip (failures only, else None), relative to the run folder,
    and the caption lines both carry."""

    label: str
    video: str
    filmstrip: str | None
    caption: tuple[str, ...]


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
        flags = mujoco.mjtRndFlag
        for flag in (flags.mjRND_SHADOW, flags.mjRND_REFLECTION, flags.mjRND_SKYBOX):
            renderer.scene.flags[flag] = 0
        return renderer.render()

    return frame


def _with_policy_view(task: Task, image: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """The third-person `image`, and beside it, for a task observed through a camera (`physgen.envs.images`), the
    frame the policy saw (its observation), enlarged to the same height."""
    if not observes_frames(task):
        return image
    height = image.shape[0]
    seen = Image.fromarray(np.asarray(obs).reshape(image_shape(task))).resize((height, height), Image.NEAREST)
    return np.concatenate([image, np.full((height, 2 * GAP, 3), 255, np.uint8), np.asarray(seen)], axis=1)


def episode_frames(task: Task, episode_seed: int, actions: np.ndarray) -> Frames:
    """Replay `actions` from the reset of `episode_seed`, rendering at most `MAX_FPS` frames per simulated second,
    each at least `MIN_WIDTH` pixels wide (with the policy's own view beside the task's, for an image task)."""
    env = task.make_env(render_mode="rgb_array")
    obs, _ = env.reset(seed=int(episode_seed))
    render = _mujoco_camera(env) or env.render
    first = _with_policy_view(task, render(), obs)
    scale = math.ceil(MIN_WIDTH / first.shape[1])
    stride = max(1, math.ceil(task.control_hz / MAX_FPS))
    images, steps = [first], [0]
    for t, action in enumerate(actions, 1):
        obs = env.step(action)[0]
        if t % stride == 0 or t == len(actions):
            images.append(_with_policy_view(task, render(), obs))
            steps.append(t)
    env.close()
    return Frames([image.repeat(scale, axis=0).repeat(scale, axis=1) for image in images], steps,
                  task.control_hz / stride)


@functools.cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _wrap(texts: list[str], width: int) -> list[str]:
    """Each text in lines of at most `width` pixels, broken at spaces (a longer word keeps a line of its own)."""
    lines = []
    for text in texts:
        lines.append("")
        for word in text.split(" "):
            if lines[-1] and _font().getlength(f"{lines[-1]} {word}") > width:
                lines.append(word)
            else:
                lines[-1] = f"{lines[-1]} {word}" if lines[-1] else word
    return lines


def _band(width: int, lines: list[str], multiple: int = 1) -> Image.Image:
    """A white band `width` pixels wide with `lines` in dark text, its height rounded up to a `multiple` of pixels
    (the video encoder wants sizes in multiples of 8)."""
    image = Image.new("RGB", (width, -(-(len(lines) * LINE + 2 * PAD) // multiple) * multiple), BAND)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((PAD, PAD + i * LINE), line, fill=INK, font=_font())
    return image


def captioned(frames: Frames, caption: tuple[str, ...]) -> list[np.ndarray]:
    """Every frame under a band with the `caption` lines and the step the frame shows (drawn on a copy of the
    caption's band: the caption is laid out once per video)."""
    width = frames.images[0].shape[1]
    lines = _wrap(list(caption), width - 2 * PAD)
    band = _band(width, [*lines, ""], multiple=8)

    def under(image: np.ndarray, step: int) -> np.ndarray:
        top = band.copy()
        ImageDraw.Draw(top).text((PAD, PAD + len(lines) * LINE), f"step {step}", fill=INK, font=_font())
        return np.concatenate([np.asarray(top), image])

    return [under(image, step) for image, step in zip(frames.images, frames.steps)]


def filmstrip_indices(steps: list[int], failure_step: int, onset_step: int, horizon: int,
                      count: int = STRIP_FRAMES) -> list[int]:
    """The frames a failure's filmstrip shows: `count` spread evenly over the lead-up, from the last frame at or
    before its start (the cause's onset or `LEAD_FRACTION` of the horizon before the failure step, whichever is
    earlier) to the first frame at or after the failure step; when the lead-up has fewer frames, the last `count`
    up to that one."""
    last = min(int(np.searchsorted(steps, failure_step)), len(steps) - 1)
    start = min(onset_step, failure_step - LEAD_FRACTION * horizon)
    first = min(max(int(np.searchsorted(steps, start, side="right")) - 1, 0), max(last + 1 - count, 0))
    return [first + int(i) for i in np.round(np.linspace(0, last - first, min(count, last - first + 1)))]


def filmstrip(frames: Frames, indices: list[int], caption: tuple[str, ...]) -> np.ndarray:
    """The frames at `indices` side by side, `GAP` pixels apart, each with its step beneath, under a band with the
    caption joined in one line (wrapped when longer than the strip is wide)."""
    height, width = frames.images[0].shape[:2]
    gap = np.full((height, GAP, 3), BAND, np.uint8)
    row = np.concatenate([part for i in indices for part in (gap, frames.images[i])][1:], axis=1)
    labels = _band(row.shape[1], [""])
    draw = ImageDraw.Draw(labels)
    for k, i in enumerate(indices):
        draw.text((k * (width + GAP) + PAD, PAD), f"step {frames.steps[i]}", fill=INK, font=_font())
    title = _band(row.shape[1], _wrap([", ".join(caption)], row.shape[1] - 2 * PAD))
    return np.concatenate([np.asarray(title), row, np.asarray(labels)])


def write_video(images: list[np.ndarray], fps: float, path: Path) -> Path:
    """`images` as an MP4 at `path`, or as a GIF beside it when the MP4 encoder fails; the path written. Either is
    complete or absent: the MP4 is encoded into a partial file (ffmpeg writes only to files, named by their
    extension) renamed into place, the GIF in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        with warnings.catch_warnings():
            # imageio-ffmpeg starts ffmpeg with a preexec_fn (a process group of its own), so JAX's at-fork hook
            # warns that forking its threads may deadlock; the child only calls setpgrp and execs ffmpeg
            warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
            with imageio.get_writer(partial, fps=fps, macro_block_size=MACRO_BLOCK) as writer:
                # each frame padded with white to whole codec blocks, which imageio would otherwise reach by
                # resampling the frame, with a warning
                for image in images:
                    pad = ((0, -image.shape[0] % MACRO_BLOCK), (0, -image.shape[1] % MACRO_BLOCK), (0, 0))
                    writer.append_data(np.pad(image, pad, constant_values=255))
        os.replace(partial, path)
        return path
    except (OSError, RuntimeError, ValueError):
        buffer = io.BytesIO()
        imageio.mimwrite(buffer, images, format="GIF", duration=1000 / fps)
        return write_bytes(path.with_suffix(".gif"), buffer.getvalue())
    finally:
        partial.unlink(missing_ok=True)


def render_episode(task: Task, episode_seed: int, actions: np.ndarray, path: Path) -> Path:
    """Replay `actions` from the reset of `episode_seed` and write the frames, each under its step, to `path` (.mp4,
    or .gif on failure)."""
    frames = episode_frames(task, episode_seed, actions)
    return write_video(captioned(frames, ()), frames.fps, path)


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


def failure_videos(out: Path, task: Task, units: dict[str, list[dict]]) -> dict[str, list[Clip]] | str:
    """Render the picked episodes of every method into `out/videos/<method>/`: a captioned video of each and a
    filmstrip of each failure; or why rendering failed (the results stand without the videos)."""
    try:
        return _render_picked(out, task, units)
    except PhysgenError as error:
        return str(error)


def episode_caption(method: str, label: str, seed: int, episode: dict) -> tuple[str, ...]:
    """What a picked episode's video and filmstrip say it is: the method (row) and category, the training seed and
    evaluation episode (its environment seed), and for a failure its failure step and event."""
    lines = (f"{method}: {label}", f"seed {seed}, episode {episode['episode_seed']}")
    if episode["evidence"] is None:
        return lines
    evidence = episode["evidence"]
    return (*lines, f"failure step {evidence['failure_step']} ({evidence['failure_event'] or 'episode end'})")


def _render_picked(out: Path, task: Task, units: dict[str, list[dict]]) -> dict[str, list[Clip]]:
    written = {}
    for method, records in units.items():
        clips = []
        for r, e, label in pick_episodes(records, task_categories(task)):
            record = records[r]
            arrays = np.load(unit_path(out, method, record["seed"]).with_suffix(".npz"))
            episode = record["episodes"][e]
            frames = episode_frames(task, episode["episode_seed"], arrays["actions"][e, : episode["length"]])
            caption = episode_caption(method, label, record["seed"], episode)
            name = f"{label}_seed{record['seed']}_episode{episode['episode_seed']}.mp4"
            video = write_video(captioned(frames, caption), frames.fps, out / "videos" / row_folder(method) / name)
            strip = None
            if episode["evidence"] is not None:
                evidence = episode["evidence"]
                indices = filmstrip_indices(frames.steps, evidence["failure_step"], evidence["onset_step"],
                                            task.horizon)
                png = io.BytesIO()
                Image.fromarray(filmstrip(frames, indices, caption)).save(png, format="PNG")
                strip = str(write_bytes(video.with_suffix(".png"), png.getvalue()).relative_to(out))
            clips.append(Clip(label, str(video.relative_to(out)), strip, caption))
        written[method] = clips
    return written


def checkpoint_videos(task: Task, checkpoint: Path, episodes: int, out: Path) -> list[Path]:
    """Roll out a policy checkpoint (diffusion, flow, bc or ppo) on `episodes` evaluation episodes and render each."""
    agent, params = load_agent(checkpoint, task.name)
    # success rules such as hopper's need the expert's return: a missing dataset fails here, before any rollout
    expert_return = load_dataset(task).metadata.get("ref_max_score")
    seeds = episode_seeds(EVALUATION, episodes)
    rollouts = run_episodes(task, agent, jax.tree.map(lambda x: x[None], params), seeds, expert_return)
    paths = []
    for e, seed in enumerate(seeds):
        label = "_".join(k for k in task.events if np.any(rollouts.events[k][0, e])) or "no_events"
        paths.append(render_episode(task, int(seed), rollouts.actions[0, e, : rollouts.lengths[0, e]],
                                    out / f"episode{seed}_{label}_return{rollouts.returns[0, e]:.0f}.mp4"))
    return paths
