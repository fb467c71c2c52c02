"""Decoding a `DecoderLM`, compiled once: a prefill of the prompt, then a `lax.while_loop` over a KV cache.

    fn = make_generate(model, Sampling(temperature=1.0, top_p=0.9, max_new_tokens=40, stop_ids=(eos,)))
    new_tokens, num_new = fn(params, prompts, prompt_lengths, rng)          # [B, max_new_tokens], [B]

- Prompts of different lengths share one batch: left-aligned, padded (`prompt_buckets`); the padding's segment is
  0, so nothing attends to it, and each row continues from its own last token and position.
- An embedded prefix (`prefix` [B, E, width]: image features, a soft prompt) is placed before the prompt tokens.
  With `prefix_lm=True` the prefix and the prompt form one bidirectional block and what is generated attends to it
  causally (PaliGemma); otherwise everything is causal (LLaVA). The mask builder decides both.
- A per-step `logits_hook(logits [B, V], step) -> logits` runs before sampling: restrict the vocabulary, or mix
  two halves of the batch for classifier-free guidance.
- Sampling: greedy (temperature 0), temperature, top-k, top-p; a row stops at its first stop token (the rest is
  `pad_id`), and the loop ends when every row has stopped or `max_new_tokens` are out. The same seed gives the same
  tokens.

One program per (batch size, prefix length, prompt bucket, Sampling, hook): prompts are padded up to the next
power of two from 16 (`prompt_buckets`), so prompt lengths 1..16 share a program, 17..32 the next, and so on.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jvlm import sharding
from jvlm.models import masks
from jvlm.models.decoder_lm import CACHE_AXES, DecoderLM, init_cache

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0          # 0: greedy
    top_k: int = 0                    # 0: off
    top_p: float = 1.0                # 1: off
    max_new_tokens: int = 32
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0

    def check(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(f"bad sampling settings {self}: temperature >= 0, top_k >= 0, 0 < top_p <= 1, "
                             f"max_new_tokens >= 1")


def prompt_bucket(length: int) -> int:
    """The padded prompt length a prompt of `length` tokens is compiled for."""
    return max(MIN_BUCKET, 1 << (max(length, 1) - 1).bit_length())


def sample(logits, rng, s: Sampling):
    """Token ids [B] from float logits [B, V]."""
    if s.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / s.temperature
    neg = jnp.finfo(logits.dtype).min
    if s.top_k:
        kth = jax.lax.top_k(logits, s.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if s.top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass of the tokens ranked above
        kept = jnp.where(before < s.top_p, ordered, jnp.inf)
        logits = jnp.where(logits < jnp.min(kept, axis=-1, keepdims=True), neg, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def make_generate(model: DecoderLM, s: Sampling, *, prefix_lm: bool = False,
                  logits_hook: Callable | None = None, mesh=None, rules=sharding.LOGICAL_RULES, on_trace=None):
    """A jitted fn(params, prompts [B, P] int32, lengths [B], rng, prefix [B, E, D] or None) ->
    (tokens [B, max_new_tokens], number generated [B], including the stop token). With `mesh`, activations and the
    KV cache are sharded by the logical rules (batch over the data axes, K/V heads over `model`)."""
    s.check()
    spec = model.spec
    dtype = spec.transformer.dtype

    def constrain_cache(cache):
        return {k: sharding.constrain(v, CACHE_AXES[k]) for k, v in cache.items()}

    def run(params, prompts, lengths, rng, prefix=None):
        if on_trace is not None:
            on_trace()
        b, p = prompts.shape
        e = 0 if prefix is None else prefix.shape[1]
        apply = lambda *a, **k: model.apply({"params": params}, *a, **k)  # noqa: E731
        cache = constrain_cache(init_cache(spec, b, e + p + s.max_new_tokens, dtype))
        valid = jnp.concatenate([jnp.ones((b, e), bool), jnp.arange(p)[None] < lengths[:, None]], axis=1)
        positions = jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
        segments = valid.astype(jnp.int32)
        groups = masks.prefix_groups(positions, e + lengths) if prefix_lm else masks.causal_groups(positions)
        tokens = jnp.concatenate([jnp.full((b, e), s.pad_id, jnp.int32), prompts], axis=1)
        embeddings = embedding_mask = None
        if prefix is not None:
            embeddings = jnp.concatenate([prefix, jnp.zeros((b, p, prefix.shape[-1]), prefix.dtype)], axis=1)
            embedding_mask = jnp.concatenate([jnp.ones((b, e), bool), jnp.zeros((b, p), bool)], axis=1)
        hidden, cache = apply(tokens, positions, segments, groups, embeddings=embeddings,
                              embedding_mask=embedding_mask, cache=cache)
        last = jnp.take_along_axis(hidden, (e + lengths - 1)[:, None, None], axis=1)[:, 0]
        logits = apply(last, method=DecoderLM.logits)
        state = dict(i=jnp.zeros((), jnp.int32), cache=constrain_cache(cache), logits=logits, rng=rng,
                     out=jnp.full((b, s.max_new_tokens), s.pad_id, jnp.int32), done=jnp.zeros((b,), bool),
                     count=jnp.zeros((b,), jnp.int32), position=(e + lengths).astype(jnp.int32),
                     group=masks.next_group(cache["groups"], cache["segments"]).astype(jnp.int32))
        stops = jnp.asarray(s.stop_ids or (-1,), jnp.int32)

        def body(st):
            logits = st["logits"] if logits_hook is None else logits_hook(st["logits"], st["i"])
            rng, key = jax.random.split(st["rng"])
            token = jnp.where(st["done"], s.pad_id, sample(logits, key, s))
            out = jax.lax.dynamic_update_slice_in_dim(st["out"], token[:, None], st["i"], axis=1)
            count = st["count"] + (~st["done"]).astype(jnp.int32)
            done = st["done"] | jnp.isin(token, stops)
            hidden, cache = apply(token[:, None], st["position"][:, None], jnp.ones((b, 1), jnp.int32),
                                  st["group"][:, None], cache=st["cache"])
            return dict(i=st["i"] + 1, cache=constrain_cache(cache), logits=apply(hidden[:, 0], method=DecoderLM.logits),
                        rng=rng, out=out, done=done, count=count, position=st["position"] + 1, group=st["group"] + 1)

        def cond(st):
            return (st["i"] < s.max_new_tokens) & ~jnp.all(st["done"])

        final = jax.lax.while_loop(cond, body, state)
        return final["out"], final["count"]

    if mesh is None:
        return jax.jit(run)

    def sharded(*args):
        with sharding.activation_rules(mesh, rules):
            return run(*args)
    return jax.jit(sharded)


def pad_prompts(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned [B, bucket] int32 prompts and their lengths [B]."""
    if not prompts or any(len(q) == 0 for q in prompts):
        raise ValueError("every prompt needs at least one token (a BOS)")
    bucket = prompt_bucket(max(len(q) for q in prompts))
    out = np.full((len(prompts), bucket), pad_id, np.int32)
    for i, q in enumerate(prompts):
        out[i, :len(q)] = q
    return out, np.asarray([len(q) for q in prompts], np.int32)
