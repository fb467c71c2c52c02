"""The train state: one pytree that is sharded, donated, checkpointed and restored as a whole."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array                 # int32 scalar: number of completed steps
    params: dict[str, Any]          # parameter groups, e.g. {"main": ...} or {"generator": ..., "discriminator": ...}
    opt_state: dict[str, Any]       # one optimizer state per group
    model_state: Any                # non-gradient variables a step updates (EMA codebooks, running stats); {} if none
    ema_params: dict[str, Any] | None  # parameter EMA for evaluation/sampling, or None
    rng: jax.Array                  # uint32[2] root key; step keys are fold_in(rng, step)
    nonfinite_count: jax.Array      # int32: steps skipped because the loss or gradients were not finite

    @classmethod
    def create(cls, params, opt_state, model_state, rng, use_ema: bool):
        """Every leaf gets a strong dtype: a weak-typed leaf (e.g. `jnp.full(n, 1.0 / n)`) comes back from the
        first step strongly typed, and the step would be traced and compiled a second time for it."""
        return jax.tree.map(_strong, cls(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
            model_state=model_state if model_state is not None else {},
            ema_params=jax.tree.map(jnp.copy, params) if use_ema else None,
            rng=rng, nonfinite_count=jnp.zeros((), jnp.int32)))


def _strong(x):
    return x.astype(x.dtype) if getattr(x, "weak_type", False) else x
