"""Data parallelism: a device mesh with one `data` axis, across one or several processes.

The batch axis of every batch and carry array is split along the mesh's `data`
axis; parameters and optimizer state are replicated on every device. The
jitted train step does not change: XLA sees the shardings of its arguments,
inserts the gradient all-reduce, and each device runs its slice of the batch.

With several processes (hosts), each process builds only its own rows of each
batch and `jax.make_array_from_process_local_data` assembles the global array.
Process 0 writes the logs; every process takes part in each checkpoint save, as
Orbax requires, and Orbax commits it from process 0.

NOTE: the multi-process path is tested with two processes on one machine (CPU
devices, Gloo collectives, a loopback coordinator), not across real hosts.
"""

import dataclasses
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

DATA_AXIS = "data"
COORDINATOR_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class ParallelError(ValueError):
    """A device count or batch size that cannot be split, with the fix in the message."""


def coordinator_settings(address: str | None, num_processes: int | None,
                         process_id: int | None) -> tuple | None:
    """Return (address, num_processes, process_id) from the flags, else the environment.

    Returns None when neither gives an address (a single-process run). All three
    are required together, so JAX never probes the network for a cluster.
    """
    env = {name: os.environ.get(name) for name in COORDINATOR_ENV}
    address = address or env["JAX_COORDINATOR_ADDRESS"]
    if address is None:
        return None
    if num_processes is None and env["JAX_NUM_PROCESSES"]:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env["JAX_PROCESS_ID"]:
        process_id = int(env["JAX_PROCESS_ID"])
    if num_processes is None or process_id is None:
        raise ParallelError(
            f"a coordinator address ({address}) needs the number of processes and this "
            "process's id too: pass --num-processes N --process-id I (or set "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ParallelError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    return address, num_processes, process_id


def initialize_distributed(settings: tuple | None) -> None:
    """Join the multi-process run described by `settings`; do nothing for a single process."""
    if settings is None:
        return
    address, num_processes, process_id = settings
    # JAX's coordinator listens on every interface unless told otherwise; a loopback
    # address means a single-machine run, so listen on loopback only.
    host = address.rsplit(":", 1)[0].strip("[]")
    bind = address if host in ("127.0.0.1", "localhost", "::1") else None
    # "deactivate" skips JAX's cluster auto-detection, which would query cloud metadata.
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                               process_id=process_id, cluster_detection_method="deactivate",
                               coordinator_bind_address=bind)


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The mesh of one training run and the placement of its arrays."""

    mesh: Mesh

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def batch_sharding(self) -> NamedSharding:
        """Chunks of batches (K, B, T): split B, the sequences."""
        return NamedSharding(self.mesh, PartitionSpec(None, DATA_AXIS))

    @property
    def carry_sharding(self) -> NamedSharding:
        """Carry entries (B, H): each device keeps the state of its own sequences."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def local_rows(self, batch_size: int) -> slice:
        """Return the rows of each batch that this process reads (all of them for one process)."""
        per_process = batch_size // jax.process_count()
        start = jax.process_index() * per_process
        return slice(start, start + per_process)

    def put_batch(self, local: np.ndarray, batch_size: int) -> jax.Array:
        """Assemble a global (K, B, T) array from this process's rows (K, B / processes, T)."""
        global_shape = (local.shape[0], batch_size) + local.shape[2:]
        return jax.make_array_from_process_local_data(self.batch_sharding, local, global_shape)

    def put_carry(self, carry):
        """Place a full (B, H) carry (the same value on every process) split by rows."""
        return jax.tree_util.tree_map(lambda leaf: _put_global(leaf, self.carry_sharding), carry)

    def put_replicated(self, tree):
        return jax.tree_util.tree_map(lambda leaf: _put_global(leaf, self.replicated), tree)


def _put_global(value, sharding: NamedSharding) -> jax.Array:
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_host(tree):
    """Copy a tree of (possibly sharded, multi-process) arrays to full NumPy arrays."""
    def fetch(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(jax.device_get(leaf))
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return jax.tree_util.tree_map(fetch, tree)


def check_split(num_devices: int, available: int, batch_size: int, num_processes: int = 1,
                platform: str = "cpu") -> None:
    """Raise ParallelError unless `batch_size` splits evenly over `num_devices` of `available`."""
    if not 1 <= num_devices <= available:
        hint = (f" (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} "
                "creates that many host devices sharing the same cores)"
                if platform == "cpu" and num_devices > available else "")
        raise ParallelError(
            f"--devices {num_devices} is not available: JAX sees {available} {platform} "
            f"device(s); pass --devices between 1 and {available}{hint}")
    if num_devices % num_processes:
        raise ParallelError(
            f"--devices {num_devices} must be a multiple of the {num_processes} processes")
    if batch_size % num_devices:
        lower = batch_size - batch_size % num_devices
        suggestion = f"{lower} or {lower + num_devices}" if lower else f"{num_devices}"
        raise ParallelError(
            f"--batch-size {batch_size} does not split evenly over {num_devices} devices; use a "
            f"multiple of {num_devices} (e.g. {suggestion}) or change --devices")


def make_data_parallel(num_devices: int | None, batch_size: int) -> DataParallel:
    """Build the mesh over the first `num_devices` devices (None: all), checking the batch splits."""
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    check_split(num_devices, len(devices), batch_size, jax.process_count(),
                devices[0].platform)
    if jax.process_count() > 1:
        # Every process contributes the same number of its own local devices.
        per_process = num_devices // jax.process_count()
        chosen = [device for process in range(jax.process_count())
                  for device in [d for d in devices if d.process_index == process][:per_process]]
    else:
        chosen = devices[:num_devices]
    return DataParallel(Mesh(np.array(chosen), (DATA_AXIS,)))


def describe(parallel: DataParallel) -> str:
    """Name the devices of the mesh for the log, e.g. '4 cpu devices (cpu:0-3) in 1 process'."""
    devices = list(parallel.mesh.devices.flat)
    ids = [device.id for device in devices]
    span = f"{ids[0]}-{ids[-1]}" if len(ids) > 1 and ids == list(range(ids[0], ids[-1] + 1)) \
        else ",".join(map(str, ids))
    return (f"{len(devices)} {devices[0].platform} device(s) ({devices[0].platform}:{span}) "
            f"in {jax.process_count()} process(es)")
