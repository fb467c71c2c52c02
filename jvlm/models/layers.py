"""Transformer building blocks with logical axis names on every parameter and activation.

Parameters are f32 (`param_dtype`); `dtype` is the compute dtype (bf16 for mixed precision).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jvlm import sharding

Dtype = Any

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute everything
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def dense_init(axes, init=nn.initializers.xavier_uniform()):
    return nn.with_logical_partitioning(init, axes)


def bias_init(axes):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    """A Dense from the embed to the mlp axis: the diffusion denoisers' conditioning projections (timestep,
    pooled prompt)."""
    return nn.Dense(features, dtype=dtype, name=name, kernel_init=dense_init(("embed", "mlp")),
                    bias_init=bias_init(("mlp",)))


def layer_norm(dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                        bias_init=bias_init(("embed",)))


def constrain(x, axes):
    """Pins an activation's sharding by logical axes while a train step is traced (jvlm.sharding)."""
    return sharding.constrain(x, axes)


class Mlp(nn.Module):
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=dense_init(("embed", "mlp")),
                     bias_init=bias_init(("mlp",)), name="fc1")(x)
        x = constrain(nn.gelu(x), ("batch", "length", "mlp"))
        return nn.Dense(width, dtype=self.dtype, kernel_init=dense_init(("mlp", "embed")),
                        bias_init=bias_init(("embed",)), name="fc2")(x)


class Attention(nn.Module):
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, context=None):
        """Self-attention over x, or cross-attention from x to `context` when given."""
        width = x.shape[-1]
        context = x if context is None else context
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads

        def proj(name, inputs):
            return nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name=name,
                                   kernel_init=dense_init(("embed", "heads", "kv")),
                                   bias_init=bias_init(("heads", "kv")))(inputs)

        q, k, v = proj("query", x), proj("key", context), proj("value", context)
        q = constrain(q, ("batch", "length", "heads", "kv"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(self.dtype)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out",
                               kernel_init=dense_init(("heads", "kv", "embed")),
                               bias_init=bias_init(("embed",)))(out)


class Block(nn.Module):
    """Pre-norm Transformer block."""
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        x = constrain(x, ("batch", "length", "embed"))
        x = x + Attention(self.num_heads, self.dtype, name="attn")(layer_norm(self.dtype, "ln1")(x), mask)
        x = x + Mlp(self.mlp_dim, self.dtype, name="mlp")(layer_norm(self.dtype, "ln2")(x))
        return constrain(x, ("batch", "length", "embed"))


class Transformer(nn.Module):
    depth: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, x, mask=None):
        block = Block
        if self.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[self.remat])
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_dim, self.dtype, name=f"block{i}")(x, mask)
        return layer_norm(self.dtype, "ln_final")(x)
