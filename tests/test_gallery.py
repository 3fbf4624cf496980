"""The failure gallery: which frames a filmstrip shows, its layout and captions, the captioned videos and the report
section that embeds them."""

import re
import warnings

import imageio.v2 as imageio
import jax
import numpy as np
import pytest
from PIL import Image

from physgen.bench import video
from physgen.bench.report import gallery_section
from physgen.bench.units import unit_path
from physgen.envs import get_task
from physgen.io import write_npz

HOPPER_STEPS = [*range(0, 366, 5), 366]  # frames of a 366-step hopper episode: every 5th step and the last


@pytest.mark.parametrize(("steps", "failure", "onset", "horizon", "shown"), [
    # a fall at step 365 without an earlier cause: the last 10% of the horizon (100 steps), 6 frames 20 steps apart
    (HOPPER_STEPS, 365, 365, 1000, [265, 285, 305, 325, 345, 365]),
    # a cause from step 100: frames 20..73 (53 apart) at 0, 10.6, 21.2, 31.8, 42.4, 53 rounded
    (HOPPER_STEPS, 365, 100, 1000, [100, 155, 205, 260, 310, 365]),
    # a cause from step 889, between two frames: from the frame before it, 885 (frames 177..198 at 0, 4.2, 8.4,
    # 12.6, 16.8, 21 rounded)
    ([*range(0, 991, 5), 991], 990, 889, 1000, [885, 905, 925, 950, 970, 990]),
    # a lead-up of 2 steps holds one frame: the last 6 frames up to the failure
    (HOPPER_STEPS, 50, 50, 20, [25, 30, 35, 40, 45, 50]),
    # no failure event: the failure step is the episode's end, its lead-up the last 10 steps of fork's 100
    (list(range(0, 101, 2)), 100, 100, 100, [90, 92, 94, 96, 98, 100]),
    # an event between two frames: the strip ends at the first frame after it; fewer frames than 6 in all
    ([0, 2, 4, 6, 8], 3, 3, 100, [0, 2, 4]),
])
def test_filmstrip_frames_cover_the_lead_up_to_the_failure(steps, failure, onset, horizon, shown):
    assert [steps[i] for i in video.filmstrip_indices(steps, failure, onset, horizon)] == shown


def flat_frames(count: int, size: int = 40) -> video.Frames:
    """`count` frames of one colour each (frame i has red channel 10 i), 2 steps apart."""
    images = [np.full((size, size, 3), (10 * i, 100, 200), np.uint8) for i in range(count)]
    return video.Frames(images, list(range(0, 2 * count, 2)), 25.0)


def dark(band: np.ndarray) -> bool:
    """Whether text was drawn on a white band."""
    return bool((band.min(axis=2) < 128).any())


def test_a_filmstrip_is_its_frames_side_by_side_under_a_caption_with_their_steps_beneath():
    frames, band = flat_frames(10, size=120), video.LINE + 2 * video.PAD  # bands of one line
    strip = video.filmstrip(frames, [2, 5, 9], ("bc: collision", "seed 1, episode 7"))
    assert strip.shape == (band + 120 + band, 3 * 120 + 2 * video.GAP, 3)
    for k, i in enumerate([2, 5, 9]):
        left = k * (120 + video.GAP)
        np.testing.assert_array_equal(strip[band: band + 120, left: left + 120], frames.images[i])
        assert dark(strip[band + 120:, left: left + 120])  # "step 4", "step 10", "step 18"
    assert dark(strip[:band])  # the caption, above the frames
    # a caption longer than the strip is wide wraps onto more lines
    assert video.filmstrip(frames, [2], ("bc: collision", "seed 1, episode 7")).shape[0] > strip.shape[0]


def test_captioned_frames_keep_their_count_and_images_under_a_band_of_whole_macro_blocks():
    frames = flat_frames(7)
    shown = video.captioned(frames, ("bc: timeout", "seed 0, episode 3"))
    assert len(shown) == len(frames.images)
    band = shown[0].shape[0] - 40
    assert band % 8 == 0 and all(image.shape == (band + 40, 40, 3) for image in shown)
    for image, original in zip(shown, frames.images):
        np.testing.assert_array_equal(image[band:], original)
    # the caption is the same on every frame, the step line differs
    assert not np.array_equal(shown[0][:band], shown[1][:band])
    assert dark(shown[0][:band])


@pytest.fixture(scope="module")
def fork_run(tmp_path_factory):
    """A run folder holding one fork unit of two recorded episodes (the agent standing still for 20 steps), one a
    failure at step 19, one a success, and their rendered gallery."""
    out, task = tmp_path_factory.mktemp("gallery"), get_task("fork")
    episodes = [{"episode_seed": 5, "length": 20, "category": "collision",
                 "evidence": {"failure_step": 19, "failure_event": "collision", "onset_step": 19}},
                {"episode_seed": 6, "length": 20, "category": None, "evidence": None}]
    write_npz(unit_path(out, "bc", 0).with_suffix(".npz"), {"actions": np.zeros((2, task.horizon, task.act_dim))})
    return out, task, video.failure_videos(out, task, {"bc": [{"seed": 0, "episodes": episodes}]})


def test_the_filmstrip_holds_the_videos_frames_of_the_lead_up(fork_run):
    out, task, clips = fork_run
    failure, success = clips["bc"]
    assert (failure.label, success.label, success.filmstrip) == ("collision", "success", None)
    assert failure.caption == ("bc: collision", "seed 0, episode 5", "failure step 19 (collision)")
    frames = video.episode_frames(task, 5, np.zeros((20, task.act_dim)))
    assert frames.steps == list(range(0, 21, 2)) and frames.images[0].shape[1] >= video.MIN_WIDTH
    strip = np.asarray(Image.open(out / failure.filmstrip))
    size, band = frames.images[0].shape[0], video.LINE + 2 * video.PAD
    assert strip.shape == (band + size + band, 6 * size + 5 * video.GAP, 3)
    for k, i in enumerate(range(5, 11)):  # steps 10..20: the lead-up of 10 steps before step 19, then step 20
        np.testing.assert_array_equal(strip[band: band + size, k * (size + video.GAP):][:, :size], frames.images[i])
    with imageio.get_reader(out / failure.video) as reader:
        assert sum(1 for _ in reader) == len(frames.images)


def test_the_gallery_section_embeds_every_filmstrip_and_links_every_video(fork_run):
    out, _, clips = fork_run
    section = "\n".join(gallery_section(clips))
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section)
    links = re.findall(r"(?<!!)\[[^\]]*\]\(([^)]+)\)", section)
    assert images == [clips["bc"][0].filmstrip]
    assert sorted(links) == sorted(c.video for c in clips["bc"])
    assert all((out / path).is_file() for path in images + links)
    assert "<details><summary>bc: 1 failure (collision 1)</summary>" in section
    assert gallery_section("MuJoCo could not render")[-2] == "Not rendered: MuJoCo could not render"


def test_a_video_is_complete_or_absent_and_falls_back_to_a_gif(tmp_path, monkeypatch):
    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(5)]
    path = video.write_video(frames, 10, tmp_path / "clip.mp4")
    assert path == tmp_path / "clip.mp4" and len(imageio.mimread(path)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no partial file left

    class Interrupted:  # an encoder stopped midway (Ctrl-C): no video at its name, no partial file
        def __init__(self, partial, **options):
            self.partial = partial

        def __enter__(self):
            self.partial.write_bytes(b"half a video")
            return self

        def __exit__(self, *exc):
            return False

        def append_data(self, image):
            raise KeyboardInterrupt

    monkeypatch.setattr(video.imageio, "get_writer", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        video.write_video(frames, 10, tmp_path / "stopped.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]

    def no_encoder(partial, **options):
        raise RuntimeError("no ffmpeg")

    monkeypatch.setattr(video.imageio, "get_writer", no_encoder)
    gif = video.write_video(frames, 10, tmp_path / "fallback.mp4")
    assert gif == tmp_path / "fallback.gif" and len(imageio.mimread(gif)) == 5
    assert not (tmp_path / "fallback.mp4").exists()


def test_encoding_a_video_beside_jax_raises_no_fork_warning(tmp_path):
    jax.numpy.ones(3).block_until_ready()  # JAX's threads running, and its at-fork hook registered
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        video.write_video([np.zeros((16, 16, 3), np.uint8)] * 3, 10, tmp_path / "clip.mp4")
    assert not [w for w in caught if "fork" in str(w.message)]


def test_a_frame_of_odd_size_is_padded_with_white_not_resampled(tmp_path, caplog):
    frame = np.zeros((13, 21, 3), np.uint8)
    frame[:, :10] = 200  # a sharp edge, which resampling would blur
    path = video.write_video([frame] * 3, 10, tmp_path / "odd.mp4")
    decoded = imageio.mimread(path)[0].astype(int)
    assert decoded.shape == (16, 24, 3) and not caplog.records
    assert np.abs(decoded[:13, :21] - frame).max() < 12  # the frame where it was, up to the codec's loss
    assert decoded[13:].mean() > 230 and decoded[:, 21:].mean() > 230  # white beyond it, where stretching puts black
