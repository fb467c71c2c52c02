"""VAE objectives against their definitions: closed-form and Monte-Carlo KL, the reparameterized sample's
moments and gradients, and the discretized Gaussian as a probability distribution over 256 levels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvlm.objectives import vae

LEVELS = (np.arange(256) / 127.5 - 1.0).astype(np.float32)  # the 8-bit values on the [-1, 1] scale


def test_kl_is_zero_at_the_prior_and_matches_the_closed_form():
    np.testing.assert_allclose(vae.gaussian_kl(jnp.zeros((3, 4, 4, 2)), jnp.zeros((3, 4, 4, 2))), 0.0, atol=1e-7)
    # One dim with mean 1, variance e: 0.5 * (1 + e - 1 - 1) = 0.5 * (e - 1); a second dim at the prior.
    mean = jnp.asarray([[1.0, 0.0]])
    logvar = jnp.asarray([[1.0, 0.0]])
    np.testing.assert_allclose(vae.gaussian_kl(mean, logvar), [0.5 * (math.e - 1)], rtol=1e-6)


def test_kl_matches_a_monte_carlo_estimate():
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)) * 0.5
    z = mean + np.exp(logvar / 2) * rng.normal(size=(200_000, 2, 3))
    log_q = -0.5 * ((z - mean) ** 2 / np.exp(logvar) + logvar + np.log(2 * np.pi))
    log_p = -0.5 * (z**2 + np.log(2 * np.pi))
    mc = np.mean(np.sum(log_q - log_p, axis=-1), axis=0)
    np.testing.assert_allclose(vae.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)), mc, rtol=0.02, atol=0.01)


def test_reparameterized_sample_has_the_posterior_moments_and_passes_gradients():
    mean, logvar = jnp.full((100_000,), 0.7), jnp.full((100_000,), math.log(0.25))
    z = np.asarray(vae.reparameterize(jax.random.key(0), mean, logvar))
    assert abs(z.mean() - 0.7) < 0.01 and abs(z.var() - 0.25) < 0.01
    m, lv = jnp.asarray([0.5]), jnp.asarray([0.3])
    gm, glv = jax.grad(lambda m, lv: vae.reparameterize(jax.random.key(1), m, lv).sum(), argnums=(0, 1))(m, lv)
    eps = (vae.reparameterize(jax.random.key(1), m, lv) - m) / jnp.exp(lv / 2)
    np.testing.assert_allclose(gm, 1.0)
    np.testing.assert_allclose(glv, 0.5 * jnp.exp(lv / 2) * eps, rtol=1e-5)  # dz/dlogvar = eps * sigma / 2


@pytest.mark.parametrize("mean", [0.0, 0.37, -0.999, 1.0, 2.5])
@pytest.mark.parametrize("log_scale", [-12.0, -6.0, -3.0, 0.0, 4.0])
def test_discretized_probabilities_sum_to_one_over_the_256_levels(mean, log_scale):
    x = jnp.asarray(LEVELS)[:, None]  # 256 "examples" of one pixel
    nll = vae.discretized_gaussian_nll(x, jnp.full_like(x, mean), jnp.full_like(x, log_scale))
    assert np.all(np.isfinite(nll)) and np.all(nll >= -1e-6)
    np.testing.assert_allclose(np.sum(np.exp(-np.asarray(nll, np.float64))), 1.0, atol=3e-6)


@pytest.mark.parametrize("scale", [0.05, 0.1, 0.3])
def test_discretized_nll_tends_to_density_times_bin_width_in_the_interior(scale):
    mean = 0.05
    x = LEVELS[np.abs(LEVELS - mean) < 3 * scale][:, None]   # within 3 scales: interior bins only
    nll = vae.discretized_gaussian_nll(jnp.asarray(x), jnp.full(x.shape, mean), jnp.full(x.shape, math.log(scale)))
    log_density = -0.5 * ((x[:, 0] - mean) / scale) ** 2 - math.log(scale * math.sqrt(2 * math.pi))
    w = 2 / 255 / scale  # bin width in scales; the midpoint rule errs by ~ w^2 (z^2 - 1) / 24
    np.testing.assert_allclose(-np.asarray(nll), log_density + math.log(2 / 255), atol=w**2 / 2)


def _log_phi_diff_f64(lo, hi):
    # log(Phi(hi) - Phi(lo)), both arguments <= 0 here, where erfc is accurate in float64
    return math.log(0.5 * (math.erfc(-hi / math.sqrt(2)) - math.erfc(-lo / math.sqrt(2))))


@pytest.mark.parametrize("log_scale", [-7.0, -4.0, -1.0, 1.5])
def test_discretized_nll_is_accurate_in_the_tails_and_symmetric(log_scale):
    mean = 0.6
    x = jnp.asarray(LEVELS[1:255])   # interior levels below and above the mean
    s = math.exp(log_scale)
    nll = vae.discretized_gaussian_nll(x[:, None], jnp.full((254, 1), mean), jnp.full((254, 1), log_scale))
    for xi, got in zip(np.asarray(x, np.float64), np.asarray(nll)):
        c = -abs(xi - mean)  # mirror into the lower tail: the same mass
        if abs(c) / s < 30:  # beyond, the float64 reference itself underflows
            expected = -_log_phi_diff_f64((c - 1 / 255) / s, (c + 1 / 255) / s)
            np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


def test_discretized_nll_gradients_are_finite_at_extreme_scales():
    x = jnp.asarray(LEVELS)[:, None]
    for log_scale in (-15.0, 8.0):
        g = jax.grad(lambda m, s: vae.discretized_gaussian_nll(x, m, s).sum(), argnums=(0, 1))(
            jnp.full_like(x, 0.3), jnp.full_like(x, log_scale))
        assert all(np.all(np.isfinite(a)) for a in g)


def test_elbo_and_bits_per_dim_formulas():
    nll, kl = jnp.asarray([1000.0, 2000.0]), jnp.asarray([50.0, 10.0])
    np.testing.assert_allclose(vae.negative_elbo(nll, kl), [1050.0, 2010.0])
    np.testing.assert_allclose(vae.negative_elbo(nll, kl, beta=0.5), [1025.0, 2005.0])
    d = 32 * 32 * 3
    np.testing.assert_allclose(vae.bits_per_dim(vae.negative_elbo(nll, kl), d),
                               np.asarray([1050.0, 2010.0]) / (d * np.log(2)), rtol=1e-6)
    # A uniform distribution over 256 levels costs exactly 8 bits per dimension.
    np.testing.assert_allclose(vae.bits_per_dim(jnp.asarray(d * math.log(256.0)), d), 8.0, rtol=1e-6)
