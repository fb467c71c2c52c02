"""Device mesh from config, logical-axis rules, and process-local -> global arrays.

Mode: every mesh axis is `AxisType.Auto` (GSPMD propagation). Model code names logical axes
("batch", "embed", "mlp", ...) on parameters and activations, `LOGICAL_RULES` maps them to mesh
axes, and `jax.jit` with `NamedSharding` in/out shardings lets XLA partition the rest. Code that
needs explicit collectives (the ring sigmoid loss) enters `jax.shard_map` over the same mesh.

Strategies come from the mesh shape, with one rule table:
- data parallel: mesh data=N. Parameters replicated, batch split.
- FSDP (ZeRO-3): mesh fsdp=N. Parameters and optimizer state split on their "embed" dimension;
  the batch is split over data x fsdp, so XLA all-gathers weights per layer, reduce-scatters grads.
- tensor parallel (Megatron): mesh model=N. Attention heads (and grouped-query K/V heads), MLP hidden
  units and the vocabulary split over `model`; activations of those dimensions too, and the KV cache.
- sequence parallel: `config.sharding_rules = (("length", "model"),)` also splits the
  [batch, length, embed] activations between the tensor-parallel blocks over `model`.
`config.sharding_rules` entries (logical axis, mesh axes) replace the default rule of that axis.
Rules apply in order and a mesh axis is used once per array, so an activation [batch, length,
embed] under FSDP is split on batch (data, fsdp) and not again on embed.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jvlm.errors import ConfigError

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes

# Logical axis -> mesh axes. Axes of size 1 make a rule a no-op, so one table serves
# pure data parallelism, FSDP (embed over fsdp) and tensor parallelism (mlp/heads over model).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),     # grouped-query K/V heads (a mesh that does not divide them: map to None)
    ("head_dim", None),
    ("kv", None),
    ("vocab", "model"),
    ("length", None),
    ("cache_length", None),    # the KV cache's sequence axis (decoding)
    ("layers", None),          # the stacked layers of an nn.scan
    ("patch", None),
    ("channels", None),
)


def rules_from_config(config) -> tuple[tuple[str, Any], ...]:
    """LOGICAL_RULES with `config.sharding_rules` overrides applied (same order; new axes last)."""
    rules = dict(LOGICAL_RULES)
    for entry in config.get("sharding_rules", ()) or ():
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ConfigError(f"config.sharding_rules entries are (logical_axis, mesh_axes) pairs, got {entry!r}; "
                              f"e.g. (('length', 'model'),) for sequence parallelism.")
        name, axes = entry
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        bad = [a for a in names if a not in MESH_AXES]
        if bad:
            raise ConfigError(f"config.sharding_rules: {name!r} -> {axes!r} names unknown mesh axes {bad}; "
                              f"mesh axes are {MESH_AXES} (or None for replicated).")
        rules[name] = None if not names else names[0] if len(names) == 1 else names
    return tuple(rules.items())


_ACTIVATION_RULES: contextvars.ContextVar = contextvars.ContextVar("jvlm_activation_rules", default=None)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules=LOGICAL_RULES):
    """While a model is traced under this context, its `constrain` calls pin activation shardings.

    Our own context rather than flax's global rules: those would also re-constrain every
    parameter as it is read (flax's DenseGeneral reads its kernel flat, which then fails);
    parameters already get their shardings from the jitted step's in_shardings.
    """
    token = _ACTIVATION_RULES.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, logical_axes: tuple) -> jax.Array:
    """Sharding constraint by logical axis names; a no-op outside `activation_rules` (eval, inference)."""
    active = _ACTIVATION_RULES.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, nn.logical_to_mesh_axes(logical_axes, rules)))


def check_divisible(abstract_params: Any, shardings: Any, mesh: Mesh) -> None:
    """Names the parameter whose dimension a mesh axis does not divide, before anything compiles."""
    for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(abstract_params),
                                      jax.tree.leaves(shardings)):
        for dim, axes in zip(leaf.shape, sharding.spec):
            names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            n = math.prod(mesh.shape[a] for a in names)
            if dim % n:
                raise ConfigError(
                    f"parameter {'/'.join(_path_key(path))} {tuple(leaf.shape)}: dimension {dim} is split over "
                    f"mesh axes {names} of size {n}, which does not divide it. Change the mesh "
                    f"(config.mesh), the model width/heads/mlp_dim, or map that logical axis to None in "
                    f"config.sharding_rules.")


def _split_dcn(mesh_config: Mapping[str, Any]) -> tuple[dict, dict[str, int]]:
    """config.mesh -> (per-slice sizes, sizes across slices). `mesh.dcn` is the optional DCN part."""
    ici = {k: v for k, v in mesh_config.items() if k != "dcn"}
    dcn_config = mesh_config.get("dcn", None) or {}
    unknown = set(dcn_config) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"config.mesh.dcn has unknown axes {sorted(unknown)}; valid axes are {MESH_AXES}.")
    dcn = {axis: int(dcn_config.get(axis, 1)) for axis in MESH_AXES}
    if any(n < 1 for n in dcn.values()):
        raise ConfigError(f"config.mesh.dcn sizes must be >= 1 (no -1 across slices), got {dcn}.")
    return ici, dcn


def resolve_mesh_shape(mesh_config: Mapping[str, Any], num_devices: int) -> dict[str, int]:
    """{'data': -1, 'fsdp': 2, 'model': 1} with 8 devices -> {'data': 4, 'fsdp': 2, 'model': 1}.

    With `dcn` sizes (a hybrid mesh across slices), the other sizes are per slice, -1 resolves
    within a slice, and the result is the total: per-slice size x DCN size for each axis.
    """
    ici_config, dcn = _split_dcn(mesh_config)
    slices = math.prod(dcn.values())
    if num_devices % slices:
        raise ConfigError(f"config.mesh.dcn {dcn} spans {slices} slices, which does not divide the "
                          f"{num_devices} devices.")
    ici = _resolve_one(ici_config, num_devices // slices, "config.mesh")
    return {axis: ici[axis] * dcn[axis] for axis in MESH_AXES}


def _resolve_one(mesh_config: Mapping[str, int], num_devices: int, name: str) -> dict[str, int]:
    unknown = set(mesh_config) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"{name} has unknown axes {sorted(unknown)}; valid axes are {MESH_AXES} (and dcn).")
    shape = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    free = [a for a, n in shape.items() if n == -1]
    if len(free) > 1:
        raise ConfigError(f"{name}: only one axis may be -1 ('the rest'), got {free}.")
    if any(n == 0 or n < -1 for n in shape.values()):
        raise ConfigError(f"{name} sizes must be positive or -1, got {shape}.")
    fixed = math.prod(n for n in shape.values() if n != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"{name} {shape}: the fixed axes use {fixed} devices, which does not divide the "
                f"{num_devices} available devices. Change the mesh sizes.")
        shape[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"{name} {shape} uses {fixed} devices but {num_devices} are available; "
            f"set one axis to -1 to use the rest, e.g. --config.mesh.data=-1.")
    return shape


def data_parallel_size(shape: Mapping[str, int]) -> int:
    return math.prod(shape[a] for a in BATCH_AXES)


def make_mesh(mesh_config: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The device mesh. With `mesh.dcn` (multi-slice TPU, or several hosts over a slower network),
    devices are grouped by slice (`device.slice_index`; by process where all say slice 0) and each
    axis is laid out slice-major: its DCN part crosses slices, its per-slice part stays on ICI."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(mesh_config, len(devices))
    _, dcn = _split_dcn(mesh_config)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if math.prod(dcn.values()) == 1:
        return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES, axis_types=axis_types, devices=devices)
    from jax.experimental import mesh_utils

    ici = [shape[a] // dcn[a] for a in MESH_AXES]
    # Multi-slice TPUs number their slices; elsewhere (CPU, GPU hosts) every device says slice 0.
    by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1
    try:
        grid = mesh_utils.create_hybrid_device_mesh(ici, [dcn[a] for a in MESH_AXES], devices,
                                                    process_is_granule=not by_slice)
    except ValueError as e:
        unit = "slices" if by_slice else "processes"
        raise ConfigError(f"config.mesh.dcn {dcn}: the DCN sizes must multiply to the number of {unit} "
                          f"holding the devices ({e}).") from None
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def logical_shardings(boxed_abstract_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """Shardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes."""
    specs = nn.get_partition_spec(boxed_abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def shard_like_params(tree: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer-state tree built from `params` (e.g. Adam's mu and nu): a leaf
    whose key path ends with a parameter's path and has that parameter's shape gets its sharding
    (so FSDP splits optimizer state like the parameters); everything else is replicated."""
    by_path = {}
    for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_shardings)):
        by_path[_path_key(path)] = (sharding, tuple(leaf.shape))

    def pick(path, leaf):
        key = _path_key(path)
        for start in range(len(key)):
            sharding, shape = by_path.get(key[start:], (None, None))
            if sharding is not None and shape == tuple(getattr(leaf, "shape", ())):
                return sharding
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)


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


def global_batch_from_full(full_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A batch every process holds whole (evaluation, prompts) -> global arrays: each process
    contributes only the rows its devices hold. Keys starting with '_' stay on the host."""
    n = len(next(iter(full_batch.values())))
    start, stop = process_rows(mesh, n)
    return global_batch({k: v[start:stop] for k, v in full_batch.items() if not k.startswith("_")}, mesh)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch (this process's rows) -> global arrays sharded over the batch axes."""
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        sharding = batch_sharding(mesh, value.ndim)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
