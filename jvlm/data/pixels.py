"""Conversions between stored uint8 pixels and the [-1, 1] floats models see."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def images_to_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]; done on device so the host ships 4x fewer bytes."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def float_to_uint8(x) -> np.ndarray:
    """float [-1, 1] (clipped) -> uint8 [0, 255] on the host, rounding to the nearest level."""
    return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)
