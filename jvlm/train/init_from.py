"""Initialize part of a fresh run from another run's checkpoint (LiT's pretrained image tower, fine-tuning).

Load priority (MaxText's): the run's own workdir checkpoint -> `init_from` -> fresh init. `init_from`
is used only when the workdir has no checkpoint yet, so a resumed LiT run continues from itself.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from jvlm.config import ConfigError
from jvlm.train.checkpoint import load_params
from jvlm.train.optim import param_path


def apply_init_from(params: dict[str, Any], checkpoint: str, pattern: str) -> tuple[dict[str, Any], int]:
    """Copies the parameters whose 'group/path' fully matches `pattern` from `checkpoint`.

    Returns (new params, number of leaves copied). Shapes must agree; nothing matching is an error.
    """
    _, loaded = load_params(checkpoint)
    regex = re.compile(pattern)
    flat_loaded = {f"{g}/{param_path(p)}": v for g, tree in loaded.items()
                   for p, v in jax.tree_util.tree_leaves_with_path(tree)}
    copied = 0

    def pick(group):
        def leaf(path, value):
            nonlocal copied
            key = f"{group}/{param_path(path)}"
            if not regex.fullmatch(key):
                return value
            if key not in flat_loaded:
                raise ConfigError(f"config.init_from: {key} matches {pattern!r} but is not in {checkpoint}.")
            new = flat_loaded[key]
            if tuple(new.shape) != tuple(value.shape):
                raise ConfigError(f"config.init_from: {key} has shape {tuple(new.shape)} in {checkpoint} but "
                                  f"{tuple(value.shape)} in this model; the architectures differ.")
            copied += 1
            return jax.device_put(np.asarray(new, value.dtype), value.sharding)
        return leaf

    out = {g: jax.tree_util.tree_map_with_path(pick(g), tree) for g, tree in params.items()}
    if copied == 0:
        raise ConfigError(f"config.init_from.params={pattern!r} matches no parameter; paths look like "
                          f"{', '.join(list(flat_loaded)[:3])}.")
    return out, copied
