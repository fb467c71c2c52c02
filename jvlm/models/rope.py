"""Rotary position embeddings (RoPE) from explicit positions, in the split-halves layout of Llama, Gemma and Qwen2
(the first half of each head's dimensions pairs with the second half), with their frequency scalings.

Positions come from the data (packed documents restart at 0; a decoded token has its own), never from an index.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

SCALINGS = ("none", "linear", "llama3")


def inverse_frequencies(head_dim: int, base: float, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """float64 [head_dim / 2]: the rotation speed of each dimension pair.

    scaling: None, {"type": "linear", "factor": f} (positions stretched by f), or Llama 3.1's
    {"type": "llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}:
    long wavelengths divided by `factor`, short ones kept, a smooth blend between."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = (scaling or {}).get("type", "none")
    if kind == "none":
        return inv
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        factor, low, high = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelength = 2 * math.pi / inv
        smooth = np.clip((old / wavelength - low) / (high - low), 0.0, 1.0)
        blended = (1 - smooth) * inv / factor + smooth * inv
        return np.where(wavelength > old / low, inv / factor, np.where(wavelength < old / high, inv, blended))
    raise ValueError(f"unknown RoPE scaling type {kind!r}; use one of {SCALINGS}")


def apply_rope(x: jax.Array, positions: jax.Array, base: float, scaling: Mapping[str, Any] | None = None) -> jax.Array:
    """x [B, T, heads, head_dim] rotated by `positions` [B, T]; computed in float32, returned in x's dtype."""
    inv = jnp.asarray(inverse_frequencies(x.shape[-1], base, scaling), jnp.float32)
    angles = positions.astype(jnp.float32)[..., None] * inv  # [B, T, head_dim / 2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return out.astype(x.dtype)
