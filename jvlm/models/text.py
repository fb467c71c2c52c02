"""Transformer text encoder: token + position embeddings, causal or bidirectional, pooled."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jvlm.models.layers import Dtype, Transformer, constrain


class TextTransformer(nn.Module):
    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    max_len: int
    causal: bool = False
    pool: str = "eos"          # "eos" (the EOS/last non-pad token) | "last" | "first" | "mean" | "none" (all tokens)
    eos_id: int = 1
    dtype: Dtype = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, tokens):
        """tokens: int32 [B, L], 0 = padding -> pooled features [B, width] ([B, L, width] for pool="none")."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"text length {tokens.shape[1]} exceeds the model's max_len {self.max_len}")
        embed = self.param("token_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vocab", "embed")), (self.vocab_size, self.width))
        pos = self.param("pos_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.01), ("length", "embed")), (self.max_len, self.width))
        length = tokens.shape[1]
        x = jnp.take(embed, tokens, axis=0).astype(self.dtype) + pos[None, :length].astype(self.dtype)
        x = constrain(x, ("batch", "length", "embed"))
        valid = tokens != 0
        mask = valid[:, None, None, :]
        if self.causal:
            mask = mask & np.tril(np.ones((length, length), bool))[None, None]
        x = Transformer(self.depth, self.num_heads, self.mlp_dim, self.dtype, self.remat, name="encoder")(x, mask)
        if self.pool == "none":  # per-token features, e.g. the context of a diffusion UNet's cross-attention
            return x
        if self.pool == "mean":
            w = valid[..., None].astype(x.dtype)
            return (x * w).sum(1) / jnp.maximum(w.sum(1), 1)
        if self.pool == "first":
            return x[:, 0]
        if self.pool == "last":
            return x[:, -1]
        if self.pool == "eos":
            # Index of the last non-padding token (the EOS appended by the tokenizer).
            idx = jnp.maximum(valid.sum(axis=1) - 1, 0)
            return jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
        raise ValueError(f"unknown text pool {self.pool!r}; use 'eos', 'last', 'first', 'mean' or 'none'")
