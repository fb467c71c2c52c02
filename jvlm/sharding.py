"""Device mesh from config, logical-axis rules, and process-local -> global arrays.

Mode: every mesh axis is `AxisType.Auto` (GSPMD propagation). Model code names logical axes
("batch", "embed", "mlp", ...), `LOGICAL_RULES` maps them to mesh axes, and `jax.jit` with
`NamedSharding` in/out shardings lets XLA partition the rest. Code that needs explicit
collectives (the ring sigmoid loss) enters `jax.shard_map` over the same mesh.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes

# Logical axis -> mesh axes. Axes of size 1 make a rule a no-op, so one table serves
# pure data parallelism, FSDP (embed over fsdp) and tensor parallelism (mlp/heads over model).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("length", None),
    ("patch", None),
    ("channels", None),
)


def resolve_mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """{'data': -1, 'fsdp': 2, 'model': 1} with 8 devices -> {'data': 4, 'fsdp': 2, 'model': 1}."""
    from jvlm.config import ConfigError

    unknown = set(mesh_config) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"config.mesh has unknown axes {sorted(unknown)}; valid axes are {MESH_AXES}.")
    shape = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    free = [a for a, n in shape.items() if n == -1]
    if len(free) > 1:
        raise ConfigError(f"config.mesh: only one axis may be -1 ('the rest'), got {free}.")
    if any(n == 0 or n < -1 for n in shape.values()):
        raise ConfigError(f"config.mesh sizes must be positive or -1, got {shape}.")
    fixed = math.prod(n for n in shape.values() if n != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh {shape}: the fixed axes use {fixed} devices, which does not divide the "
                f"{num_devices} available devices. Change the mesh sizes.")
        shape[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"config.mesh {shape} uses {fixed} devices but {num_devices} are available; "
            f"set one axis to -1 to use the rest, e.g. --config.mesh.data=-1.")
    return shape


def data_parallel_size(shape: Mapping[str, int]) -> int:
    return math.prod(shape[a] for a in BATCH_AXES)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(
        tuple(shape[a] for a in MESH_AXES), MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def logical_shardings(boxed_abstract_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """Shardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes."""
    specs = nn.get_partition_spec(boxed_abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def shard_like_params(tree: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer-state tree: a leaf whose key path ends with a parameter's path
    (and has its shape) gets that parameter's sharding; everything else is replicated."""
    by_path = {}
    for path, sharding in jax.tree_util.tree_leaves_with_path(param_shardings):
        by_path[_path_key(path)] = sharding

    def pick(path, leaf):
        key = _path_key(path)
        for start in range(len(key)):
            sharding = by_path.get(key[start:])
            if sharding is not None and _fits(sharding, leaf):
                return sharding
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)


def _fits(sharding: NamedSharding, leaf) -> bool:
    shape = getattr(leaf, "shape", ())
    return len(shape) >= len(sharding.spec)


def _path_key(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def process_rows(mesh: Mesh, global_batch_size: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows that live on this process's devices.

    The data loader reads exactly these rows, so the global batch assembled from every process's
    local rows is the same whatever the process count or the device order of the mesh.
    """
    dp = data_parallel_size(mesh.shape)
    if global_batch_size % dp:
        raise ValueError(f"global batch {global_batch_size} is not divisible by the {dp} data-parallel devices")
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    spans = sorted({(s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
                    for s in index_map.values()})
    for (_, stop), (start, _) in zip(spans, spans[1:]):
        if stop != start:
            raise ValueError(
                f"this process's devices hold non-contiguous batch rows {spans}; build the mesh so that each "
                f"process's devices are adjacent along the data axes (jax.make_mesh does this).")
    return spans[0][0], spans[-1][1]


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-process) batch-sharded array, on every process."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch (this process's rows) -> global arrays sharded over the batch axes."""
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        sharding = batch_sharding(mesh, value.ndim)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
