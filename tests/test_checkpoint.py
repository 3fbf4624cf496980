import jax.numpy as jnp
import numpy as np
import pytest

from physgen import PhysgenError
from physgen.policies import load_checkpoint, save_checkpoint


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
