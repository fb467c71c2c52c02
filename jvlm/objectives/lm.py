"""Token-weighted next-token cross-entropy that never materializes [batch, length, vocab] logits.

The hidden states are projected to the vocabulary one chunk of positions at a time inside a `lax.scan` whose body
is rematerialized (`jax.checkpoint`): the forward pass keeps only per-token scalars, the backward pass recomputes
one chunk's logits at a time. At a 256k vocabulary the full float32 logits of a batch of 8 x 2048 tokens are 16 GiB;
a chunk of 256 positions is 2 GiB, and 512 positions of a 32k vocabulary are 64 MiB.

Returns sums and the weight (token count), not means: the train step divides once over every micro-batch, so a
micro-batch with more tokens counts for more (jvlm.train.step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class CrossEntropy(NamedTuple):
    loss_sum: jax.Array      # sum over weighted tokens of -log p(target)
    weight: jax.Array        # sum of the weights (the number of supervised tokens)
    correct: jax.Array       # weighted count of tokens whose argmax is the target
    z_loss_sum: jax.Array    # sum of weighted logsumexp^2 (PaLM's z-loss, before its coefficient)


def _token_terms(logits, targets, weights):
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = lse - target_logit
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return CrossEntropy(jnp.sum(nll * weights), jnp.sum(weights), jnp.sum(correct * weights),
                        jnp.sum(lse * lse * weights))


def project(hidden, head, softcap: float = 0.0):
    """Float32 logits of hidden [..., D] through head [D, V], soft-capped when softcap > 0 (Gemma 2)."""
    logits = jnp.einsum("...d,dv->...v", hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return softcap * jnp.tanh(logits / softcap) if softcap else logits


def dense_cross_entropy(hidden, head, targets, weights, softcap: float = 0.0) -> CrossEntropy:
    """The reference: every logit at once (tests, tiny vocabularies)."""
    return _token_terms(project(hidden, head, softcap), targets, weights.astype(jnp.float32))


def chunked_cross_entropy(hidden, head, targets, weights, *, chunk: int = 256, softcap: float = 0.0) -> CrossEntropy:
    """hidden [B, L, D], head [D, V], targets int [B, L], weights [B, L] (0 for unsupervised positions).
    Equal to `dense_cross_entropy` in value and gradient; holds one [B, chunk, V] block of logits at a time."""
    b, length, d = hidden.shape
    chunk = max(1, min(chunk, length))
    pad = (-length) % chunk
    weights = weights.astype(jnp.float32)
    if pad:  # padded positions have weight 0
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, weights = jnp.pad(targets, ((0, 0), (0, pad))), jnp.pad(weights, ((0, 0), (0, pad)))
    n = (length + pad) // chunk
    to_chunks = lambda x: jnp.swapaxes(x.reshape((b, n, chunk) + x.shape[2:]), 0, 1)  # noqa: E731

    @jax.checkpoint
    def one(h, t, w):
        return _token_terms(project(h, head, softcap), t, w)

    def body(total, xs):
        return jax.tree.map(jnp.add, total, one(*xs)), None

    zero = CrossEntropy(*(jnp.zeros((), jnp.float32) for _ in range(4)))
    total, _ = jax.lax.scan(body, zero, (to_chunks(hidden), to_chunks(targets), to_chunks(weights)))
    return total
