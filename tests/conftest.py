import os

# Tests run small programs once each, so compiling dominates: LLVM without optimization compiles XLA:CPU programs
# ~2.4x faster (the PPO program: 42 s -> 17 s), and runs them slower where it hardly matters here. Set before jax
# loads; subprocesses inherit it. Benchmarks and user runs keep the default optimization level.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

import jax
import pytest

from physgen.data import generate_dataset
from physgen.envs import get_task


@pytest.fixture(scope="session", autouse=True)
def minari_root(tmp_path_factory):
    """Every test writes its Minari datasets under one temporary root, never under the user's."""
    root = tmp_path_factory.mktemp("minari")
    patch = pytest.MonkeyPatch()
    patch.setenv("MINARI_DATASETS_PATH", str(root))
    yield root
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA cache for the session, shared by the xdist workers and the subprocesses tests start:
    programs that several tests (or a killed run and its rerun) build alike compile once. A size limit turns on
    JAX's file lock, without which one process could read an entry another is still writing."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"
    folder.mkdir(exist_ok=True)
    patch = pytest.MonkeyPatch()
    settings = {"jax_compilation_cache_dir": str(folder), "jax_compilation_cache_max_size": 2**40}
    for name, value in settings.items():
        patch.setenv(name.upper(), str(value))
        jax.config.update(name, value)
    yield folder
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_compilation_cache_max_size", -1)
    patch.undo()


@pytest.fixture(scope="session")
def fork_dataset(minari_root):
    """A small expert dataset of `fork` (20 episodes, seed 0), shared by the data tests."""
    return generate_dataset(get_task("fork"), episodes=20, seed=0)
