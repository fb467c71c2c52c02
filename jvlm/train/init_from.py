"""Initialize part of a fresh run from another run's checkpoint (LiT's pretrained image tower, fine-tuning).

Load priority (MaxText's): the run's own workdir checkpoint -> `init_from` -> fresh init. `init_from`
is used only when the workdir has no checkpoint yet, so a resumed LiT run continues from itself.
Only the matching parameters are read, straight into this run's shardings and dtypes; names and
shapes are checked against the checkpoint's metadata before any array is read.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax

from jvlm.config import ConfigError
from jvlm.train.optim import param_path
from jvlm.train.run_loader import latest_checkpoint, restore_subtrees, stored_state


def apply_init_from(params: dict[str, Any], checkpoint: str, pattern: str) -> tuple[dict[str, Any], int]:
    """Copies the parameters whose 'group/path' fully matches `pattern` from `checkpoint`.

    Returns (new params, number of leaves copied). Shapes must agree; nothing matching is an error.
    """
    _, directory = latest_checkpoint(checkpoint)
    stored = {f"{g}/{param_path(p)}": m for g, tree in stored_state(directory)["params"].items()
              for p, m in jax.tree_util.tree_leaves_with_path(tree)}
    regex = re.compile(pattern)

    def wanted(path: tuple[str, ...], value) -> jax.ShapeDtypeStruct | None:
        key = "/".join(path)
        if not regex.fullmatch(key):
            return None
        if key not in stored:
            raise ConfigError(f"config.init_from: {key} matches {pattern!r} but is not in {checkpoint}.")
        if tuple(stored[key].shape) != tuple(value.shape):
            raise ConfigError(f"config.init_from: {key} has shape {tuple(stored[key].shape)} in {checkpoint} but "
                              f"{tuple(value.shape)} in this model; the architectures differ.")
        return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding)

    target = _select_leaves(params, wanted)
    if not target:
        raise ConfigError(f"config.init_from.params={pattern!r} matches no parameter; paths look like "
                          f"{', '.join(list(stored)[:3])}.")
    loaded = restore_subtrees(directory, {"params": target})["params"]
    copied = len(jax.tree.leaves(loaded))
    return _merge(params, loaded), copied


def _select_leaves(tree: Mapping[str, Any], keep: Callable[[tuple[str, ...], Any], Any],
                   prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """The nested dict of the leaves for which `keep(path, leaf)` is not None, with its values: a partial
    restore target naming only those arrays."""
    out = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            if sub := _select_leaves(value, keep, path):
                out[key] = sub
        elif (new := keep(path, value)) is not None:
            out[key] = new
    return out


def _merge(tree: Mapping[str, Any], replacements: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_merge(v, replacements[k]) if isinstance(v, Mapping) else replacements[k])
            if k in replacements else v for k, v in tree.items()}
