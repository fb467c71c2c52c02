"""The transformer library: attention implementations against each other and against the formula, grouped-query
heads against repeated heads, RoPE's relative-position property and Llama 3's scaling, the parameter layout that the
converters map onto, packed documents that do not see each other, and KV-cache decoding against recomputation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.core import meta

from jvlm.models import masks
from jvlm.models.attention import attention
from jvlm.models.decoder_lm import DecoderLM, LMSpec, init_cache
from jvlm.models.rope import apply_rope, inverse_frequencies
from jvlm.models.transformer import TransformerSpec


def qkv(n_heads=4, kv_heads=2, t=5, s=5, h=8, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k1, (2, t, n_heads, h)), jax.random.normal(k2, (2, s, kv_heads, h)),
            jax.random.normal(k3, (2, s, kv_heads, h)))


def causal(t):
    pos = jnp.broadcast_to(jnp.arange(t), (2, t))
    return masks.attention_mask(jnp.ones((2, t), jnp.int32), jnp.ones((2, t), jnp.int32), pos, pos)


def test_xla_and_einsum_agree_and_grouped_query_heads_equal_repeated_heads():
    q, k, v = qkv()
    mask = causal(5)
    a = attention(q, k, v, mask, scale=0.3, implementation="xla")
    b = attention(q, k, v, mask, scale=0.3, implementation="einsum")
    np.testing.assert_allclose(a, b, atol=1e-5)
    # GQA: query heads 0,1 read KV head 0 and heads 2,3 read KV head 1, as multi-head attention on repeated K/V.
    mha = attention(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), mask, scale=0.3, implementation="einsum")
    np.testing.assert_allclose(a, mha, atol=1e-5)


def test_soft_capped_attention_is_the_formula():
    q, k, v = qkv(n_heads=2, kv_heads=1, t=3, s=3, h=4)
    mask = causal(3)
    out = np.asarray(attention(q, k, v, mask, scale=0.5, implementation="xla", softcap=2.0))
    qn, kn, vn = map(np.asarray, (q, k, v))
    for b in range(2):
        for head in range(2):
            logits = 2.0 * np.tanh(qn[b, :, head] @ kn[b, :, 0].T * 0.5 / 2.0)
            logits = np.where(np.tril(np.ones((3, 3), bool)), logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            np.testing.assert_allclose(out[b, :, head], w @ vn[b, :, 0], atol=1e-5)
    with pytest.raises(ValueError, match="no logit soft-capping"):
        attention(q, k, v, mask, scale=0.5, implementation="cudnn", softcap=2.0)


def test_rope_scores_depend_only_on_the_position_difference():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))
    score = lambda m, n: float(jnp.sum(apply_rope(q, jnp.array([[m]]), 1e4) * apply_rope(k, jnp.array([[n]]), 1e4)))  # noqa: E731
    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)
    np.testing.assert_allclose(apply_rope(q, jnp.array([[0]]), 1e4), q, atol=1e-6)  # position 0: no rotation


def test_llama3_rope_scaling_matches_its_definition():
    cfg = dict(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
               original_max_position_embeddings=8192)
    got = inverse_frequencies(128, 500_000.0, cfg)
    base = 1.0 / 500_000.0 ** (np.arange(0, 128, 2) / 128)
    for f, g in zip(base, got):
        wavelength = 2 * math.pi / f
        if wavelength < 8192 / 4.0:       # high frequencies: unchanged
            assert g == pytest.approx(f)
        elif wavelength > 8192 / 1.0:     # low frequencies: slowed down by the factor
            assert g == pytest.approx(f / 8.0)
        else:                             # between: interpolated
            smooth = (8192 / wavelength - 1.0) / (4.0 - 1.0)
            assert g == pytest.approx((1 - smooth) * f / 8.0 + smooth * f)
    np.testing.assert_allclose(inverse_frequencies(8, 100.0, {"type": "linear", "factor": 2.0}),
                               inverse_frequencies(8, 100.0) / 2)


# A Gemma-2-like model exercising every option: GQA, head_dim != width / heads, q/k/v biases, QK-norm, soft-capping,
# alternating local/global layers, post-norms, (1 + w) norms, tied and scaled embeddings, a final soft-cap.
GEMMA2ISH = LMSpec(TransformerSpec(width=24, depth=3, num_heads=4, num_kv_heads=2, head_dim=10, mlp_dim=40,
                                   mlp="geglu", qkv_bias=True, qk_norm=True, attn_softcap=20.0, sliding_window=3,
                                   global_every=2, post_norms=True, norm_plus_one=True),
                   vocab_size=61, tie_embeddings=True, embed_scale=True, final_softcap=30.0)


@pytest.fixture(scope="module")
def gemma2ish():
    model = DecoderLM(GEMMA2ISH)
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 61)
    pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
    params = meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens, pos, jnp.ones((2, 9), jnp.int32))["params"])
    # Perturb the zero-initialized norm offsets so that every parameter matters.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)
    return model, params, tokens, pos


def test_parameter_layout_is_the_documented_one(gemma2ish):
    model, params, *_ = gemma2ish
    layer = params["transformer"]["layers"]
    assert layer["attn"]["q"]["kernel"].shape == (3, 24, 4, 10)
    assert layer["attn"]["k"]["kernel"].shape == (3, 24, 2, 10) and layer["attn"]["v"]["bias"].shape == (3, 2, 10)
    assert layer["attn"]["o"]["kernel"].shape == (3, 4, 10, 24)
    assert layer["attn"]["q_norm"]["scale"].shape == (3, 10)
    assert layer["mlp"]["gate"]["kernel"].shape == (3, 24, 40) and layer["mlp"]["down"]["kernel"].shape == (3, 40, 24)
    assert set(layer) == {"attn", "attn_norm", "post_attn_norm", "mlp_norm", "mlp", "post_mlp_norm"}
    assert params["embed"]["embedding"].shape == (61, 24) and "head" not in params  # tied
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32),
                           jnp.ones((1, 2), jnp.int32))["params"]
    spec = nn.get_partition_spec(boxed)["transformer"]["layers"]["attn"]["k"]["kernel"]
    assert tuple(spec) == ("layers", "embed", "kv_heads", "head_dim")


def test_packed_documents_do_not_see_each_other(gemma2ish):
    model, params, tokens, _ = gemma2ish
    apply = jax.jit(lambda t, p, s: model.apply({"params": params}, t, p, s)[0])
    # Row 0 packs document A (4 tokens) and document B (5 tokens), each from position 0.
    a, b = tokens[0, :4], tokens[1, :5]
    packed = jnp.concatenate([a, b])[None]
    pos = jnp.asarray([[0, 1, 2, 3, 0, 1, 2, 3, 4]])
    seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 2, 2]])
    out = apply(packed, pos, seg)[0]
    alone_b = apply(jnp.pad(b, (0, 4))[None], jnp.arange(9)[None], jnp.asarray([[1] * 5 + [0] * 4]))[0]
    alone_a = apply(jnp.pad(a, (0, 5))[None], jnp.arange(9)[None], jnp.asarray([[1] * 4 + [0] * 5]))[0]
    np.testing.assert_allclose(out[:4], alone_a[:4], atol=1e-5)
    np.testing.assert_allclose(out[4:], alone_b[:5], atol=1e-5)


def test_cached_decoding_equals_recomputation(gemma2ish):
    model, params, tokens, pos = gemma2ish
    seg = jnp.ones_like(tokens)
    hidden, _ = model.apply({"params": params}, tokens, pos, seg)
    full = model.apply({"params": params}, hidden, method=DecoderLM.logits)
    step = jax.jit(lambda t, p, s, c: model.apply({"params": params}, t, p, s, cache=c))
    cache = init_cache(GEMMA2ISH, 2, 12)  # longer than the text: empty slots stay invisible
    h, cache = step(tokens[:, :4], pos[:, :4], seg[:, :4], cache)
    outs = [h]
    for i in range(4, 9):
        h, cache = step(tokens[:, i:i + 1], pos[:, i:i + 1], seg[:, i:i + 1], cache)
        outs.append(h)
    assert int(cache["index"]) == 9
    inc = model.apply({"params": params}, jnp.concatenate(outs, 1), method=DecoderLM.logits)
    np.testing.assert_allclose(inc, full, atol=1e-4)
    assert float(jnp.abs(full).max()) <= 30.0  # the final soft-cap
