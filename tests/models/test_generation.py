"""Compiled generation: the KV-cache decode against full recomputation (1 and 8 devices, with an embedded prefix,
causal and prefix-LM), one compile per prompt bucket, sampling filters, stop tokens and seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from jvlm import sharding
from jvlm.models import masks
from jvlm.models.decoder_lm import DecoderLM, LMSpec
from jvlm.models.generation import Sampling, make_generate, pad_prompts, prompt_bucket, sample
from jvlm.models.transformer import TransformerSpec

SPEC = LMSpec(TransformerSpec(width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=48, sliding_window=6,
                              global_every=2), vocab_size=40, tie_embeddings=False)
PROMPTS = [[1, 5, 9], [1, 7], [1, 3, 3, 8, 20, 11], [1], [1, 30, 2, 4], [1, 6, 6], [1, 12, 13], [1, 39]]
E = 3  # embedded prefix length


@pytest.fixture(scope="module")
def lm():
    model = DecoderLM(SPEC)
    z = jnp.zeros((1, 4), jnp.int32)
    params = meta.unbox(jax.jit(model.init)(jax.random.key(0), z, z, jnp.ones((1, 4), jnp.int32))["params"])
    # larger weights: sharper logits, so that greedy choices are not near-ties
    params = jax.tree.map(lambda p: p * 3.0, params)
    prefix = jax.random.normal(jax.random.key(5), (len(PROMPTS), E, 32))
    return model, params, prefix


def recompute_greedy(model, params, prompts, n, prefix=None, prefix_lm=False):
    """Greedy decoding that re-runs every whole sequence for each new token: no cache; the mask is built from
    scratch over [prefix, prompt, generated so far] (right-padded to one length, padding in segment 0)."""
    e = 0 if prefix is None else prefix.shape[1]
    b, total = len(prompts), e + max(map(len, prompts)) + n
    plen = jnp.asarray([e + len(p) for p in prompts])

    @jax.jit
    def next_tokens(tokens, length):
        pos = jnp.broadcast_to(jnp.arange(total), (b, total))
        seg = (pos < length[:, None]).astype(jnp.int32)
        groups = masks.prefix_groups(pos, plen) if prefix_lm else None
        kw = {}
        if prefix is not None:
            kw = dict(embeddings=jnp.pad(prefix, ((0, 0), (0, total - e), (0, 0))), embedding_mask=pos < e)
        hidden, _ = model.apply({"params": params}, tokens, pos, seg, groups, **kw)
        last = jnp.take_along_axis(hidden, (length - 1)[:, None, None], axis=1)[:, 0]
        return jnp.argmax(model.apply({"params": params}, last, method=DecoderLM.logits), -1)

    tokens = np.zeros((b, total), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, e:e + len(p)] = p
    length = np.asarray(plen)
    for _ in range(n):
        new = np.asarray(next_tokens(tokens, length))
        tokens[np.arange(b), length] = new
        length = length + 1
    return np.stack([tokens[i, e + len(p):e + len(p) + n] for i, p in enumerate(prompts)])


@pytest.mark.parametrize("prefix_kind", ["none", "causal_prefix", "prefix_lm"])
def test_cached_greedy_decode_equals_full_recomputation_on_1_and_8_devices(lm, prefix_kind):
    model, params, prefix = lm
    use_prefix = prefix_kind != "none"  # an embedded prefix, read causally (LLaVA) or as one block (PaliGemma)
    prefix_lm = prefix_kind == "prefix_lm"
    pre = prefix if use_prefix else None
    n = 7
    want = recompute_greedy(model, params, PROMPTS, n, pre, prefix_lm)
    assert len({tuple(r) for r in want}) > 4, "degenerate model: every prompt decodes alike"
    tokens, lengths = pad_prompts(PROMPTS, pad_id=0)
    s = Sampling(max_new_tokens=n)
    got, count = make_generate(model, s, prefix_lm=prefix_lm)(params, tokens, lengths, jax.random.key(0), pre)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert np.asarray(count).tolist() == [n] * len(PROMPTS)
    if prefix_kind == "causal_prefix":
        return  # the sharded program is the same one with constraints: checked with and without a prefix

    mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "model": 2})
    batch = sharding.global_batch_from_full({"t": tokens, "n": lengths}, mesh)
    args = (params, batch["t"], batch["n"], jax.random.key(0))
    if use_prefix:
        args += (jax.device_put(pre, sharding.batch_sharding(mesh, 3)),)
    sharded = make_generate(model, s, prefix_lm=prefix_lm, mesh=mesh)
    np.testing.assert_array_equal(sharding.to_host(sharded(*args)[0]), want)
    if prefix_kind == "none":  # the cache is laid out by the rules: batch over data, K/V heads over model
        text = sharded.lower(*args).as_text()
        kv = f"[{{}}, {{\"data\", \"fsdp\"}}, {{}}, {{\"model\"}}, {{}}]> : tensor<2x8x{16 + n}x2x8xf32>"
        assert text.count(kv) >= 4, "the K/V cache is not constrained to the documented layout"


def test_decode_compiles_once_per_prompt_bucket_and_stops_at_stop_tokens(lm):
    model, params, _ = lm
    traces = []
    s = Sampling(max_new_tokens=5)
    fn = make_generate(model, s, on_trace=lambda: traces.append(1))
    for prompts in ([[1, 2]], [[1, 2, 3, 4, 5, 6, 7]], [[1] * 16], [[1] * 17], [[1] * 30]):
        out, _ = fn(params, *pad_prompts(prompts, 0), jax.random.key(0))
    assert [prompt_bucket(n) for n in (1, 16, 17, 32, 33)] == [16, 16, 32, 32, 64]
    assert len(traces) == 2  # lengths 2..16 share bucket 16, 17 and 30 share bucket 32; decode steps never retrace

    free = np.asarray(make_generate(model, Sampling(max_new_tokens=6))(params, *pad_prompts(PROMPTS, 0),
                                                                        jax.random.key(0))[0])
    stop = int(free[0, 2])  # the third token row 0 would generate
    out, count = make_generate(model, Sampling(max_new_tokens=6, stop_ids=(stop,), pad_id=0))(
        params, *pad_prompts(PROMPTS, 0), jax.random.key(0))
    out, count = np.asarray(out), np.asarray(count)
    for row, c, ref in zip(out, count, free):
        first = next((i for i, t in enumerate(ref) if t == stop), None)
        want = len(ref) if first is None else first + 1
        assert c == want and row[:c].tolist() == ref[:c].tolist() and (row[c:] == 0).all()
    assert count[0] <= 3 and (count < 6).any()


def test_sampling_is_seeded_and_filters_the_vocabulary(lm):
    model, params, _ = lm
    prompts = pad_prompts(PROMPTS, 0)
    hot = make_generate(model, Sampling(temperature=1.0, max_new_tokens=6))
    a = np.asarray(hot(params, *prompts, jax.random.key(3))[0])
    assert np.array_equal(a, np.asarray(hot(params, *prompts, jax.random.key(3))[0]))
    assert not np.array_equal(a, np.asarray(hot(params, *prompts, jax.random.key(4))[0]))

    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.key(0)
    draw = lambda s: np.asarray(sample(logits, keys, s))  # noqa: E731
    assert set(draw(Sampling(temperature=1.0, top_k=2)).tolist()) == {0, 1}
    assert set(draw(Sampling(temperature=1.0, top_p=0.7)).tolist()) == {0, 1}  # 0.5 + 0.3 reach 0.7
    assert set(draw(Sampling(temperature=1.0, top_p=0.85)).tolist()) == {0, 1, 2}
    free = draw(Sampling(temperature=1.0))
    np.testing.assert_allclose(np.bincount(free, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    assert (draw(Sampling(temperature=0.0)) == 0).all()

    hook_calls = []

    def only_even(logits, step):  # the per-step hook restricts sampling to part of the vocabulary
        hook_calls.append(1)
        return jnp.where(jnp.arange(logits.shape[-1]) % 2 == 0, logits, -jnp.inf)
    out = np.asarray(make_generate(model, Sampling(temperature=1.0, max_new_tokens=6), logits_hook=only_even)(
        params, *prompts, jax.random.key(0))[0])
    assert (out % 2 == 0).all() and hook_calls  # traced once, applied at every step
    with pytest.raises(ValueError, match="bad sampling"):
        make_generate(model, Sampling(top_p=0.0))
