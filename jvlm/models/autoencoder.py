"""Convolutional ResNet encoder and decoder for image autoencoders and tokenizers (VAE, VQ-VAE,
VQ-GAN, dVAE), in the shape of taming-transformers / latent-diffusion's first stage.

Encoder: conv_in -> per level [num_res_blocks ResBlocks, then a stride-2 downsample except at the last
level] -> mid (ResBlock, optional attention, ResBlock) -> GroupNorm, swish -> conv to `out_channels`.
The downsampling factor is 2 ** (len(ch_mult) - 1): ch_mult (1, 2) -> 2, (1, 2, 2) -> 4, (1, 1, 2, 2) -> 8,
(1, 1, 2, 2, 4) -> 16. The decoder mirrors it with nearest-neighbour upsampling. Attention at the
lowest resolution is optional (`attn=True`), as in VQ-GAN. The decoder may be wider or deeper than the
encoder (`decoder_settings`): latent diffusion runs the encoder at every training step and the decoder only
when it samples.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jvlm.config import ConfigError
from jvlm.models.conv_layers import conv, group_norm
from jvlm.models.layers import dense_init

Dtype = Any


def downsampling_factor(ch_mult: Sequence[int]) -> int:
    return 2 ** (len(ch_mult) - 1)


DECODER_OVERRIDES = ("ch", "num_res_blocks")


def decoder_settings(encoder: dict[str, Any], decoder: dict[str, Any] | None) -> dict[str, Any]:
    """The decoder's settings: the encoder's, with config.model.decoder's non-zero `ch` / `num_res_blocks`
    in their place (0 keeps the encoder's). ch_mult is always the encoder's: the two must mirror."""
    unknown = sorted(set(decoder or {}) - set(DECODER_OVERRIDES))
    if unknown:
        raise ConfigError(f"config.model.decoder may set only {', '.join(DECODER_OVERRIDES)} (0 = the encoder's), "
                         f"got {', '.join(unknown)}; the upsampling always mirrors model.encoder.ch_mult.")
    return {**encoder, **{k: v for k, v in (decoder or {}).items() if v}}


class ResBlock(nn.Module):
    out_ch: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = conv(self.out_ch, 3, self.dtype, "conv1")(nn.swish(group_norm(x.shape[-1], "norm1")(x)))
        h = conv(self.out_ch, 3, self.dtype, "conv2")(nn.swish(group_norm(self.out_ch, "norm2")(h)))
        if x.shape[-1] != self.out_ch:
            x = conv(self.out_ch, 1, self.dtype, "skip")(x)
        return x + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = group_norm(c, "norm")(x).reshape(b, h * w, c)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=n, kernel_init=dense_init(("embed", "mlp")))(y)
                   for n in ("q", "k", "v"))
        weights = jax.nn.softmax((q @ k.transpose(0, 2, 1) / jnp.sqrt(c)).astype(jnp.float32), axis=-1)
        out = weights.astype(self.dtype) @ v
        out = nn.Dense(c, dtype=self.dtype, name="out", kernel_init=dense_init(("mlp", "embed")))(out)
        return x + out.reshape(b, h, w, c)


class Encoder(nn.Module):
    out_channels: int                 # z channels (x2 for a VAE's mean and log-variance: the caller asks)
    ch: int = 64
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    attn: bool = False
    in_channels: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: [B, H, W, in_channels] in [-1, 1] -> [B, H/f, W/f, out_channels]."""
        f = downsampling_factor(self.ch_mult)
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"the encoder expects images [batch, height, width, {self.in_channels}], got shape "
                             f"{tuple(x.shape)}; convert images to {self.in_channels} channels (RGB) first")
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"image size {x.shape[1]}x{x.shape[2]} is not divisible by the downsampling factor {f} "
                             f"(ch_mult={tuple(self.ch_mult)}); resize the images or change ch_mult")
        h = conv(self.ch, 3, self.dtype, "conv_in")(x.astype(self.dtype))
        for level, mult in enumerate(self.ch_mult):
            for i in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, self.dtype, name=f"down{level}_block{i}")(h)
            if level < len(self.ch_mult) - 1:
                h = conv(h.shape[-1], 3, self.dtype, f"down{level}_downsample", stride=2)(h)
        h = ResBlock(h.shape[-1], self.dtype, name="mid_block1")(h)
        if self.attn:
            h = SpatialAttention(self.dtype, name="mid_attn")(h)
        h = ResBlock(h.shape[-1], self.dtype, name="mid_block2")(h)
        return conv(self.out_channels, 3, self.dtype, "conv_out")(nn.swish(group_norm(h.shape[-1], "norm_out")(h)))


class Decoder(nn.Module):
    out_channels: int = 3
    ch: int = 64
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    attn: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z, features_only: bool = False):
        """z: [B, h, w, C] -> images [B, h*f, w*f, out_channels] (unbounded; [-1, 1] is the target range).

        features_only: stop before the last convolution (`output_conv`, parameters "conv_out"), for losses
        that need gradients at the decoder's last layer (VQ-GAN's adaptive weight)."""
        h = conv(self.ch * self.ch_mult[-1], 3, self.dtype, "conv_in")(z.astype(self.dtype))
        h = ResBlock(h.shape[-1], self.dtype, name="mid_block1")(h)
        if self.attn:
            h = SpatialAttention(self.dtype, name="mid_attn")(h)
        h = ResBlock(h.shape[-1], self.dtype, name="mid_block2")(h)
        for level in reversed(range(len(self.ch_mult))):
            for i in range(self.num_res_blocks + 1):
                h = ResBlock(self.ch * self.ch_mult[level], self.dtype, name=f"up{level}_block{i}")(h)
            if level > 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, hh * 2, ww * 2, c), "nearest")
                h = conv(c, 3, self.dtype, f"up{level}_upsample")(h)
        h = nn.swish(group_norm(h.shape[-1], "norm_out")(h))
        if features_only:
            return h
        return output_conv(self.out_channels, self.dtype)(h).astype(jnp.float32)


def output_conv(out_channels: int = 3, dtype: Dtype = jnp.float32) -> nn.Conv:
    """The decoder's last layer; `output_conv().apply({"params": params["conv_out"]}, features)`."""
    return conv(out_channels, 3, dtype, "conv_out")
