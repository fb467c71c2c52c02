"""Denoising UNet (DDPM / ADM / Stable Diffusion's shape) as a pure Flax module.

    out = UNet(out_channels=3, ch=64, ch_mult=(1, 2, 2), attn_levels=(1, 2), context_dim=128).apply(
        {"params": p}, x_t, t, context=text_tokens_features, context_mask=valid)

Per level: `num_res_blocks` ResBlocks that add a projection of the timestep embedding, each followed at
the levels in `attn_levels` by a transformer block over the H*W positions (self-attention, then
cross-attention to `context` when the model has one, then an MLP: SD's SpatialTransformer), and a
stride-2 downsample except at the last level; a middle ResBlock-attention-ResBlock; the mirrored up path
with skip connections; GroupNorm, swish and a zero-initialized output convolution (so training starts from
a model that predicts 0, the mean of ε). Class-conditional models add a label embedding to the timestep
embedding, with label `num_classes` as the null class for classifier-free guidance.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jvlm.models.autoencoder import downsampling_factor
from jvlm.models.conv_layers import conv, group_norm
from jvlm.models.layers import Attention, Mlp, bias_init, dense, dense_init, layer_norm

Dtype = Any


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding [B, dim] of integer or real timesteps [B] (Transformer positions; DDPM)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


def masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """[B, L, D] -> [B, D]: the mean over positions where mask [B, L] is True (zeros where none is)."""
    if mask is None:
        return x.mean(axis=1)
    m = mask[..., None].astype(x.dtype)
    return (x * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


class TimeResBlock(nn.Module):
    out_ch: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, train: bool = False):
        h = conv(self.out_ch, 3, self.dtype, "conv1")(nn.swish(group_norm(x.shape[-1], "norm1")(x)))
        h = h + dense(self.out_ch, self.dtype, "temb")(nn.swish(temb))[:, None, None, :]
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(group_norm(self.out_ch, "norm2")(h)))
        h = nn.Conv(self.out_ch, (3, 3), padding="SAME", dtype=self.dtype, name="conv2",
                    kernel_init=dense_init((None, None, "channels", "embed"), nn.initializers.zeros_init()),
                    bias_init=bias_init(("embed",)))(h)
        if x.shape[-1] != self.out_ch:
            x = conv(self.out_ch, 1, self.dtype, "skip")(x)
        return x + h


class SpatialTransformer(nn.Module):
    """Self-attention, optional cross-attention to a context, and an MLP over a feature map's positions."""
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, context_mask=None):
        b, h, w, c = x.shape
        y = group_norm(c, "norm")(x).reshape(b, h * w, c)
        y = y + Attention(self.num_heads, self.dtype, name="self_attn")(layer_norm(self.dtype, "ln1")(y))
        if context is not None:
            mask = None if context_mask is None else context_mask[:, None, None, :]
            y = y + Attention(self.num_heads, self.dtype, name="cross_attn")(
                layer_norm(self.dtype, "ln2")(y), mask, context=context.astype(self.dtype))
        y = y + Mlp(4 * c, self.dtype, name="mlp")(layer_norm(self.dtype, "ln3")(y))
        return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
    out_channels: int = 3
    ch: int = 64
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_levels: Sequence[int] = (1, 2)   # levels (0 = full resolution) with transformer blocks
    num_heads: int = 4
    context_dim: int = 0                  # > 0: cross-attention to a [B, L, context_dim] context
    # Also add the context's masked mean, projected, to the time embedding, so that every ResBlock at every
    # resolution sees the prompt (Imagen's pooled text embedding; SDXL adds CLIP's pooled one), not only the
    # levels with cross-attention.
    pooled_context: bool = False
    num_classes: int = 0                  # > 0: class-conditional; label num_classes is the null class
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, context=None, context_mask=None, labels=None, train: bool = False):
        """x: [B, H, W, C] noisy inputs; t: int [B] -> model output [B, H, W, out_channels] (float32)."""
        f = downsampling_factor(self.ch_mult)
        if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"the UNet expects [batch, height, width, channels] with height and width divisible by "
                             f"{f} (ch_mult={tuple(self.ch_mult)}), got shape {tuple(x.shape)}")
        if (context is None) != (self.context_dim == 0):
            raise ValueError("pass `context` exactly when the UNet has context_dim > 0 (a text-conditional model)")
        if (labels is None) != (self.num_classes == 0):
            raise ValueError("pass `labels` exactly when the UNet has num_classes > 0 (a class-conditional model)")
        temb_dim = 4 * self.ch
        temb = dense(temb_dim, self.dtype, "temb1")(timestep_embedding(t, self.ch).astype(self.dtype))
        temb = dense(temb_dim, self.dtype, "temb2")(nn.swish(temb))
        if self.pooled_context:
            if context is None:
                raise ValueError("pooled_context needs a text-conditional UNet (context_dim > 0)")
            temb = temb + dense(temb_dim, self.dtype, "pooled_context")(masked_mean(context, context_mask))
        if self.num_classes:
            table = self.param("class_embedding", nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")), (self.num_classes + 1, temb_dim))
            temb = temb + jnp.take(table, labels, axis=0).astype(self.dtype)

        def attn(h, name):
            return SpatialTransformer(self.num_heads, self.dtype, name=name)(h, context, context_mask)

        h = conv(self.ch, 3, self.dtype, "conv_in")(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for i in range(self.num_res_blocks):
                h = TimeResBlock(self.ch * mult, self.dropout, self.dtype, name=f"down{level}_block{i}")(h, temb, train)
                if level in self.attn_levels:
                    h = attn(h, f"down{level}_attn{i}")
                skips.append(h)
            if level < len(self.ch_mult) - 1:
                h = conv(h.shape[-1], 3, self.dtype, f"down{level}_downsample", stride=2)(h)
                skips.append(h)
        h = TimeResBlock(h.shape[-1], self.dropout, self.dtype, name="mid_block1")(h, temb, train)
        h = attn(h, "mid_attn")
        h = TimeResBlock(h.shape[-1], self.dropout, self.dtype, name="mid_block2")(h, temb, train)
        for level in reversed(range(len(self.ch_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = TimeResBlock(self.ch * self.ch_mult[level], self.dropout, self.dtype,
                                 name=f"up{level}_block{i}")(h, temb, train)
                if level in self.attn_levels:
                    h = attn(h, f"up{level}_attn{i}")
            if level > 0:
                b, hh, ww, c = h.shape
                h = conv(c, 3, self.dtype, f"up{level}_upsample")(jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest"))
        h = nn.swish(group_norm(h.shape[-1], "norm_out")(h))
        out = nn.Conv(self.out_channels, (3, 3), padding="SAME", dtype=self.dtype, name="conv_out",
                      kernel_init=dense_init((None, None, "channels", "embed"), nn.initializers.zeros_init()),
                      bias_init=bias_init(("embed",)))(h)
        return out.astype(jnp.float32)
