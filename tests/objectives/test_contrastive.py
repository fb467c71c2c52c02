"""Contrastive losses against their written-out definitions, and sharded == dense (values and grads)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvlm import sharding
from jvlm.objectives.contrastive import (sharded_sigmoid_loss, sharded_softmax_contrastive_loss,
                                         sigmoid_hard_negative_loss, sigmoid_loss, softmax_contrastive_loss)


def embeddings(n=16, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.float32)


def test_sigmoid_loss_matches_the_siglip_formula():
    x, y = embeddings()
    t, b = np.log(10.0), -10.0
    n = len(x)
    expected = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            expected -= np.log(1.0 / (1.0 + np.exp(-z * (np.exp(t) * x[i] @ y[j] + b))))
    expected /= n
    assert float(sigmoid_loss(x, y, t, b)) == pytest.approx(expected, rel=1e-5)


def test_softmax_loss_matches_the_clip_formula_and_clamps_the_temperature():
    x, y = embeddings()
    t = np.log(1 / 0.07)
    logits = np.exp(t) * x @ y.T
    i2t = -np.mean([logits[i, i] - np.log(np.exp(logits[i]).sum()) for i in range(len(x))])
    t2i = -np.mean([logits[i, i] - np.log(np.exp(logits[:, i]).sum()) for i in range(len(x))])
    assert float(softmax_contrastive_loss(x, y, t)) == pytest.approx((i2t + t2i) / 2, rel=1e-5)
    assert float(softmax_contrastive_loss(x, y, 9.0)) == pytest.approx(float(softmax_contrastive_loss(x, y, np.log(100))))


def hard_negatives(n=16, k=3, d=8, seed=1):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k, d))
    valid = rng.random((n, k)) < 0.7
    return (z / np.linalg.norm(z, axis=-1, keepdims=True)).astype(np.float32), valid


def test_sigmoid_hard_negative_term_matches_its_formula_and_skips_invalid_slots():
    x, _ = embeddings()
    zneg, valid = hard_negatives()
    t, b = np.log(10.0), -3.0
    expected = 0.0
    for i in range(len(x)):
        for k in range(zneg.shape[1]):
            if valid[i, k]:
                expected -= np.log(1.0 / (1.0 + np.exp(np.exp(t) * x[i] @ zneg[i, k] + b)))
    expected /= len(x)
    assert float(sigmoid_hard_negative_loss(x, zneg, t, b, valid)) == pytest.approx(expected, rel=1e-5)
    assert float(sigmoid_hard_negative_loss(x, zneg, t, b, np.zeros_like(valid))) == 0.0


def test_softmax_hard_negatives_join_only_their_own_images_row():
    x, y = embeddings()
    zneg, valid = hard_negatives()
    t = np.log(1 / 0.07)
    s = np.exp(t)
    logits = s * x @ y.T
    i2t = -np.mean([logits[i, i] - np.log(np.exp(logits[i]).sum() + np.exp(s * zneg[i][valid[i]] @ x[i]).sum())
                    for i in range(len(x))])
    t2i = -np.mean([logits[i, i] - np.log(np.exp(logits[:, i]).sum()) for i in range(len(x))])
    got = softmax_contrastive_loss(x, y, t, zneg=zneg, neg_valid=valid)
    assert float(got) == pytest.approx((i2t + t2i) / 2, rel=1e-5)
    none_valid = softmax_contrastive_loss(x, y, t, zneg=zneg, neg_valid=np.zeros_like(valid))
    assert float(none_valid) == pytest.approx(float(softmax_contrastive_loss(x, y, t)), rel=1e-6)


MESHES = [({"data": 1}, "data"), ({"data": 2}, "data"), ({"data": 4}, "data"), ({"data": 8}, "data"),
          ({"data": 4, "fsdp": 2}, ("data", "fsdp"))]


def grads_of(loss, x, y, t, b):
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(x, y, t, b)


def assert_matches_dense(loss, x, y, t, b):
    ref_v, ref_g = grads_of(sigmoid_loss, x, y, t, b)
    v, g = grads_of(loss, x, y, t, b)
    np.testing.assert_allclose(float(v), float(ref_v), rtol=1e-5)
    for got, ref in zip(g, ref_g):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-6)
    return ref_v, ref_g


@pytest.mark.parametrize("mesh_shape, axis", MESHES)
@pytest.mark.parametrize("impl", ["ring", "all_gather"])
def test_sharded_sigmoid_equals_dense_values_and_gradients(mesh_shape, axis, impl):
    n_dev = int(np.prod(list(mesh_shape.values())))
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[:n_dev])
    x, y = embeddings(n=32, d=16, seed=n_dev)
    t, b = jnp.float32(np.log(10.0)), jnp.float32(-10.0)
    x_s, y_s = (jax.device_put(a, sharding.batch_sharding(mesh, 2)) for a in (x, y))
    if isinstance(axis, tuple):  # spread over both mesh axes
        assert x_s.sharding.spec[0] == ("data", "fsdp")
    _, ref_g = assert_matches_dense(lambda *a: sharded_sigmoid_loss(*a, mesh=mesh, axis=axis, impl=impl),
                                    x_s, y_s, t, b)
    assert float(jnp.abs(ref_g[1]).sum()) > 0  # the text embeddings really receive a gradient


def test_ring_gradient_with_a_learned_bias_away_from_init():
    # Near the init (b = -10) almost every pair is "easy"; check a regime where positives matter too.
    mesh = sharding.make_mesh({"data": 8})
    x, y = embeddings(n=64, d=8, seed=3)
    t, b = jnp.float32(2.0), jnp.float32(0.5)
    assert_matches_dense(lambda *a: sharded_sigmoid_loss(*a, mesh=mesh, impl="ring"), x, y, t, b)


@pytest.mark.parametrize("mesh_shape, axis", [MESHES[3], MESHES[4]])
def test_sharded_softmax_equals_dense(mesh_shape, axis):
    mesh = sharding.make_mesh(mesh_shape)
    x, y = embeddings(n=32, d=16)
    t = jnp.float32(np.log(1 / 0.07))
    ref = jax.value_and_grad(softmax_contrastive_loss, argnums=(0, 1, 2))(x, y, t)
    got = jax.jit(jax.value_and_grad(lambda *a: sharded_softmax_contrastive_loss(*a, mesh=mesh, axis=axis),
                                     argnums=(0, 1, 2)))(x, y, t)
    np.testing.assert_allclose(float(got[0]), float(ref[0]), rtol=1e-5)
    for a, r in zip(got[1], ref[1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4, atol=1e-6)


def test_ring_with_several_row_tiles_per_block(monkeypatch):
    from jvlm.objectives import contrastive as C
    monkeypatch.setattr(C, "TILE_ELEMENTS", 16)  # b = 16 rows per device -> tiles of 1 row
    assert C._tile_rows(16) == 1
    mesh = sharding.make_mesh({"data": 4}, jax.devices()[:4])
    x, y = embeddings(n=64, d=8, seed=5)
    t, b = jnp.float32(2.0), jnp.float32(0.5)
    assert_matches_dense(lambda *a: sharded_sigmoid_loss(*a, mesh=mesh, impl="ring"), x, y, t, b)
    np.testing.assert_allclose(float(jax.jit(lambda *a: sharded_sigmoid_loss(*a, mesh=mesh))(x, y, t, b)),
                               float(sigmoid_loss(x, y, t, b)), rtol=1e-5)  # the forward-only path too


def test_ring_needs_a_fraction_of_all_gathers_temporary_memory():
    # Compile only (XLA memory analysis); the 16384-example figures are in experiments.bench_loss.
    mesh = sharding.make_mesh({"data": 8})
    spec = jax.ShapeDtypeStruct((8192, 64), jnp.float32, sharding=sharding.batch_sharding(mesh, 2))
    scalar = jax.ShapeDtypeStruct((), jnp.float32)

    def temp_bytes(impl):
        f = jax.jit(jax.value_and_grad(lambda *a: sharded_sigmoid_loss(*a, mesh=mesh, impl=impl), argnums=(0, 1)))
        return f.lower(spec, spec, scalar, scalar).compile().memory_analysis().temp_size_in_bytes

    ring, gathered = temp_bytes("ring"), temp_bytes("all_gather")
    assert ring * 4 <= gathered, (ring, gathered)
