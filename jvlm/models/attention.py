"""The one attention function: grouped-query attention under a boolean mask, with `implementation` from the config.

- "xla": `jax.nn.dot_product_attention(implementation="xla")` (the default; any backend).
- "cudnn": the same call with cuDNN's fused kernel (GPU, bf16/fp16 inputs).
- "einsum": the computation written out: queries grouped per KV head, float32 softmax. It is what
  `jax.nn.dot_product_attention` lacks in this JAX: attention-logit soft-capping (Gemma 2), which "xla" therefore
  also runs through this path.

Shapes: q [B, T, N, H], k and v [B, S, K, H] with N a multiple of K (K = N: multi-head; 1 < K < N: grouped-query;
K = 1: multi-query); mask bool [B, 1, T, S] from `jvlm.models.masks`. Returns [B, T, N, H].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn", "einsum")


def check_implementation(implementation: str, softcap: float | None) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is unknown; use one of {IMPLEMENTATIONS}")
    if implementation == "cudnn" and softcap:
        raise ValueError("cuDNN's fused attention has no logit soft-capping: set model.attention='xla' (or 'einsum') "
                         "for a model with attn_softcap")


def attention(q, k, v, mask, *, scale: float, implementation: str = "xla", softcap: float | None = None):
    check_implementation(implementation, softcap)
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value heads")
    if implementation == "einsum" or softcap:
        return _einsum_attention(q, k, v, mask, scale, softcap)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)


def _einsum_attention(q, k, v, mask, scale, softcap):
    b, t, n, h = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, n // kv, h)  # the query heads of each KV head side by side
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if softcap:
        logits = softcap * jnp.tanh(logits / softcap)
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", weights, v)
    return out.reshape(b, t, n, h)
