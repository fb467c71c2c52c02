"""Perceptual distance between two images through a frozen feature network (LPIPS without its learned
per-channel weights, the "baseline" variant of Zhang et al. 2018): features are unit-normalized over
channels at each position, and squared differences are averaged over positions and summed over layers."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def _unit(f: jax.Array, eps: float = 1e-10) -> jax.Array:
    return f / jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True) + eps)


def perceptual_distance(features_a: Sequence[jax.Array], features_b: Sequence[jax.Array]) -> jax.Array:
    """Per-example distance [B] from per-layer feature maps [B, ..., C] (spatial maps or token sequences)."""
    if len(features_a) != len(features_b) or not features_a:
        raise ValueError(f"need the same non-zero number of feature layers, got {len(features_a)} and {len(features_b)}")
    total = 0.0
    for a, b in zip(features_a, features_b):
        d = jnp.sum(jnp.square(_unit(a.astype(jnp.float32)) - _unit(b.astype(jnp.float32))), axis=-1)
        total = total + jnp.mean(d.reshape(d.shape[0], -1), axis=1)
    return total
