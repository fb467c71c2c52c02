"""The one transformer library: a pre-norm block for Llama, Gemma 1/2, Qwen2, Chameleon-style and ViT/CLIP towers,
its layers stacked with `nn.scan`, and a KV cache that decoding writes into.

One `TransformerSpec` says everything a block needs. Its parameter layout is fixed here, per layer (stacked on a
leading "layers" axis by the scan), so that Hugging Face checkpoints map onto it by name and a transpose:

    attn_norm/scale                     input_layernorm.weight
    attn/q/kernel [embed, heads, head_dim]          self_attn.q_proj.weight (transposed, heads split)
    attn/k/kernel, attn/v/kernel [embed, kv_heads, head_dim]   k_proj, v_proj (+ bias: Qwen2)
    attn/q_norm/scale, attn/k_norm/scale [head_dim] (QK-norm)
    attn/o/kernel [heads, head_dim, embed]          self_attn.o_proj.weight
    post_attn_norm/scale                Gemma 2's post_attention_layernorm
    mlp_norm/scale                      post_attention_layernorm (Llama) / pre_feedforward_layernorm (Gemma 2)
    mlp/gate/kernel, mlp/up/kernel [embed, mlp], mlp/down/kernel [mlp, embed]
    post_mlp_norm/scale                 Gemma 2's post_feedforward_layernorm

Attention masks come in from `jvlm.models.masks` (built once per forward pass, outside the scan); a layer only
picks the sliding-window variant when it is a local layer (Gemma 2 alternates local and global: a traced per-layer
flag scanned with the parameters, so one compiled layer serves both).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jvlm import sharding
from jvlm.models.attention import attention, check_implementation
from jvlm.models.norms import Norm
from jvlm.models.rope import apply_rope

MLPS = ("swiglu", "geglu", "gelu")
REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    num_kv_heads: int = 0             # 0: as many as num_heads (multi-head attention)
    head_dim: int = 0                 # 0: width // num_heads
    mlp: str = "swiglu"               # "swiglu" | "geglu" (gated, tanh GELU) | "gelu" (plain, tanh GELU)
    mlp_bias: bool = False
    norm: str = "rms"                 # "rms" | "layer"
    norm_eps: float = 1e-6
    norm_plus_one: bool = False       # Gemma's RMSNorm scales by (1 + w)
    qkv_bias: bool = False            # Qwen2
    out_bias: bool = False            # ViT / CLIP towers
    qk_norm: bool = False             # Chameleon-style: normalize queries and keys per head
    rope_base: float = 10_000.0       # 0: no RoPE (towers with learned position embeddings)
    rope_scaling: tuple = ()          # (("type", "llama3"), ("factor", 8.0), ...) or ()
    attn_softcap: float = 0.0         # Gemma 2: logits -> c * tanh(logits / c)
    query_scale: float = 0.0          # 0: head_dim ** -0.5 (Gemma 2: query_pre_attn_scalar ** -0.5)
    sliding_window: int = 0           # > 0: local layers see this many positions back (the query included)
    global_every: int = 0             # with a window: every n-th layer (n-1, 2n-1, ...) is global; 0: all local
    post_norms: bool = False          # Gemma 2: norms after attention and after the MLP too
    attention: str = "xla"            # "xla" | "cudnn" | "einsum" (jvlm.models.attention)
    remat: str = "none"               # "none" | "full" | "nothing_saveable" | "dots_saveable"
    scan_unroll: int = 1              # layers per scan iteration (depth: fully unrolled, as a Python loop would be)
    dtype: Any = jnp.float32          # compute dtype; parameters stay float32

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.width // self.num_heads

    @property
    def scale(self) -> float:
        return self.query_scale or self.dim_per_head ** -0.5

    def is_local(self, layer: int) -> bool:
        if self.sliding_window <= 0:
            return False
        return not (self.global_every > 0 and (layer + 1) % self.global_every == 0)

    def check(self) -> None:
        """Raises ValueError naming the field when the spec cannot be built."""
        if self.mlp not in MLPS:
            raise ValueError(f"mlp={self.mlp!r} is unknown; use one of {MLPS}")
        if self.remat not in REMAT:
            raise ValueError(f"remat={self.remat!r} is unknown; use one of {tuple(REMAT)}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.kv_heads}")
        if not self.head_dim and self.width % self.num_heads:
            raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}; set head_dim")
        if self.rope_base and self.dim_per_head % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.dim_per_head}")
        check_implementation(self.attention, self.attn_softcap)


def constrain(x, axes):
    return sharding.constrain(x, axes)


def _dense(features, axes, bias, dtype, name, in_axes=-1):
    kernel_axes, bias_axes = axes
    return nn.DenseGeneral(
        features, axis=in_axes, use_bias=bias, dtype=dtype, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), kernel_axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), bias_axes))


class Attention(nn.Module):
    spec: TransformerSpec

    @nn.compact
    def __call__(self, x, positions, mask, cache_kv=None, cache_index=None):
        """x [B, T, D]; positions [B, T]; mask [B, 1, T, S]. With `cache_kv` (k, v [B, S, K, H]) the new keys and
        values are written at `cache_index` and attention reads the whole cache; returns (out, new cache_kv)."""
        s = self.spec
        h, n, k = s.dim_per_head, s.num_heads, s.kv_heads
        q = _dense((n, h), (("embed", "heads", "head_dim"), ("heads", "head_dim")), s.qkv_bias, s.dtype, "q")(x)
        key = _dense((k, h), (("embed", "kv_heads", "head_dim"), ("kv_heads", "head_dim")), s.qkv_bias, s.dtype, "k")(x)
        value = _dense((k, h), (("embed", "kv_heads", "head_dim"), ("kv_heads", "head_dim")), s.qkv_bias, s.dtype,
                       "v")(x)
        if s.qk_norm:
            q = Norm(s.norm, s.norm_eps, s.norm_plus_one, "head_dim", s.dtype, name="q_norm")(q)
            key = Norm(s.norm, s.norm_eps, s.norm_plus_one, "head_dim", s.dtype, name="k_norm")(key)
        if s.rope_base:
            scaling = dict(s.rope_scaling) or None
            q, key = apply_rope(q, positions, s.rope_base, scaling), apply_rope(key, positions, s.rope_base, scaling)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        if cache_kv is not None:
            ck, cv = cache_kv
            key = jax.lax.dynamic_update_slice_in_dim(ck, key.astype(ck.dtype), cache_index, axis=1)
            value = jax.lax.dynamic_update_slice_in_dim(cv, value.astype(cv.dtype), cache_index, axis=1)
            key = constrain(key, ("batch", "cache_length", "kv_heads", "head_dim"))
            value = constrain(value, ("batch", "cache_length", "kv_heads", "head_dim"))
        out = attention(q, key.astype(s.dtype), value.astype(s.dtype), mask, scale=s.scale, implementation=s.attention,
                        softcap=s.attn_softcap or None)
        out = _dense(s.width, (("heads", "head_dim", "embed"), ("embed",)), s.out_bias, s.dtype, "o", in_axes=(-2, -1))(out)
        return out, ((key, value) if cache_kv is not None else None)


class Mlp(nn.Module):
    spec: TransformerSpec

    @nn.compact
    def __call__(self, x):
        s = self.spec
        up = _dense(s.mlp_dim, (("embed", "mlp"), ("mlp",)), s.mlp_bias, s.dtype, "up")(x)
        if s.mlp == "gelu":
            hidden = nn.gelu(up)
        else:
            gate = _dense(s.mlp_dim, (("embed", "mlp"), ("mlp",)), s.mlp_bias, s.dtype, "gate")(x)
            hidden = (nn.silu(gate) if s.mlp == "swiglu" else nn.gelu(gate)) * up
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        return _dense(s.width, (("mlp", "embed"), ("embed",)), s.mlp_bias, s.dtype, "down")(hidden)


class Block(nn.Module):
    """One pre-norm layer. Called by the scan as (x, context, per-layer inputs) -> (x, per-layer outputs)."""
    spec: TransformerSpec

    @nn.compact
    def __call__(self, x, context, layer):
        s = self.spec
        norm = lambda name: Norm(s.norm, s.norm_eps, s.norm_plus_one, "embed", s.dtype, name=name)  # noqa: E731
        mask = context["mask"]
        if "local_mask" in context:
            mask = jnp.where(layer["is_local"], context["local_mask"], mask)
        x = constrain(x, ("batch", "length", "embed"))
        y, new_kv = Attention(s, name="attn")(norm("attn_norm")(x), context["positions"], mask,
                                              layer.get("cache_kv"), context.get("cache_index"))
        if s.post_norms:
            y = norm("post_attn_norm")(y)
        x = x + y
        y = Mlp(s, name="mlp")(norm("mlp_norm")(x))
        if s.post_norms:
            y = norm("post_mlp_norm")(y)
        x = constrain(x + y, ("batch", "length", "embed"))
        return x, ({"cache_kv": new_kv} if new_kv is not None else {})


class Transformer(nn.Module):
    """`spec.depth` blocks under one `nn.scan`: parameters stacked on a leading "layers" axis, one compiled layer."""
    spec: TransformerSpec

    @nn.compact
    def __call__(self, x, positions, mask, local_mask=None, cache_kv=None, cache_index=None):
        """cache_kv: None or (k, v) [L, B, S, K, H]. Returns (x, new cache_kv or None)."""
        s = self.spec
        block = Block
        if s.remat != "none":
            block = nn.remat(Block, policy=REMAT[s.remat], prevent_cse=False)
        scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                          in_axes=(nn.broadcast, 0), out_axes=0, length=s.depth, unroll=s.scan_unroll,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        context = {"positions": positions, "mask": mask}
        layer = {}
        if local_mask is not None:
            context["local_mask"] = local_mask
            layer["is_local"] = jnp.asarray([s.is_local(i) for i in range(s.depth)])
        if cache_kv is not None:
            context["cache_index"] = cache_index
            layer["cache_kv"] = cache_kv
        x, out = scanned(s, name="layers")(x, context, layer)
        return x, out.get("cache_kv")
