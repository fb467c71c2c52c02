"""Contrastive image-text losses on already L2-normalized embeddings zimg, ztxt [N, D].

`logit_scale` is the learnable log-temperature t': logits are multiplied by exp(t').
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def softmax_contrastive_loss(zimg, ztxt, logit_scale, max_logit_scale: float = jnp.log(100.0)):
    """CLIP: mean of the image->text and text->image cross-entropies; t' clamped at log 100."""
    scale = jnp.exp(jnp.minimum(logit_scale, max_logit_scale))
    logits = scale * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T
    labels = jnp.arange(logits.shape[0])
    i2t = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1).mean()
    t2i = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0).mean()
    return 0.5 * (i2t + t2i)


def sigmoid_loss(zimg, ztxt, logit_scale, logit_bias):
    """SigLIP: -sum_ij log sigmoid(z_ij (exp(t') x_i.y_j + b)) / N, z_ii = 1, z_ij = -1."""
    n = zimg.shape[0]
    logits = jnp.exp(logit_scale) * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T + logit_bias
    z = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / n
