"""PatchGAN discriminator (pix2pix / taming's NLayerDiscriminator): one real/fake logit per patch.

Group normalization instead of taming's batch normalization: the discriminator stays a pure
function of its parameters (no running statistics in the state, no cross-device batch statistics
when the batch is sharded).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jvlm.models.layers import bias_init, dense_init


class PatchDiscriminator(nn.Module):
    ch: int = 64
    num_layers: int = 3      # stride-2 convolutions: patch logits at 1/2**num_layers of the resolution
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: images [B, H, W, 3] in [-1, 1] -> logits [B, H / 2**num_layers, W / 2**num_layers]."""
        def conv(ch, stride, name, bias=True):
            return nn.Conv(ch, (4, 4), strides=(stride, stride), padding="SAME", dtype=self.dtype, name=name,
                           use_bias=bias, kernel_init=dense_init((None, None, None, None), nn.initializers.normal(0.02)),
                           bias_init=bias_init((None,)))
        h = nn.leaky_relu(conv(self.ch, 2, "conv0")(x.astype(self.dtype)), 0.2)
        for i in range(1, self.num_layers + 1):
            ch = self.ch * min(2 ** i, 8)
            h = conv(ch, 2 if i < self.num_layers else 1, f"conv{i}", bias=False)(h)
            h = nn.leaky_relu(nn.GroupNorm(num_groups=math.gcd(32, max(ch // 4, 1)), name=f"norm{i}")(h), 0.2)
        return conv(1, 1, "logits")(h)[..., 0].astype(jnp.float32)
