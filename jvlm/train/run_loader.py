"""A finished run, read for inference or to initialize another run: its config, tokenizer and weights.

    run = load_run("runs/siglip_shapes", ("contrastive",), "give the workdir of a contrastive run")
    run.params["main"], run.model_state, run.step, run.tokenizer

Only `params` (or `ema_params`) and `model_state` are read from the newest checkpoint, with Orbax's
partial restore: the optimizer state (twice the parameters for Adam) stays on disk. Without
`shardings` the arrays come back as host numpy arrays, whatever mesh saved them; with them they are
restored straight into those shardings (each process reads only its own shards).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jvlm.config import load_run_config
from jvlm.data.tokenizer import Tokenizer

STATE_ITEM = "state"  # the item jvlm.train.checkpoint.Checkpointer saves the TrainState as

# None (host numpy arrays), one Sharding or Mesh for every array (replicated on a Mesh), or a pytree of
# Shardings matching the parameters by group.
Shardings = Any


@dataclasses.dataclass(frozen=True)
class Weights:
    step: int
    params: dict[str, Any]   # by group, e.g. {"main": ...}; the parameter EMA when `ema` is True
    model_state: Any         # e.g. an EMA codebook; {} if the run has none
    ema: bool


@dataclasses.dataclass(frozen=True)
class Run:
    workdir: str
    config: ml_collections.ConfigDict
    tokenizer_path: str | None  # data.tokenizer, else the one the run trained (WORKDIR/tokenizer.model) if any
    step: int
    params: dict[str, Any]
    model_state: Any
    ema: bool

    @property
    def tokenizer(self) -> Tokenizer:
        if self.tokenizer_path is None:
            raise FileNotFoundError(f"the {self.config.task} run {self.workdir} has no tokenizer (no "
                                    f"data.tokenizer and no tokenizer.model in the workdir).")
        return Tokenizer(self.tokenizer_path)


def load_run(workdir: str, tasks: Sequence[str], hint: str, *, ema: bool = True, shardings: Shardings = None,
             check: Callable[[ml_collections.ConfigDict], None] | None = None) -> Run:
    """The newest checkpoint of a run of one of `tasks` (`hint` says which run to give instead), with
    its EMA parameters when `ema` and the run kept them. `check(config)` runs before any array is read,
    to refuse an unusable run cheaply."""
    config = load_run_config(workdir, tasks, hint)
    if check is not None:
        check(config)
    trained = os.path.join(workdir, "tokenizer.model")
    tok = config.data.get("tokenizer") or (trained if os.path.isfile(trained) else None)
    w = load_weights(workdir, ema=ema, shardings=shardings)  # (not dataclasses.asdict: it deep-copies arrays)
    return Run(workdir, config, tok, w.step, w.params, w.model_state, w.ema)


def load_weights(path: str, *, ema: bool = False, shardings: Shardings = None) -> Weights:
    """The newest checkpoint's weights under `path` (a run's workdir or its checkpoints/ folder)."""
    step, directory = latest_checkpoint(path)
    stored = stored_state(directory)
    field = "ema_params" if ema and stored.get("ema_params") is not None else "params"
    state_meta = stored.get("model_state") or {}
    param_shardings, state_sharding = _placements(shardings, stored[field])
    target = {field: _abstract(stored[field], param_shardings)}
    if jax.tree.leaves(state_meta):
        target["model_state"] = _abstract(state_meta, jax.tree.map(lambda _: state_sharding, state_meta))
    restored = restore_subtrees(directory, target)
    return Weights(step, restored[field], restored.get("model_state", state_meta), field == "ema_params")


def find_checkpoint_dir(path: str) -> str:
    """A run's workdir or its checkpoints/ folder -> the checkpoints folder."""
    for candidate in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(candidate) and any(d.isdigit() for d in os.listdir(candidate)):
            return os.path.abspath(candidate)
    raise FileNotFoundError(f"no checkpoints under {path!r}: give a run's workdir or its checkpoints/ folder.")


def latest_checkpoint(path: str) -> tuple[int, epath.Path]:
    """(step, TrainState directory) of the newest finished checkpoint under `path`."""
    directory = find_checkpoint_dir(path)
    latest = ocp.path.step.latest_step_metadata(directory, ocp.path.step.standard_name_format())
    if latest is None:
        raise FileNotFoundError(f"no finished checkpoint in {directory} (only interrupted saves).")
    return latest.step, epath.Path(latest.path) / STATE_ITEM


def stored_state(directory: epath.Path) -> dict[str, Any]:
    """The saved TrainState's layout by field ("params", "opt_state", ...): array metadata (shape,
    dtype), None for an absent EMA; no array is read."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return dict(handler.metadata(directory).tree)
    finally:
        handler.close()


def restore_subtrees(directory: epath.Path, target: dict[str, Any]) -> dict[str, Any]:
    """Reads only the arrays `target` names: a subset of the TrainState's fields and of their leaves
    ({"params": {"main": {...}}}) with jax.ShapeDtypeStruct leaves. A leaf with a sharding is restored
    as a jax.Array in it, one without as a numpy array; both in the leaf's dtype."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return handler.restore(directory, args=ocp.args.PyTreeRestore(
            item=target, restore_args=jax.tree.map(_restore_args, target), partial_restore=True))
    finally:
        handler.close()


def _restore_args(leaf: jax.ShapeDtypeStruct):
    if leaf.sharding is None:
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
    return ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape, dtype=leaf.dtype)


def _abstract(meta: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), meta, shardings)


def _placements(shardings: Shardings, params_meta: Any) -> tuple[Any, jax.sharding.Sharding | None]:
    """(a sharding per parameter, the model state's sharding) from the caller's `shardings`."""
    if shardings is None:
        return jax.tree.map(lambda _: None, params_meta), None
    if isinstance(shardings, jax.sharding.Mesh):
        shardings = jax.sharding.NamedSharding(shardings, jax.sharding.PartitionSpec())
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda _: shardings, params_meta), shardings
    want, got = jax.tree.structure(params_meta), jax.tree.structure(shardings)
    if want != got:
        raise ValueError(f"shardings must be one Sharding or Mesh, or a pytree of Shardings matching the run's "
                         f"parameters (groups {sorted(params_meta)}, {want.num_leaves} arrays); got {got.num_leaves} "
                         f"leaves in another structure.")
    return shardings, _replicated_on(jax.tree.leaves(shardings)[0])


def _replicated_on(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """The model state (small: codebooks, statistics) goes whole onto every device the parameters use."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    devices = np.array(sorted(sharding.device_set, key=lambda d: d.id))
    return jax.sharding.NamedSharding(jax.sharding.Mesh(devices, ("devices",)), jax.sharding.PartitionSpec())
