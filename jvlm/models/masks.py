"""The one attention-mask builder: who may attend to whom, from per-token metadata, never from token ids.

Every token carries three integers:
- `segment`: which document of a packed row it belongs to; 0 marks padding (and empty KV-cache slots), which
  nothing attends to. Tokens attend only within their own segment.
- `group`: a non-decreasing attention group within a segment. A token sees every token of its segment whose group
  is <= its own. One token per group is causal attention; a run of tokens sharing a group is a block they all see
  in full (a PaliGemma prefix: image + prompt; a Transfusion image), still causal with respect to what follows.
  This is big_vision's `mask_ar` convention (a cumulative sum decides who sees whom) as explicit numbers, so a query
  decoded later, at any cache position, needs only its own group: the last group so far + 1.
- `position`: the token's position in its document (RoPE's input), used here only for sliding windows: a query
  sees keys at most `window - 1` positions behind it (Mistral / Gemma 2's local layers).

`is_causal` / `local_window_size` of `jax.nn.dot_product_attention` assume the queries start at key 0, which a KV
cache breaks; `tokens != 0` breaks on vocabularies where id 0 is a real token. Neither is used anywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(q_segment, kv_segment, q_group, kv_group, *, q_position=None, kv_position=None,
                   window=None) -> jax.Array:
    """bool [B, 1, T, S]: query t of row b may attend to key s.

    q_* are [B, T], kv_* are [B, S]. `window` (int or traced int32 scalar; 0 or None: no window) needs the
    positions. A query that may see nothing (padding) gets an all-False row; attention then averages over all
    keys, a finite value that no loss reads."""
    same = (q_segment[:, :, None] == kv_segment[:, None, :]) & (kv_segment[:, None, :] > 0)
    visible = same & (kv_group[:, None, :] <= q_group[:, :, None])
    if window is not None:
        if q_position is None or kv_position is None:
            raise ValueError("a sliding window needs q_position and kv_position")
        distance = q_position[:, :, None] - kv_position[:, None, :]
        window = jnp.asarray(window)
        visible = visible & ((window <= 0) | (distance < window))
    return visible[:, None]


def causal_groups(positions: jax.Array) -> jax.Array:
    """Groups of plain causal attention: every token its own group, in order."""
    return positions


def prefix_groups(positions: jax.Array, prefix_len: jax.Array) -> jax.Array:
    """Prefix-LM (PaliGemma): the first `prefix_len` tokens of each row [B] are one bidirectional block, the rest
    causal after it. Groups stay on the position scale: the prefix is group prefix_len - 1."""
    prefix_len = jnp.asarray(prefix_len).reshape(-1, 1)
    return jnp.maximum(positions, prefix_len - 1)


def block_groups(starts_group: jax.Array) -> jax.Array:
    """Bidirectional blocks inside a causal sequence (Transfusion's images): `starts_group` [B, T] is True on
    every token that starts a new group: each text token, and only the first token of each block. Padding may
    hold anything (its segment is 0)."""
    return jnp.cumsum(starts_group.astype(jnp.int32), axis=-1) - 1


def next_group(groups: jax.Array, segments: jax.Array) -> jax.Array:
    """[B]: the group a token appended to each row continues with: one past the last real token's group."""
    last = jnp.max(jnp.where(segments > 0, groups, -1), axis=-1)
    return last + 1
