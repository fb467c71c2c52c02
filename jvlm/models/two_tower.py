"""Two-tower image-text model (CLIP/SigLIP/LiT): both towers project to a shared, L2-normalized space."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jvlm.models.layers import bias_init, dense_init
from jvlm.models.text import TextTransformer
from jvlm.models.vit import ViT


def l2_normalize(x, eps=1e-6):
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class TwoTower(nn.Module):
    image: dict[str, Any]
    text: dict[str, Any]
    embed_dim: int
    loss: str = "sigmoid"                  # "sigmoid" owns a bias b; "softmax" does not
    init_logit_scale: float | None = None  # default: log 10 (SigLIP) / log(1/0.07) (CLIP)
    init_logit_bias: float = -10.0
    image_head: bool = True                # False: pooled image features are the embedding (SigLIP presets)
    dtype: Any = jnp.float32
    remat: str = "none"

    def setup(self):
        self.img = ViT(**self.image, dtype=self.dtype, remat=self.remat)
        self.txt = TextTransformer(**self.text, dtype=self.dtype, remat=self.remat)
        proj = lambda: nn.Dense(self.embed_dim, dtype=self.dtype, kernel_init=dense_init(("embed", None)),  # noqa: E731
                                bias_init=bias_init((None,)))
        self.img_proj = proj() if self.image_head else None
        self.txt_proj = proj()
        default = np.log(10.0) if self.loss == "sigmoid" else np.log(1 / 0.07)
        init_t = default if self.init_logit_scale is None else self.init_logit_scale
        self.logit_scale = self.param("logit_scale", nn.with_logical_partitioning(
            nn.initializers.constant(init_t), ()), ())
        if self.loss == "sigmoid":
            self.logit_bias = self.param("logit_bias", nn.with_logical_partitioning(
                nn.initializers.constant(self.init_logit_bias), ()), ())

    def encode_image(self, images):
        features = self.img(images)
        return l2_normalize(self.img_proj(features) if self.img_proj is not None else features)

    def encode_text(self, tokens):
        return l2_normalize(self.txt_proj(self.txt(tokens)))

    def __call__(self, images, tokens):
        bias = self.logit_bias if self.loss == "sigmoid" else None
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale, bias
