"""The convolution and normalization the convolutional models share (the autoencoders' ResNets, the UNet),
with logical axis names on their parameters."""

from __future__ import annotations

import math
from typing import Any

from flax import linen as nn

from jvlm.models.layers import bias_init, dense_init


def group_norm(ch: int, name: str | None = None) -> nn.GroupNorm:
    # At most 32 groups of at least 4 channels (taming's 32 groups at 128 channels). One channel per
    # group would be instance norm, which strips each image's per-channel mean (its colours) at every block.
    return nn.GroupNorm(num_groups=math.gcd(32, max(ch // 4, 1)), name=name)


def conv(ch: int, k: int, dtype: Any, name: str | None = None, stride: int = 1) -> nn.Conv:
    """A k x k convolution to `ch` channels ("SAME" padding unless 1 x 1), LeCun-normal initialized."""
    return nn.Conv(ch, (k, k), strides=(stride, stride), padding="SAME" if k > 1 else "VALID", dtype=dtype,
                   name=name, kernel_init=dense_init((None, None, "channels", "embed"), nn.initializers.lecun_normal()),
                   bias_init=bias_init(("embed",)))
