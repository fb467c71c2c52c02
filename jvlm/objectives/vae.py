"""Gaussian-posterior VAE objectives (Kingma & Welling 2014) as pure functions, in nats per example.

- `reparameterize`: z = mean + exp(logvar / 2) * eps, differentiable in mean and logvar.
- `gaussian_kl`: KL(N(mean, exp(logvar)) || N(0, I)) in closed form, summed over the latent dims.
- `discretized_gaussian_nll`: -log P(x) of 8-bit images scaled to [-1, 1] under a Gaussian integrated
  over each pixel's bin (width 2/255; the two edge bins reach to -inf / +inf), as DDPM's decoder
  (Ho et al. 2020, eq. 13). Unlike a continuous density this is a probability, so NLL + KL is a real
  bound on the code length of the discrete images (`bits_per_dim`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

HALF_BIN = 1.0 / 255.0   # half of a pixel bin on the [-1, 1] scale
EDGE = 1.0 - HALF_BIN    # x below -EDGE / above EDGE is the first / last level
NARROW_BIN = 1e-3        # bins narrower than this (in units of the scale): density x width instead


def reparameterize(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    eps = jax.random.normal(rng, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def _sum_per_example(x: jax.Array) -> jax.Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """[B, ...] posterior parameters -> [B] KL to the standard normal prior, nats."""
    return _sum_per_example(0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar))


def _log_bin_mass(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """log(Phi(hi) - Phi(lo)) for lo < hi, without cancellation: the bin is mirrored into the lower half
    (where Phi is small and log_ndtr accurate) and the difference taken as log Phi(hi) + log(1 - ratio)."""
    flip = lo + hi > 0
    lo, hi = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    log_hi = log_ndtr(hi)
    d = log_ndtr(lo) - log_hi                 # < 0; only near 0 for narrow bins, which take the fallback
    narrow = hi - lo < NARROW_BIN
    d = jnp.where(narrow, -1.0, d)            # keeps the unused branch finite (and its gradient)
    exact = log_hi + jnp.log(-jnp.expm1(d))
    mid, width = 0.5 * (lo + hi), jnp.maximum(hi - lo, 1e-30)
    approx = -0.5 * jnp.square(mid) - 0.5 * math.log(2 * math.pi) + jnp.log(width)
    return jnp.where(narrow, approx, exact)


def discretized_gaussian_nll(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """x: [B, ...] images in [-1, 1] on the 256-level grid; mean, log_scale broadcastable to x.
    -> [B] negative log-probability of the pixel values, nats, summed over all but the batch axis."""
    inv_scale = jnp.exp(-log_scale)
    lo = (x - mean - HALF_BIN) * inv_scale
    hi = (x - mean + HALF_BIN) * inv_scale
    log_p = jnp.where(x < -EDGE, log_ndtr(hi),             # first level: (-inf, -1 + 1/255]
                      jnp.where(x > EDGE, log_ndtr(-lo),   # last level: [1 - 1/255, inf)
                                _log_bin_mass(lo, hi)))
    return -_sum_per_example(log_p)


def negative_elbo(nll: jax.Array, kl: jax.Array, beta: float | jax.Array = 1.0) -> jax.Array:
    """Reconstruction NLL + beta * KL; beta = 1 is the true bound, other values only a training loss."""
    return nll + beta * kl


def bits_per_dim(nats: jax.Array, num_dims: int) -> jax.Array:
    """Nats per example -> bits per dimension (num_dims = H * W * C)."""
    return nats / (num_dims * math.log(2.0))
