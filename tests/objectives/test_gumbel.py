"""The Gumbel-softmax relaxation, KL to the uniform prior and the schedules against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvlm.objectives import gumbel

LOGITS = jnp.asarray([2.0, 0.5, -1.0, 0.0, 1.0])


def draws(n, temperature=1.0, hard=False, seed=0, logits=LOGITS):
    return gumbel.gumbel_softmax(jax.random.PRNGKey(seed), jnp.broadcast_to(logits, (n, logits.shape[-1])),
                                 temperature, hard=hard)


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_argmax_of_samples_is_distributed_as_softmax_of_logits(temperature):
    n = 40_000
    counts = np.bincount(np.argmax(np.asarray(draws(n, temperature)), axis=-1), minlength=5)
    p = np.asarray(jax.nn.softmax(LOGITS))
    np.testing.assert_allclose(counts / n, p, atol=5 * np.sqrt(p * (1 - p) / n).max())  # Gumbel-max trick


def test_samples_are_distributions_and_approach_one_hot_as_temperature_falls():
    gaps = []
    for t in (1.0, 0.3, 0.1, 0.01):
        y = np.asarray(draws(2000, t))  # the same noise at every temperature
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(y.argmax(-1), np.asarray(draws(2000, 1.0)).argmax(-1))
        gaps.append(np.mean(1.0 - y.max(-1)))
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.01


def test_hard_samples_are_exactly_one_hot_with_the_soft_gradient():
    y_soft, y_hard = draws(500, 0.5), draws(500, 0.5, hard=True)
    np.testing.assert_array_equal(y_hard, jax.nn.one_hot(jnp.argmax(y_soft, -1), 5))
    w = jnp.asarray(np.random.default_rng(0).normal(size=(500, 5)), jnp.float32)
    grad = lambda hard: jax.grad(lambda l: jnp.sum(w * draws(500, 0.5, hard, logits=l)))(LOGITS)  # noqa: E731
    g_soft, g_hard = grad(False), grad(True)
    np.testing.assert_allclose(g_hard, g_soft, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(np.asarray(g_soft)) > 0)


def test_gradient_with_respect_to_logits_is_the_softmax_jacobian_over_temperature():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), jnp.float32)
    rng, t = jax.random.PRNGKey(2), 0.7
    jac = jax.jacobian(lambda l: gumbel.gumbel_softmax(rng, l, t))(logits)  # [3, 5, 3, 5]
    y = np.asarray(gumbel.gumbel_softmax(rng, logits, t))
    for i in range(3):
        expected = (np.diag(y[i]) - np.outer(y[i], y[i])) / t   # dy_a / dl_b = y_a (d_ab - y_b) / tau
        np.testing.assert_allclose(jac[i, :, i], expected, rtol=1e-4, atol=1e-6)
        assert np.abs(expected).max() > 1e-3  # nonzero: the relaxation is differentiable
    np.testing.assert_array_equal(np.asarray(jac[0, :, 1]), 0)  # positions are independent


def test_kl_to_uniform_follows_its_definition():
    k = 16
    np.testing.assert_allclose(gumbel.kl_to_uniform(jnp.full((4, k), 3.0)), 0.0, atol=1e-6)
    one_hot_like = jnp.zeros((k,)).at[3].set(1e4)
    np.testing.assert_allclose(gumbel.kl_to_uniform(one_hot_like), np.log(k), rtol=1e-6)
    logits = np.random.default_rng(0).normal(size=(2, 7, k)) * 3
    q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(gumbel.kl_to_uniform(jnp.asarray(logits, jnp.float32)),
                               np.sum(q * np.log(q * k), -1), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(jax.grad(lambda l: gumbel.kl_to_uniform(l))(one_hot_like)))


def test_temperature_schedule_is_exponential_from_start_to_end_and_jittable():
    sched = jax.jit(lambda s: gumbel.temperature_schedule(s, 1.0, 1 / 16, 1000))
    assert float(sched(0)) == pytest.approx(1.0)
    assert float(sched(1000)) == pytest.approx(1 / 16)
    assert float(sched(5000)) == pytest.approx(1 / 16)          # held after the anneal
    assert float(sched(500)) == pytest.approx(0.25)             # geometric midpoint of 1 and 1/16
    values = [float(sched(s)) for s in range(0, 1001, 100)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_linear_warmup_ramps_then_holds():
    warm = jax.jit(lambda s: gumbel.linear_warmup(s, 6.6, 100))
    assert [float(warm(s)) for s in (0, 50, 100, 1000)] == pytest.approx([0.0, 3.3, 6.6, 6.6])
    assert float(gumbel.linear_warmup(0, 6.6, 0)) == pytest.approx(6.6)  # no warm-up: the value at once
