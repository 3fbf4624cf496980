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

Several processes (`initialize`, `jax.distributed`; one per host, each running the same command) make one mesh of
every process's devices, taken in turns from each process so that every process holds a share of the seeds. A process
runs only its own devices' groups; what every process needs whole (losses, trained weights, rollouts) is gathered
from all of them (`gathered`, a collective every process calls), so each group still runs the single-device program.
Where the seeds fill fewer devices than there are processes, every process computes all of them as one device.
Gymnasium environments, stepped on the host, follow the same groups: each process steps the environments of its
devices' seeds, and each device acts for its group (`device_parts`, `assembled`).
"""

from __future__ import annotations

import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from physgen.errors import PhysgenError

SEEDS = "seeds"


def initialize(coordinator: str | None = None, processes: int | None = None, process_id: int | None = None) -> None:
    """Join a run of several processes (`jax.distributed.initialize`) before any JAX computation; nothing when no
    argument is given (one process). `coordinator` is process 0's "HOST:PORT", or "auto" for what JAX detects
    (SLURM, Open MPI and the other clusters it knows), which also fills a count or id left out."""
    if coordinator is None and processes is None and process_id is None:
        return
    if coordinator is None:
        raise PhysgenError("--processes and --process-id need --coordinator HOST:PORT (process 0's address), or "
                           "--coordinator auto under SLURM or Open MPI")
    if coordinator != "auto" and not coordinator.rpartition(":")[2].isdigit():
        raise PhysgenError(f"--coordinator takes HOST:PORT (process 0's address) or 'auto', got {coordinator!r}")
    if processes is not None and processes < 1:
        raise PhysgenError(f"--processes must be at least 1, got {processes}")
    if process_id is not None and not 0 <= process_id < (processes or process_id + 1):
        raise PhysgenError(f"--process-id must be from 0 to --processes - 1, got {process_id}")
    stop = signal.getsignal(signal.SIGTERM)
    try:
        jax.distributed.initialize(None if coordinator == "auto" else coordinator, processes, process_id)
    except (RuntimeError, ValueError) as error:  # JAX's for a cluster it cannot detect or a coordinator it cannot reach
        raise PhysgenError(f"jax.distributed could not start: {error}; pass --coordinator HOST:PORT, --processes "
                           "and --process-id, the same coordinator and count in every process") from error
    # jax.distributed's preemption notifier takes SIGTERM over and only records it, so a run would go on after a
    # `kill` or a scheduler's stop: the handler before it (physgen's clean stop, or the default) is put back
    signal.signal(signal.SIGTERM, stop)


def is_writer() -> bool:
    """Whether this process writes a run's files: process 0 of several, or the only one."""
    return jax.process_index() == 0


@contextmanager
def written_folder(out: Path):
    """`out` in process 0 (or the only one); in the others a temporary folder, removed at the end, for what they
    write in step with process 0 (orbax's checkpoints wait for every process), so that only process 0's files stay."""
    if is_writer():
        yield out
    else:
        with tempfile.TemporaryDirectory(prefix="physgen-process-") as scratch:
            yield Path(scratch)


def writer_first(make):
    """`make()` in process 0, then in the others (each waiting for process 0's to end): what process 0 writes to a
    shared folder (a generated dataset) the others then find instead of writing it at the same time."""
    if not is_writer():
        multihost_utils.sync_global_devices("physgen: process 0 done")
    made = make()
    if is_writer() and jax.process_count() > 1:
        multihost_utils.sync_global_devices("physgen: process 0 done")
    return made


def agreed(values: np.ndarray) -> np.ndarray:
    """Process 0's `values` (an array of the same shape in every process) in every process: what processes decide from
    files they may not share (the units a resumed run still needs), decided once for all of them."""
    return values if jax.process_count() == 1 else np.asarray(multihost_utils.broadcast_one_to_all(values))


def everywhere(found: bool) -> bool:
    """Whether `found` holds in every process: what a process found in its own files (an earlier run's checkpoints)
    is used only where every process found it, since the others write to a new temporary folder (`written_folder`)
    and would compute it again, out of step with the collectives of the ones that did not."""
    return found if jax.process_count() == 1 else bool(np.all(multihost_utils.process_allgather(np.array(found))))


def seed_mesh(devices: int | str | None) -> Mesh | None:
    """The mesh of the first `devices` JAX devices ("all": every one, of every process), or None for one device (no
    sharding). Several processes' devices are taken in turns, one of each process's, so that the first ones include
    every process."""
    available = _in_turns(jax.devices())
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


def _in_turns(devices: list) -> list:
    """`devices` ordered by their position within their process, then by process."""
    position = {}
    for device in devices:
        position[device] = sum(d.process_index == device.process_index for d in position)
    return sorted(devices, key=lambda d: (position[d], d.process_index))


def mesh_size(mesh: Mesh | None) -> int:
    """Devices the seeds are spread over (1 without a mesh)."""
    return 1 if mesh is None else mesh.size


def fit_mesh(mesh: Mesh | None, seeds: int) -> Mesh | None:
    """The first devices of `mesh` that `seeds` keep busy with at least two seeds each (a device holding one would
    compute it differently: module docstring); None when that is one device, or fewer devices than there are
    processes (then each process computes every seed as one device). The others would add no speed: a call takes as
    long as its busiest device."""
    if mesh is None:
        return None
    used = -(-seeds // max(2, -(-seeds // mesh.size)))
    return None if used <= 1 or used < jax.process_count() else Mesh(mesh.devices[:used], (SEEDS,))


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

    return _placed(jax.tree.map(pad, tree), NamedSharding(mesh, PartitionSpec(SEEDS)))


def replicated(tree, mesh: Mesh | None):
    """A copy of `tree` on every device of the mesh (what every seed reads)."""
    return tree if mesh is None else _placed(tree, NamedSharding(mesh, PartitionSpec()))


def _placed(tree, sharding: NamedSharding):
    """`tree` (the same in every process) placed with `sharding`, each process filling its own devices' parts."""
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), tree)


def on_each_device(program, mesh: Mesh | None, *trees):
    """`program(*trees)`, a jitted function of seeds on the leading axis, run on each device with its part of `trees`
    (placed by `placed_seeds` or `replicated`); its outputs, seeds on the leading axis, sharded over the mesh.
    JAX dispatches each call asynchronously, so the devices compute at once. The program is traced and lowered
    once; XLA compiles it for each device (an executable belongs to its device), the first call on each."""
    if mesh is None:
        return program(*trees)
    return assembled([program(*part) for part in device_parts(mesh, *trees)], mesh)


def device_parts(mesh: Mesh, *trees) -> list[tuple]:
    """For each device of `mesh` this process drives (all of them in a single process), in the mesh's order, its
    part of each of `trees` (placed by `placed_seeds` or `replicated`), on that device."""
    return [tuple(jax.tree.map(lambda x: next(s.data for s in x.addressable_shards if s.device == device), tree)
                  for tree in trees) for device in _own_devices(mesh)]


def assembled(parts: list, mesh: Mesh):
    """The outputs of `device_parts`' devices, one tree each (seeds on the leading axis, numpy or on the device),
    as one tree sharded over the mesh."""
    sharding, own = NamedSharding(mesh, PartitionSpec(SEEDS)), _own_devices(mesh)
    return jax.tree.map(lambda *shards: jax.make_array_from_single_device_arrays(
        (len(shards[0]) * mesh.size, *shards[0].shape[1:]), sharding,
        [jax.device_put(shard, device) for shard, device in zip(shards, own)]), *parts)


def _own_devices(mesh: Mesh) -> list:
    """The devices of `mesh` this process drives, in the mesh's order."""
    return [device for device in mesh.devices.flat if device.process_index == jax.process_index()]


def gathered(tree):
    """Every leaf whole, as numpy (keys, which have none, as keys on this process's device): one spread over several
    processes' devices is gathered from all of them (a collective, which every process calls in the same order)."""
    def whole(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return x if x.is_fully_addressable else jax.random.wrap_key_data(
                whole(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree.map(whole, tree)


def first_seeds(tree, seeds: int, mesh: Mesh | None = None):
    """The first `seeds` entries of every leaf's leading axis (the padding dropped), gathered onto the mesh's first
    device, or with several processes into this process's memory (numpy: a checkpoint of arrays on one device of one
    process is refused by orbax there); what single-device code takes (a program given arrays spread over the mesh
    would be partitioned)."""
    if mesh is not None:
        tree = gathered(tree) if jax.process_count() > 1 else jax.device_put(tree, mesh.devices.flat[0])
    return jax.tree.map(lambda x: x if len(x) == seeds else x[:seeds], tree)
