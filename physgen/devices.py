"""A seed axis over devices: the seeds a program vmaps over, split across a one-axis `Mesh` named "seeds".

A run's seeds are padded to fill every device it uses (copies of the last seed, which compute what it computes and
are dropped afterwards) and placed with `NamedSharding(mesh, P("seeds"))`; what every seed reads (the dataset, the
evaluation episodes) is replicated. `on_each_device` then runs the single-device program on each device's seeds and
assembles the outputs sharded the same way, with no transfer through the host.

What a seed computes on a device is what one device computes for that device's group of seeds, bit for bit. It is
not one program partitioned over the mesh (jit propagating the sharding): XLA compiles that through another
pipeline, which rewrites some arithmetic differently (optax's gradient clipping divides by the norm there and
multiplies by its reciprocal in the single-device program). Whether a group's numbers equal those of all the seeds on
one device depends on XLA's kernels, which pick their blocking by the problem's size, the number of seeds included:
  - a vmap over one seed is another program (the size-1 axis is dropped), so a device holds two seeds or more
    (`fit_mesh`);
  - training: equal on fork's smoke flow recipe (tests/test_devices.py); at other sizes a group can differ from all the
    seeds in the last bits (`benchmarks/scaling.py` prints whether each device count's losses match one device's);
  - rollouts: where every seed reads the same operand (a sampler's time embedding) XLA merges the seeds into one
    matrix product whose kernel depends on their number, so a group's rollouts can differ in the last bits.
`None` (one device) places nothing: a run keeps the plain single-device program and its numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from physgen.errors import PhysgenError

SEEDS = "seeds"


def seed_mesh(devices: int | str | None) -> Mesh | None:
    """The mesh of the first `devices` JAX devices ("all": every one), or None for one device (no sharding)."""
    available = jax.devices()
    if devices == "all":
        count = len(available)
    else:
        try:
            count = 1 if devices is None else int(devices)
        except ValueError:
            raise PhysgenError(f"--devices takes a number or 'all', got {devices!r}") from None
    if count < 1:
        raise PhysgenError(f"--devices must be at least 1, got {count}")
    if count > len(available):
        raise PhysgenError(
            f"--devices {count}: JAX finds {len(available)} {available[0].platform} device(s); pass at most "
            f"{len(available)} or 'all' (to try sharding on a CPU, start with XLA_FLAGS=--xla_force_host_platform_"
            f"device_count={count}, which splits the CPU into that many devices)")
    return None if count == 1 else Mesh(np.array(available[:count]), (SEEDS,))


def mesh_size(mesh: Mesh | None) -> int:
    """Devices the seeds are spread over (1 without a mesh)."""
    return 1 if mesh is None else mesh.size


def fit_mesh(mesh: Mesh | None, seeds: int) -> Mesh | None:
    """The first devices of `mesh` that `seeds` keep busy with at least two seeds each (a device holding one would
    compute it differently: module docstring); None when that is one device. The others would add no speed: a call
    takes as long as its busiest device."""
    if mesh is None:
        return None
    used = -(-seeds // max(2, -(-seeds // mesh.size)))
    return None if used <= 1 else Mesh(mesh.devices[:used], (SEEDS,))


def padded_count(seeds: int, mesh: Mesh | None) -> int:
    """`seeds` rounded up to a multiple of the mesh's devices."""
    return -(-seeds // mesh_size(mesh)) * mesh_size(mesh)


def placed_seeds(tree, mesh: Mesh | None):
    """Every leaf's leading (seed) axis padded to `padded_count` by repeating its last entry and split over the
    mesh's devices; None stays None, and without a mesh the tree is returned as it is."""
    if mesh is None:
        return tree

    def pad(x):
        extra = padded_count(len(x), mesh) - len(x)
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]) if extra else x

    return jax.device_put(jax.tree.map(pad, tree), NamedSharding(mesh, PartitionSpec(SEEDS)))


def replicated(tree, mesh: Mesh | None):
    """A copy of `tree` on every device of the mesh (what every seed reads)."""
    return tree if mesh is None else jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def on_each_device(program, mesh: Mesh | None, *trees):
    """`program(*trees)`, a jitted function of seeds on the leading axis, run on each device with its part of `trees`
    (placed by `placed_seeds` or `replicated`); its outputs, seeds on the leading axis, sharded over the mesh.
    JAX dispatches each call asynchronously, so the devices compute at once; they share one compiled program."""
    if mesh is None:
        return program(*trees)
    devices = list(mesh.devices.flat)
    parts = [program(*(jax.tree.map(lambda x: _shard_on(x, device), tree) for tree in trees)) for device in devices]
    sharding = NamedSharding(mesh, PartitionSpec(SEEDS))
    return jax.tree.map(lambda *shards: jax.make_array_from_single_device_arrays(
        (sum(len(s) for s in shards), *shards[0].shape[1:]), sharding, list(shards)), *parts)


def _shard_on(x: jax.Array, device) -> jax.Array:
    return next(shard.data for shard in x.addressable_shards if shard.device == device)


def first_seeds(tree, seeds: int, mesh: Mesh | None = None):
    """The first `seeds` entries of every leaf's leading axis (the padding dropped), gathered onto the mesh's first
    device: what single-device code finds there (a program given arrays spread over the mesh would be partitioned)."""
    if mesh is not None:
        tree = jax.device_put(tree, mesh.devices.flat[0])
    return jax.tree.map(lambda x: x if len(x) == seeds else x[:seeds], tree)
