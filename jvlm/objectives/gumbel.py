"""The Gumbel-softmax relaxation of a categorical (Jang et al. 2017; Maddison et al. 2017), as used by
DALL-E's discrete VAE (Ramesh et al. 2021), as pure functions.

Shapes: `logits [..., K]` over the last axis (any leading axes: batch, height, width).

- `gumbel_softmax`: softmax((logits + Gumbel noise) / tau). Its argmax is an exact sample of
  softmax(logits) at any tau (the Gumbel-max trick); as tau -> 0 the sample approaches that one-hot.
  `hard=True`: forward the exact one-hot, backward the soft sample's gradient (straight-through).
- `kl_to_uniform`: KL(q || Uniform(K)) = sum q log(q K), the prior term of the dVAE's ELBO.
- `temperature_schedule` (exponential anneal, then held) and `linear_warmup` (for the KL weight).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def gumbel_softmax(rng: jax.Array, logits: jax.Array, temperature, hard: bool = False) -> jax.Array:
    """A relaxed one-hot sample [..., K] of Categorical(softmax(logits))."""
    noise = jax.random.gumbel(rng, logits.shape, jnp.float32)
    soft = jax.nn.softmax((logits.astype(jnp.float32) + noise) / temperature, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
    return one_hot + (soft - sg(soft))  # exactly one_hot forward (soft - soft is 0), soft's gradient


def kl_to_uniform(logits: jax.Array) -> jax.Array:
    """KL(softmax(logits) || Uniform(K)) in nats per position [...]: 0 for uniform, log K for one-hot."""
    log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(log_q) * (log_q + jnp.log(logits.shape[-1])), axis=-1)


def temperature_schedule(step, start: float, end: float, steps: int) -> jax.Array:
    """start * (end / start) ** (step / steps), held at `end` after `steps`; jittable on a traced step.
    Exponential, so each halving of tau takes equally long (1 -> 1/16 is four halvings)."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(steps, 1), 0.0, 1.0)
    return start * (end / start) ** frac


def linear_warmup(step, value: float, steps: int) -> jax.Array:
    """0 -> value linearly over `steps`, then held (DALL-E ramps its KL weight up this way)."""
    if steps <= 0:
        return jnp.asarray(value, jnp.float32)
    return value * jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
