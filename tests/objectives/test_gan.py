"""GAN losses, the adaptive weight and the perceptual distance against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvlm.objectives import gan
from jvlm.objectives.perceptual import perceptual_distance

REAL, FAKE = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.5])


def test_hinge_losses():
    # relu(1 - real) = [0, 0.5, 2]; relu(1 + fake) = [0, 1, 2.5]
    assert float(gan.discriminator_loss(REAL, FAKE, "hinge")) == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert float(gan.generator_loss(FAKE, "hinge")) == pytest.approx(-(-0.5) / 3)


def test_non_saturating_losses_are_binary_cross_entropies():
    sig = jax.nn.sigmoid
    want_d = -np.mean(np.log(sig(REAL))) - np.mean(np.log(1 - sig(FAKE)))
    assert float(gan.discriminator_loss(REAL, FAKE, "non_saturating")) == pytest.approx(float(want_d), rel=1e-5)
    assert float(gan.generator_loss(FAKE, "non_saturating")) == pytest.approx(float(-np.mean(np.log(sig(FAKE)))), rel=1e-5)
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        gan.generator_loss(FAKE, "wgan")


def test_adaptive_weight_is_the_clipped_gradient_norm_ratio_and_passes_no_gradient():
    rec, g = {"k": jnp.array([3.0, 4.0])}, {"k": jnp.array([0.0, 10.0])}
    assert float(gan.adaptive_weight(rec, g)) == pytest.approx(5.0 / (10.0 + 1e-4))
    assert float(gan.adaptive_weight(rec, {"k": jnp.zeros(2)}, max_weight=100.0)) == 100.0
    grad = jax.grad(lambda s: gan.adaptive_weight({"k": s * rec["k"]}, g))(1.0)
    assert float(grad) == 0.0


def test_perceptual_distance_is_zero_for_equal_features_and_ignores_per_position_scale():
    rng = np.random.default_rng(0)
    a = [jnp.asarray(rng.normal(size=(2, 4, 4, 8))), jnp.asarray(rng.normal(size=(2, 5, 16)))]
    np.testing.assert_allclose(perceptual_distance(a, a), 0.0, atol=1e-6)
    scaled = [f * 3.0 for f in a]  # unit-normalized over channels: a positive scale changes nothing
    np.testing.assert_allclose(perceptual_distance(a, scaled), 0.0, atol=1e-6)
    b = [f + jnp.asarray(rng.normal(size=f.shape)) for f in a]
    d = np.asarray(perceptual_distance(a, b))
    assert d.shape == (2,) and np.all(d > 0) and np.all(d <= 2 * 4)  # each layer's term is at most 4
    with pytest.raises(ValueError, match="same non-zero number of feature layers"):
        perceptual_distance(a, a[:1])


def test_ramp_is_zero_before_the_start_then_linear_to_one():
    steps = jnp.arange(8)
    np.testing.assert_allclose(gan.ramp(steps, 3, 4), [0, 0, 0, 0.25, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(gan.ramp(steps, 3, 0), [0, 0, 0, 1, 1, 1, 1, 1])
