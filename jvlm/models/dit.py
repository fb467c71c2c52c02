"""DiT (Peebles & Xie 2023): a Transformer denoiser over patches, the UNet's alternative.

Patchify (p x p patches, linear) + fixed 2-D sinusoidal positions; blocks with adaLN-Zero conditioning on
the timestep embedding (plus the class embedding for class-conditional models): each block's LayerNorms
take shift/scale from the conditioning, and its residual branches a gate initialized at 0, so every block
starts as the identity; text-conditional models add cross-attention to the caption's token features
after self-attention (as PixArt-α does). A final adaLN layer and linear map back to patches, zero-initialized.
Same call signature as jvlm.models.unet.UNet.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jvlm.models.layers import Attention, Mlp, bias_init, dense, dense_init
from jvlm.models.unet import timestep_embedding

Dtype = Any


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embeddings [h*w, dim] (MAE / DiT)."""
    def one(pos, d):
        omega = 1.0 / 10_000 ** (np.arange(d // 2) / (d / 2))
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return np.concatenate([one(gy.ravel(), dim // 2), one(gx.ravel(), dim // 2)], axis=1).astype(np.float32)


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    num_heads: int
    mlp_ratio: float = 4.0
    cross_attention: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c, context=None, context_mask=None):
        width = x.shape[-1]
        mod = nn.Dense(6 * width, dtype=self.dtype, name="adaln",
                       kernel_init=dense_init(("embed", "mlp"), nn.initializers.zeros_init()),
                       bias_init=bias_init(("mlp",)))(nn.swish(c))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        norm = lambda name: nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name=name)  # noqa: E731
        x = x + gate1[:, None] * Attention(self.num_heads, self.dtype, name="attn")(
            _modulate(norm("ln1")(x), shift1, scale1))
        if self.cross_attention:
            mask = None if context_mask is None else context_mask[:, None, None, :]
            x = x + Attention(self.num_heads, self.dtype, name="cross_attn")(
                nn.LayerNorm(dtype=self.dtype, name="ln_cross")(x), mask, context=context.astype(self.dtype))
        return x + gate2[:, None] * Mlp(int(width * self.mlp_ratio), self.dtype, name="mlp")(
            _modulate(norm("ln2")(x), shift2, scale2))


class DiT(nn.Module):
    out_channels: int = 3
    patch_size: int = 2
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    context_dim: int = 0
    num_classes: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, context=None, context_mask=None, labels=None, train: bool = False):
        b, h, w, ch = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"DiT with patch_size {p} needs height and width divisible by {p}, got {h}x{w}")
        if (context is None) != (self.context_dim == 0):
            raise ValueError("pass `context` exactly when the DiT has context_dim > 0 (a text-conditional model)")
        if (labels is None) != (self.num_classes == 0):
            raise ValueError("pass `labels` exactly when the DiT has num_classes > 0 (a class-conditional model)")
        tokens = x.reshape(b, h // p, p, w // p, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * ch)
        y = nn.Dense(self.width, dtype=self.dtype, name="patch_embed", kernel_init=dense_init(("mlp", "embed")),
                     bias_init=bias_init(("embed",)))(tokens.astype(self.dtype))
        y = y + jnp.asarray(sincos_2d(h // p, w // p, self.width), self.dtype)[None]
        c = dense(self.width, self.dtype, "temb2")(nn.swish(
            dense(self.width, self.dtype, "temb1")(timestep_embedding(t, self.width).astype(self.dtype))))
        if self.num_classes:
            table = self.param("class_embedding", nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")), (self.num_classes + 1, self.width))
            c = c + jnp.take(table, labels, axis=0).astype(self.dtype)
        for i in range(self.depth):
            y = DiTBlock(self.num_heads, cross_attention=self.context_dim > 0, dtype=self.dtype,
                         name=f"block{i}")(y, c, context, context_mask)
        shift, scale = jnp.split(nn.Dense(2 * self.width, dtype=self.dtype, name="final_adaln",
                                          kernel_init=dense_init(("embed", "mlp"), nn.initializers.zeros_init()),
                                          bias_init=bias_init(("mlp",)))(nn.swish(c)), 2, axis=-1)
        y = _modulate(nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="ln_final")(y), shift, scale)
        y = nn.Dense(p * p * self.out_channels, dtype=self.dtype, name="final",
                     kernel_init=dense_init(("embed", "mlp"), nn.initializers.zeros_init()),
                     bias_init=bias_init(("mlp",)))(y)
        out = y.reshape(b, h // p, w // p, p, p, self.out_channels).transpose(0, 1, 3, 2, 4, 5)
        return out.reshape(b, h, w, self.out_channels).astype(jnp.float32)
