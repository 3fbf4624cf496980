import gc
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from physgen import PhysgenError
from physgen.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip_keeps_arrays_and_meta(tmp_path):
    arrays = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "norm": {"shift": np.ones(2, np.float32)}}
    save_checkpoint(tmp_path / "ck", arrays, {"method": "bc", "task": "fork", "config": {"lr": 1e-3}})
    restored, meta = load_checkpoint(tmp_path / "ck", task="fork")
    np.testing.assert_array_equal(restored["params"]["w"], arrays["params"]["w"])
    np.testing.assert_array_equal(restored["norm"]["shift"], arrays["norm"]["shift"])
    assert meta["config"] == {"lr": 1e-3} and meta["method"] == "bc" and "physgen_version" in meta


def test_bad_checkpoints_are_refused(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": jnp.zeros(2)}, {"method": "bc", "task": "fork", "config": {}})
    with pytest.raises(PhysgenError, match="trained on task 'fork', not 'maze'"):
        load_checkpoint(tmp_path / "ck", task="maze")
    with pytest.raises(PhysgenError, match="not a physgen checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    for f in (tmp_path / "ck" / "arrays").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(PhysgenError, match="corrupt or incomplete"):
        load_checkpoint(tmp_path / "ck")


def test_a_flipped_byte_is_refused_by_the_digest(tmp_path):
    weights = np.linspace(-1, 1, 1000, dtype=np.float32)
    save_checkpoint(tmp_path / "ck", {"w": weights}, {"method": "bc", "task": "fork", "config": {}})
    # the largest file holds the zstd-compressed weights, which carry no checksum: a flip mid-file decodes to
    # other numbers (NaN among them), and orbax restored them without a word
    data_file = max((f for f in (tmp_path / "ck" / "arrays").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    data = bytearray(data_file.read_bytes())
    data[len(data) // 2] ^= 0x40
    data_file.write_bytes(bytes(data))
    with pytest.raises(PhysgenError, match="^checkpoint .*ck is corrupt: its arrays or meta do not match the SHA-256 "
                                           "saved with them; train it again or restore it from a backup$"):
        load_checkpoint(tmp_path / "ck")


def test_a_tampered_meta_is_refused_by_the_digest(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": jnp.zeros(2)}, {"method": "bc", "task": "fork", "config": {}})
    (meta,) = [f for f in (tmp_path / "ck" / "meta").rglob("*") if f.is_file() and b'"task": "fork"' in f.read_bytes()]
    meta.write_bytes(meta.read_bytes().replace(b'"task": "fork"', b'"task": "gork"'))  # one flipped bit
    with pytest.raises(PhysgenError, match="is corrupt: its arrays or meta do not match the SHA-256"):
        load_checkpoint(tmp_path / "ck")


def test_checkpoints_without_a_digest_still_load(tmp_path):
    """Those written before digests, such as the shipped hopper experts."""
    arrays, meta = load_checkpoint(Path(__file__).parents[1] / "physgen/experts/hopper/expert", task="hopper")
    assert "sha256" not in meta and meta["method"] == "ppo" and arrays["params"]


def test_a_corrupt_checkpoint_is_one_short_line_and_nothing_else(tmp_path, monkeypatch, caplog):
    """TensorStore's error carried its whole spec, the other failed reads logged theirs ("Task exception was never
    retrieved"), and those still running when orbax closed its event loop printed "Event loop is closed"."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    save_checkpoint(tmp_path / "ck", {f"w{i}": jnp.zeros(100) for i in range(8)}, {"method": "bc", "task": "fork",
                                                                                    "config": {}})
    (data,) = (tmp_path / "ck" / "arrays" / "d").iterdir()
    data.write_bytes(bytes([data.read_bytes()[0] ^ 0x40]) + data.read_bytes()[1:])
    for _ in range(10):
        with pytest.raises(PhysgenError, match="could not be read .*; it is corrupt or incomplete: train it again$") \
                as error:
            load_checkpoint(tmp_path / "ck")
        assert "\n" not in str(error.value) and len(str(error.value)) < 400
    time.sleep(0.2)  # the late callbacks
    gc.collect()
    assert unraisable == [] and [r for r in caplog.records if r.name == "asyncio"] == []
