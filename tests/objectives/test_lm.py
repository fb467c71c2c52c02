"""The chunked cross-entropy against the dense one (values and gradients), with padding chunks, a soft-cap and
positions of weight 0; and its written-out definition on a tiny case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvlm.objectives.lm import chunked_cross_entropy, dense_cross_entropy


def problem(seed=0, b=2, length=11, d=8, v=37):
    k = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k[0], (b, length, d))
    head = jax.random.normal(k[1], (d, v)) * 0.5
    targets = jax.random.randint(k[2], (b, length), 0, v)
    weights = (jax.random.uniform(k[3], (b, length)) > 0.3).astype(jnp.float32)
    return hidden, head, targets, weights


@pytest.mark.parametrize("chunk,softcap", [(4, 0.0), (3, 5.0), (11, 0.0)])
def test_chunked_equals_dense_in_value_and_gradient(chunk, softcap):
    hidden, head, targets, weights = problem()
    f = lambda fn: lambda h, w: fn(h, w, targets, weights, softcap=softcap) if fn is dense_cross_entropy else \
        fn(h, w, targets, weights, chunk=chunk, softcap=softcap)  # noqa: E731
    dense, chunked = f(dense_cross_entropy), f(chunked_cross_entropy)
    for a, b in zip(dense(hidden, head), jax.jit(chunked)(hidden, head)):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    mean = lambda fn: lambda h, w: fn(h, w).loss_sum / fn(h, w).weight  # noqa: E731
    g_dense = jax.grad(mean(dense), argnums=(0, 1))(hidden, head)
    g_chunk = jax.jit(jax.grad(mean(chunked), argnums=(0, 1)))(hidden, head)
    for a, b in zip(g_dense, g_chunk):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_dense_cross_entropy_is_its_definition():
    hidden, head, targets, weights = problem(b=1, length=3, d=2, v=4)
    out = dense_cross_entropy(hidden, head, targets, weights)
    logits = np.asarray(hidden)[0] @ np.asarray(head)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    t, w = np.asarray(targets)[0], np.asarray(weights)[0]
    np.testing.assert_allclose(out.loss_sum, -(np.log(p[np.arange(3), t]) * w).sum(), rtol=1e-5)
    assert float(out.weight) == w.sum()
    assert float(out.correct) == float(((logits.argmax(-1) == t) * w).sum())
