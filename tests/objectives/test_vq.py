"""Vector quantization and FSQ against their definitions: values, which parameters get which gradient,
and statistics on a sharded batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jvlm import sharding
from jvlm.objectives import vq


def data(n=64, k=16, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jnp.asarray(rng.normal(size=(k, d)), jnp.float32)


def brute_force(z, codebook):
    return np.argmin(((np.asarray(z)[:, None] - np.asarray(codebook)[None]) ** 2).sum(-1), axis=-1)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_search_equals_the_full_argmin(chunk):
    z, codebook = data(n=200, k=37)
    np.testing.assert_array_equal(vq.nearest_code(z, codebook, chunk), brute_force(z, codebook))


def test_large_codebook_search_holds_only_a_chunk_of_distances():
    z = jax.ShapeDtypeStruct((65536, 8), jnp.float32)
    book = jax.ShapeDtypeStruct((8192, 8), jnp.float32)
    temp = jax.jit(vq.nearest_code).lower(z, book).compile().memory_analysis().temp_size_in_bytes
    assert temp < 65536 * 8192 * 4 / 4, temp  # the full [N, K] f32 matrix would be 2 GiB


def test_forward_values_and_losses_follow_the_definitions():
    z, codebook = data()
    out = vq.vector_quantize(z, codebook, beta=0.25)
    idx = brute_force(z, codebook)
    zq = np.asarray(codebook)[idx]
    np.testing.assert_array_equal(out.indices, idx)
    np.testing.assert_allclose(out.quantized, zq, rtol=1e-6, atol=1e-6)      # forward value is z_q
    mse = np.mean((np.asarray(z) - zq) ** 2)
    np.testing.assert_allclose(out.codebook_loss, mse, rtol=1e-6)
    np.testing.assert_allclose(out.commitment_loss, 0.25 * mse, rtol=1e-6)
    counts = np.bincount(idx, minlength=16)
    p = counts / counts.sum()
    np.testing.assert_allclose(out.perplexity, np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))), rtol=1e-5)
    assert out.usage == pytest.approx(np.mean(counts > 0))


def test_straight_through_passes_the_gradient_to_the_encoder_and_none_to_the_codebook():
    z, codebook = data()
    w = jnp.asarray(np.random.default_rng(1).normal(size=z.shape), jnp.float32)
    f = lambda z, c: jnp.sum(w * vq.vector_quantize(z, c).quantized ** 2)  # noqa: E731
    gz, gc = jax.grad(f, argnums=(0, 1))(z, codebook)
    zq = np.asarray(codebook)[brute_force(z, codebook)]
    np.testing.assert_allclose(gz, 2 * np.asarray(w) * zq, rtol=1e-5)  # d/dz of f evaluated at z_q
    np.testing.assert_array_equal(gc, 0)


def test_codebook_loss_moves_only_codes_and_commitment_only_the_encoder():
    z, codebook = data()
    n, d = z.shape
    idx = brute_force(z, codebook)
    zq = np.asarray(codebook)[idx]
    gz, gc = jax.grad(lambda z, c: vq.vector_quantize(z, c).codebook_loss, argnums=(0, 1))(z, codebook)
    np.testing.assert_array_equal(gz, 0)
    expected = np.zeros_like(np.asarray(codebook))
    np.add.at(expected, idx, 2 * (zq - np.asarray(z)) / (n * d))
    np.testing.assert_allclose(gc, expected, rtol=1e-5, atol=1e-7)
    gz, gc = jax.grad(lambda z, c: vq.vector_quantize(z, c, beta=0.25).commitment_loss, argnums=(0, 1))(z, codebook)
    np.testing.assert_array_equal(gc, 0)
    np.testing.assert_allclose(gz, 0.25 * 2 * (np.asarray(z) - zq) / (n * d), rtol=1e-5, atol=1e-7)


def test_cosine_codes_compare_directions():
    z, codebook = data()
    out = vq.vector_quantize(3.0 * z, codebook, cosine=True)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_array_equal(out.indices, brute_force(unit(np.asarray(z)), unit(np.asarray(codebook))))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.quantized), axis=-1), 1.0, rtol=1e-4)


def test_a_codebook_dimension_that_does_not_match_the_encoder_is_named():
    with pytest.raises(ValueError, match="encoder output has dimension 4 but the codebook's codes have 8"):
        vq.vector_quantize(jnp.zeros((2, 4)), jnp.zeros((16, 8)))


def test_ema_update_follows_its_definition():
    z, codebook = data()
    state = vq.ema_init(codebook)
    idx = vq.nearest_code(z, codebook)
    new_state, new_book = vq.ema_update(state, z, idx, decay=0.9, eps=1e-5)
    counts = np.bincount(np.asarray(idx), minlength=16)
    sums = np.zeros((16, 4))
    np.add.at(sums, np.asarray(idx), np.asarray(z))
    size = 0.9 * 1.0 + 0.1 * counts
    embed = 0.9 * np.asarray(codebook) + 0.1 * sums
    smoothed = (size + 1e-5) / (size.sum() + 16 * 1e-5) * size.sum()
    np.testing.assert_allclose(new_state.cluster_size, size, rtol=1e-6)
    np.testing.assert_allclose(new_book, embed / smoothed[:, None], rtol=1e-5)


def test_dead_codes_restart_at_encoder_outputs():
    z, codebook = data()
    usage = jnp.asarray([1.0] * 8 + [0.0] * 8)
    book, n = vq.restart_dead_codes(codebook, usage, z, jax.random.PRNGKey(0))
    assert int(n) == 8
    np.testing.assert_array_equal(book[:8], codebook[:8])
    for row in np.asarray(book[8:]):
        assert np.any(np.all(np.isclose(row, np.asarray(z)), axis=-1))


def test_kmeans_finds_well_separated_clusters():
    centres = jnp.asarray([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    noise = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (4, 50, 2))
    z = (centres[:, None] + noise).reshape(-1, 2)
    found = np.asarray(vq.kmeans(z, 4, jax.random.PRNGKey(2), iters=10))
    # Every true centre has a centroid at its cluster's mean (order is arbitrary).
    means = np.asarray(jnp.mean(centres[:, None] + noise, axis=1))
    for m in means:
        assert np.min(np.linalg.norm(found - m, axis=-1)) < 1e-4


def test_statistics_and_ema_sums_cover_the_whole_sharded_batch():
    z, codebook = data(n=256)
    mesh = sharding.make_mesh({"data": 8})
    zs = jax.device_put(z, NamedSharding(mesh, P("data", None)))

    def stats(z):
        out = vq.vector_quantize(z, codebook)
        _, book = vq.ema_update(vq.ema_init(codebook), z, out.indices)
        return out.counts, out.perplexity, out.usage, book

    one = jax.jit(stats)(z)
    eight = jax.jit(stats)(zs)
    assert len(zs.sharding.device_set) == 8
    for a, b in zip(one, eight):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert float(one[0].sum()) == 256  # counts are over the global batch, not one shard


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (7, 5, 3), (4, 4)])
def test_fsq_rounds_to_its_grid_and_indices_round_trip(levels):
    z = jnp.asarray(np.random.default_rng(0).normal(size=(500, len(levels))) * 3, jnp.float32)
    codes, idx = vq.fsq(z, levels)
    half = np.asarray(levels) // 2
    scaled = np.asarray(codes) * half
    np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-5)     # on the integer grid
    assert np.all(np.abs(np.asarray(codes)) <= 1 + 1e-6)
    for c, lv in enumerate(levels):  # exactly L_c values per channel
        assert len(np.unique(np.round(scaled[:, c]))) <= lv
    assert 0 <= int(idx.min()) and int(idx.max()) < np.prod(levels)
    np.testing.assert_allclose(vq.fsq_decode_indices(idx, levels), codes, atol=1e-6)


def test_fsq_gradient_is_straight_through_the_rounding():
    levels = (8, 5, 5, 5)
    z = jnp.asarray(np.random.default_rng(0).normal(size=(10, 4)), jnp.float32)
    g = jax.grad(lambda z: jnp.sum(vq.fsq(z, levels)[0]))(z)
    lv = np.asarray(levels, np.float32)
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = np.where(np.asarray(levels) % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half_l)
    expected = (1 - np.tanh(np.asarray(z) + shift) ** 2) * half_l / (np.asarray(levels) // 2)
    np.testing.assert_allclose(g, expected, rtol=1e-4)  # d(bound)/dz / half_width: rounding is identity
