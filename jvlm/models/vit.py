"""Vision Transformer image encoder (patch embedding, 2-D positions, pre-norm blocks, pooling)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jvlm.models.layers import Attention, Dtype, Mlp, Transformer, bias_init, constrain, dense_init, layer_norm


def _conv_stem_channels(width: int, layers: int) -> list[int]:
    return [max(width // 2 ** (layers - i), 8) for i in range(layers)]


def sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding [h*w, width] (MoCo v3 / big_vision)."""
    if width % 4:
        raise ValueError(f"sincos2d position embedding needs width % 4 == 0, got {width}")
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1 or 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class MapHead(nn.Module):
    """Multihead attention pooling with one learned probe."""
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (None, None, "embed")),
                           (1, 1, width)).astype(self.dtype)
        probe = jnp.broadcast_to(probe, (x.shape[0], 1, width))
        y = Attention(self.num_heads, self.dtype, name="attn")(probe, context=x)
        y = y + Mlp(self.mlp_dim, self.dtype, name="mlp")(layer_norm(self.dtype, "ln")(y))
        return y[:, 0]


class ViT(nn.Module):
    """ViT; with stem="conv" the patch embedding is preceded by log2(patch) stride-2 3x3 convolutions
    ("Early convolutions help transformers see better", Xiao et al. 2021): local edge and corner
    features from the first step, which short CPU schedules need to learn shapes."""
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    pool: str = "map"          # "map" | "gap" | "tok"
    posemb: str = "learn"      # "learn" | "sincos2d"
    stem: str = "patch"        # "patch": one linear patch embedding | "conv": stride-2 3x3 convs (ViTc)
    dtype: Dtype = jnp.float32
    remat: str = "none"

    def conv_stem(self, x):
        layers = self.patch_size.bit_length() - 1
        for i, ch in enumerate(_conv_stem_channels(self.width, layers)):
            x = nn.Conv(ch, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype, name=f"stem{i}",
                        kernel_init=dense_init((None, None, None, None), nn.initializers.lecun_normal()),
                        bias_init=bias_init((None,)))(x)
            x = nn.gelu(x)
        return x

    @nn.compact
    def __call__(self, images):
        """images: float [B, H, W, C] in [-1, 1] -> pooled features [B, width]."""
        p = self.patch_size
        _, h, w, _ = images.shape
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by patch_size {p}")
        if self.stem == "conv" and p & (p - 1):
            raise ValueError(f"stem='conv' halves the resolution per layer, so patch_size must be a power of 2, got {p}")
        x = images.astype(self.dtype)
        if self.stem == "conv":
            x = self.conv_stem(x)
        elif self.stem != "patch":
            raise ValueError(f"unknown stem {self.stem!r}; use 'patch' or 'conv'")
        k = 1 if self.stem == "conv" else p
        x = nn.Conv(self.width, (k, k), strides=(k, k), padding="VALID", dtype=self.dtype, name="patch_embed",
                    kernel_init=dense_init((None, None, "channels", "embed"), nn.initializers.lecun_normal()),
                    bias_init=bias_init(("embed",)))(x)
        x = x.reshape(x.shape[0], -1, self.width)
        if self.posemb == "learn":
            pos = self.param("pos_embedding", nn.with_logical_partitioning(
                nn.initializers.normal(1.0 / np.sqrt(self.width)), (None, "length", "embed")),
                (1, x.shape[1], self.width))
        elif self.posemb == "sincos2d":
            pos = sincos_2d(h // p, w // p, self.width)[None]
        else:
            raise ValueError(f"unknown posemb {self.posemb!r}; use 'learn' or 'sincos2d'")
        x = x + pos.astype(self.dtype)
        if self.pool == "tok":
            cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, None, "embed")),
                             (1, 1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(self.dtype), x], axis=1)
        x = constrain(x, ("batch", "length", "embed"))
        x = Transformer(self.depth, self.num_heads, self.mlp_dim, self.dtype, self.remat, name="encoder")(x)
        if self.pool == "map":
            return MapHead(self.num_heads, self.mlp_dim, self.dtype, name="map_head")(x)
        if self.pool == "gap":
            return x.mean(axis=1)
        if self.pool == "tok":
            return x[:, 0]
        raise ValueError(f"unknown pool {self.pool!r}; use 'map', 'gap' or 'tok'")
