"""ViT and text tower options behave as their names say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvlm.models.text import TextTransformer
from jvlm.models.vit import ViT, sincos_2d

KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("pool, posemb, stem", [("map", "learn", "patch"), ("gap", "sincos2d", "patch"),
                                               ("tok", "learn", "conv"), ("map", "sincos2d", "conv")])
def test_vit_variants(pool, posemb, stem):
    vit = ViT(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, pool=pool, posemb=posemb, stem=stem)
    images = jax.random.normal(KEY, (2, 32, 32, 3))
    variables = vit.init(KEY, images)
    assert vit.apply(variables, images).shape == (2, 32)
    params = variables["params"]
    assert ("pos_embedding" in params) == (posemb == "learn")
    assert ("cls" in params) == (pool == "tok") and ("map_head" in params) == (pool == "map")
    assert ("stem0" in params) == (stem == "conv")


def test_vit_rejects_bad_sizes():
    images = jnp.zeros((1, 30, 30, 3))
    with pytest.raises(ValueError, match="not divisible by patch_size 8"):
        ViT(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64).init(KEY, images)
    with pytest.raises(ValueError, match="power of 2"):
        ViT(patch_size=6, width=32, depth=1, num_heads=2, mlp_dim=64, stem="conv").init(KEY, jnp.zeros((1, 36, 36, 3)))


def test_sincos_2d_is_a_distinct_code_per_position():
    pe = sincos_2d(4, 4, 32)
    assert pe.shape == (16, 32) and np.abs(pe).max() <= 1.0
    assert len({tuple(np.round(r, 5)) for r in pe}) == 16


def text_model(**kw):
    return TextTransformer(vocab_size=20, width=16, depth=2, num_heads=2, mlp_dim=32, max_len=8, **kw)


def test_causal_text_tower_ignores_later_tokens():
    a = jnp.array([[5, 6, 7, 1, 0, 0, 0, 0]])
    b = a.at[0, 2].set(9)  # change a token after position 0
    for causal, same in ((True, True), (False, False)):
        m = text_model(causal=causal, pool="first")
        v = m.init(KEY, a)
        assert np.allclose(m.apply(v, a), m.apply(v, b), atol=1e-6) == same


def test_eos_pooling_ignores_padding():
    m = text_model(pool="eos")
    short = jnp.array([[5, 6, 1, 0, 0, 0]])
    v = m.init(KEY, short)
    longer_pad = jnp.array([[5, 6, 1, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(m.apply(v, short), m.apply(v, longer_pad), atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the model's max_len 8"):
        m.apply(v, jnp.ones((1, 9), jnp.int32))
