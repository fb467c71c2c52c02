"""A decoder-only language model on the transformer library: token embedding (optionally replaced by given vectors,
e.g. a VLM's image features), the scanned blocks, a final norm, and a tied or untied output head.

The forward pass returns hidden states, not logits: the loss projects them to the vocabulary a chunk at a time
(`jvlm.objectives.lm`), and decoding projects only the positions it samples from. Parameters:

    embed/embedding [vocab, embed]     model.embed_tokens.weight
    layers/...                         model.layers.{i}... (jvlm.models.transformer)
    final_norm/scale                   model.norm.weight
    head/kernel [embed, vocab]         lm_head.weight (transposed); absent when tied to the embedding
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jvlm.models import masks
from jvlm.models.norms import Norm
from jvlm.models.transformer import Transformer, TransformerSpec, constrain
from jvlm.objectives.lm import project


@dataclasses.dataclass(frozen=True)
class LMSpec:
    transformer: TransformerSpec
    vocab_size: int
    tie_embeddings: bool = False
    embed_scale: bool = False     # Gemma: token embeddings times sqrt(width)
    final_softcap: float = 0.0    # Gemma 2: logits -> c * tanh(logits / c)
    embed_init_std: float = 0.02


class DecoderLM(nn.Module):
    spec: LMSpec

    def setup(self):
        s, t = self.spec, self.spec.transformer
        t.check()
        self.embed = nn.Embed(s.vocab_size, t.width, embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(s.embed_init_std), ("vocab", "embed")), name="embed")
        self.layers = Transformer(t, name="transformer")
        self.final_norm = Norm(t.norm, t.norm_eps, t.norm_plus_one, "embed", t.dtype, name="final_norm")
        if not s.tie_embeddings:
            self.head = self.param("head", nn.with_logical_partitioning(
                nn.initializers.normal(t.width ** -0.5), ("embed", "vocab")), (t.width, s.vocab_size))

    def __call__(self, tokens, positions, segments, groups=None, *, embeddings=None, embedding_mask=None,
                 cache=None):
        """tokens, positions, segments, groups: int32 [B, T] (groups default to causal: the positions; see
        jvlm.models.masks). `embeddings` [B, T, D] replace the token embeddings where `embedding_mask` [B, T] is True
        (not scaled: Gemma's sqrt(D) applies to token embeddings only, as PaliGemma's image features are fed).

        Without a cache the tokens attend among themselves. With `cache` (from `init_cache`) they are written at
        cache["index"] and attend to everything cached so far; returns (hidden [B, T, D], the updated cache)."""
        s, t = self.spec, self.spec.transformer
        groups = masks.causal_groups(positions) if groups is None else groups
        x = self.embed(tokens).astype(t.dtype)
        if s.embed_scale:
            x = x * jnp.asarray(np.sqrt(t.width), t.dtype)
        if embeddings is not None:
            x = jnp.where(embedding_mask[..., None], embeddings.astype(t.dtype), x)
        x = constrain(x, ("batch", "length", "embed"))
        if cache is None:
            kv_seg, kv_grp, kv_pos, cache_kv, index = segments, groups, positions, None, None
        else:
            index = cache["index"]
            write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new, index, axis=1)  # noqa: E731
            kv_seg, kv_grp, kv_pos = (write(cache["segments"], segments), write(cache["groups"], groups),
                                      write(cache["positions"], positions))
            cache_kv = (cache["k"], cache["v"])
        mask = masks.attention_mask(segments, kv_seg, groups, kv_grp)
        local = None
        if t.sliding_window > 0:
            local = masks.attention_mask(segments, kv_seg, groups, kv_grp, q_position=positions, kv_position=kv_pos,
                                         window=t.sliding_window)
        x, new_kv = self.layers(x, positions, mask, local, cache_kv, index)
        hidden = self.final_norm(x)
        if cache is None:
            return hidden, None
        new_cache = {"k": new_kv[0], "v": new_kv[1], "segments": kv_seg, "groups": kv_grp, "positions": kv_pos,
                     "index": index + tokens.shape[1]}
        return hidden, new_cache

    def head_matrix(self):
        """[embed, vocab]: the output projection (the transposed embedding when tied)."""
        return self.embed.embedding.T if self.spec.tie_embeddings else self.head

    def logits(self, hidden):
        """Float32 logits of hidden states [..., D] (for decoding and small batches; training never forms all of
        them: jvlm.objectives.lm)."""
        return project(hidden, self.head_matrix(), self.spec.final_softcap)


def init_cache(spec: LMSpec, batch: int, length: int, dtype=jnp.float32) -> dict[str, Any]:
    """An empty KV cache for `length` tokens: every slot's segment 0 (nothing attends to it)."""
    t = spec.transformer
    kv = jnp.zeros((t.depth, batch, length, t.kv_heads, t.dim_per_head), dtype)
    ints = jnp.zeros((batch, length), jnp.int32)
    return {"k": kv, "v": kv, "segments": ints, "groups": ints, "positions": ints, "index": jnp.zeros((), jnp.int32)}


CACHE_AXES = {"k": ("layers", "batch", "cache_length", "kv_heads", "head_dim"),
              "v": ("layers", "batch", "cache_length", "kv_heads", "head_dim"),
              "segments": ("batch", "cache_length"), "groups": ("batch", "cache_length"),
              "positions": ("batch", "cache_length"), "index": ()}
