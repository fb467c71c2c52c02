"""RMSNorm (Llama, Qwen2; Gemma's `(1 + w)` form) and LayerNorm, computed in float32, with logical axes."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

NORMS = ("rms", "layer")


class Norm(nn.Module):
    kind: str = "rms"          # "rms" | "layer"
    eps: float = 1e-6
    plus_one: bool = False     # Gemma: scale by (1 + w), w starting at 0
    axis_name: str = "embed"   # the logical axis of the normalized dimension
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.kind not in NORMS:
            raise ValueError(f"unknown norm {self.kind!r}; use one of {NORMS}")
        width = x.shape[-1]
        init = nn.initializers.zeros_init() if self.plus_one else nn.initializers.ones_init()
        scale = self.param("scale", nn.with_logical_partitioning(init, (self.axis_name,)), (width,))
        y = x.astype(jnp.float32)
        if self.kind == "layer":
            y = y - jnp.mean(y, axis=-1, keepdims=True)
        y = y * jnp.reciprocal(jnp.sqrt(jnp.mean(y * y, axis=-1, keepdims=True) + self.eps))
        y = y * ((1.0 + scale) if self.plus_one else scale)
        if self.kind == "layer":
            y = y + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)),
                               (width,))
        return y.astype(self.dtype)
