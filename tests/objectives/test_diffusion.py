"""Diffusion math against closed forms computed independently here (float64 numpy): schedules, q_sample,
the posterior by Bayes' rule, DDPM's Algorithm 2 mean, DDIM's marginal property, DPM-Solver++(2M), the
variational bound's terms, including the edge steps t = 0 and t = T-1."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvlm.objectives import diffusion as D
from jvlm.objectives import vae

T = 1000
EDGES = (0, 1, 500, T - 1)


@pytest.fixture(scope="module")
def lin():
    return D.make_schedule("linear", T)


def _np(s):
    return {k: np.asarray(v, np.float64) for k, v in s._asdict().items()}


def _exact_linear():
    """The linear schedule in float64 from its definition (the stored one is float32)."""
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    return {"betas": betas, "alphas": 1 - betas, "alphas_cumprod": ab,
            "posterior_variance": betas * (1 - np.append(1.0, ab[:-1])) / (1 - ab)}


def test_linear_and_scaled_linear_schedules():
    s = _np(D.make_schedule("linear", T))
    assert s["betas"].shape == (T,)
    np.testing.assert_allclose(s["betas"][[0, -1]], [1e-4, 0.02], rtol=1e-6)
    betas = np.linspace(1e-4, 0.02, T)
    np.testing.assert_allclose(s["alphas_cumprod"], np.cumprod(1 - betas), rtol=1e-5)
    np.testing.assert_allclose(s["alphas_cumprod_prev"], np.append(1.0, np.cumprod(1 - betas)[:-1]), rtol=1e-5)
    sl = _np(D.make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012))
    np.testing.assert_allclose(np.sqrt(sl["betas"]), np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000), rtol=1e-6)


def test_zero_terminal_snr_rescales_root_alpha_bar_affinely_to_zero_at_the_last_step():
    kw = dict(beta_start=0.00085, beta_end=0.012)
    root = np.sqrt(_np(D.make_schedule("scaled_linear", T, **kw))["alphas_cumprod"])
    z = _np(D.make_schedule("scaled_linear", T, zero_terminal_snr=True, **kw))
    # Lin et al.'s Algorithm 1 in float64: √ᾱ shifted by its last value, scaled to keep its first.
    expected = (root - root[-1]) * root[0] / (root[0] - root[-1])
    np.testing.assert_allclose(np.sqrt(z["alphas_cumprod"][:-1]), expected[:-1], rtol=1e-4, atol=1e-7)
    assert z["alphas_cumprod"][-1] == pytest.approx(2.0 ** -24)   # zero signal, finite log SNR
    assert root[-1] == pytest.approx(0.068, abs=0.001)             # what SD's schedule leaves at t = T-1
    np.testing.assert_allclose(z["alphas_cumprod"], np.cumprod(1 - z["betas"]), rtol=1e-4, atol=1e-12)
    for kind in ("linear", "cosine", "scaled_linear"):  # the linear one's ᾱ_{T−2} is already below 2^−24
        z = _np(D.make_schedule(kind, T, zero_terminal_snr=True))
        assert all(np.isfinite(v).all() for v in z.values()), kind
        assert (np.diff(z["alphas_cumprod"]) < 0).all() and (z["betas"] > 0).all() and (z["betas"] <= 1).all(), kind
        assert 0 < z["alphas_cumprod"][-1] <= 2.0 ** -24, kind


def test_a_schedule_first_built_inside_a_trace_is_concrete_and_reusable_outside_it():
    # A task caches its schedule; the first read may come from inside the jitted train step.
    box = {}

    @jax.jit
    def first_use(x):
        box["s"] = D.make_schedule("linear", 100)
        return x * box["s"].betas[3]

    first_use(1.0)
    s = box["s"]
    assert not isinstance(s.alphas_cumprod, jax.core.Tracer)
    np.testing.assert_allclose(jax.jit(lambda x: x * s.alphas[0])(2.0), 2.0 * (1 - 1e-4), rtol=1e-6)


def test_cosine_schedule_telescopes_to_the_cosine_alpha_bar():
    s = _np(D.make_schedule("cosine", T))
    f = lambda t: np.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    t = np.arange(T)
    unclipped = s["betas"] < 0.999
    assert unclipped[:-1].all() and s["betas"].max() <= 0.999 + 1e-7
    np.testing.assert_allclose(s["alphas_cumprod"][:-1], (f(t + 1) / f(0))[:-1], rtol=1e-4)


def test_posterior_matches_bayes_rule_at_every_edge(lin):
    s = _exact_linear()
    rng = np.random.default_rng(0)
    x0, xt = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    for t in EDGES:
        mean, var, logvar = map(np.asarray, D.q_posterior(lin, jnp.asarray(x0, jnp.float32),
                                                          jnp.asarray(xt, jnp.float32), t))
        a, b, abp = s["alphas"][t], s["betas"][t], (s["alphas_cumprod"][t - 1] if t > 0 else 1.0)
        if t == 0:  # q(x_{-1} | x_0, x0) is the data itself
            np.testing.assert_allclose(mean, x0, atol=1e-5)
            assert float(var.max()) == 0.0 and np.isfinite(logvar).all()
            continue
        # N(x_t; √α x', β) N(x'; √ᾱ_prev x0, 1 − ᾱ_prev): precision-weighted combination
        prec = 1 / (1 - abp) + a / b
        np.testing.assert_allclose(var.ravel()[0], 1 / prec, rtol=1e-4)
        np.testing.assert_allclose(mean, (np.sqrt(abp) * x0 / (1 - abp) + np.sqrt(a) * xt / b) / prec,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(logvar.ravel()[0], np.log(1 / prec), rtol=1e-4)


def test_q_sample_and_every_parameterization_round_trip(lin):
    x0 = jax.random.normal(jax.random.key(0), (5, 4, 4, 3))
    eps = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.asarray([0, 1, 500, 998, T - 1])
    ab = np.asarray(lin.alphas_cumprod)[np.asarray(t)][:, None, None, None]
    xt = D.q_sample(lin, x0, t, eps)
    np.testing.assert_allclose(xt, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, rtol=1e-5, atol=1e-6)
    for p in D.PREDICTIONS:
        out = D.training_target(lin, x0, eps, t, p)
        x0_hat, eps_hat = D.predict_x0_eps(lin, xt, t, out, p)
        # x0 from ε divides by √ᾱ (0.006 at T-1): compare where that is well conditioned
        np.testing.assert_allclose(x0_hat[:4], x0[:4], rtol=1e-3, atol=2e-3)
        np.testing.assert_allclose(eps_hat[1:], eps[1:], rtol=1e-3, atol=2e-3)
    v = D.training_target(lin, x0, eps, t, "v")
    np.testing.assert_allclose(v, np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0, rtol=1e-5, atol=1e-6)


def test_q_sample_moments():
    s = D.make_schedule("cosine", 100)
    x0 = jnp.full((200_000,), 0.8)
    xt = np.asarray(D.q_sample(s, x0, 40, jax.random.normal(jax.random.key(2), x0.shape)))
    ab = float(s.alphas_cumprod[40])
    assert abs(xt.mean() - 0.8 * math.sqrt(ab)) < 0.01 and abs(xt.var() - (1 - ab)) < 0.01


def test_ddpm_step_is_algorithm_2(lin):
    s = _exact_linear()
    xt = jax.random.normal(jax.random.key(3), (3, 8))
    eps = jax.random.normal(jax.random.key(4), (3, 8))
    z = np.asarray(jax.random.normal(jax.random.key(5), (3, 8)))
    for t in EDGES:
        a, b, ab = s["alphas"][t], s["betas"][t], s["alphas_cumprod"][t]
        mean = (np.asarray(xt) - b / np.sqrt(1 - ab) * np.asarray(eps)) / np.sqrt(a)
        for variance, var in (("fixed_small", s["posterior_variance"][t]), ("fixed_large", b)):
            out = D.ddpm_step(lin, xt, t, eps, jax.random.key(5), variance=variance)
            expect = mean + (np.sqrt(var) * z if t > 0 else 0.0)  # no noise on the last step
            np.testing.assert_allclose(out, expect, rtol=2e-3, atol=2e-3)


def test_ddim_lands_on_the_forward_marginal_and_eta_one_is_ddpm(lin):
    x0 = jax.random.normal(jax.random.key(6), (4, 6))
    eps = jax.random.normal(jax.random.key(7), x0.shape)
    for t, tp in ((T - 1, 979), (500, 480), (20, 0), (5, -1), (0, -1)):
        xt = D.q_sample(lin, x0, t, eps)
        out = D.ddim_step(lin, xt, t, tp, eps)  # exact ε: the deterministic step keeps x0 and ε
        expect = x0 if tp < 0 else D.q_sample(lin, x0, tp, eps)
        np.testing.assert_allclose(out, expect, rtol=1e-3, atol=2e-3)
    xt = D.q_sample(lin, x0, 300, eps)
    with_noise = D.ddim_step(lin, xt, 300, 299, eps, eta=1.0, rng=jax.random.key(8))
    ddpm = D.ddpm_step(lin, xt, 300, eps, jax.random.key(8))
    np.testing.assert_allclose(with_noise, ddpm, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pass rng"):
        D.ddim_step(lin, xt, 300, 299, eps, eta=0.5)


def test_dpmpp_2m_first_step_is_ddim_and_second_step_follows_the_paper(lin):
    s = _np(lin)
    xt = jax.random.normal(jax.random.key(9), (2, 5))
    out = jax.random.normal(jax.random.key(10), (2, 5))
    first, x0 = D.dpmpp_2m_step(lin, xt, 800, 600, out, jnp.zeros_like(xt), -1)
    np.testing.assert_allclose(first, D.ddim_step(lin, xt, 800, 600, out), rtol=1e-4, atol=1e-5)
    last_x0 = jax.random.normal(jax.random.key(11), (2, 5))
    second, _ = D.dpmpp_2m_step(lin, xt, 600, 400, out, last_x0, 800)
    lam = lambda t: 0.5 * np.log(s["alphas_cumprod"][t] / (1 - s["alphas_cumprod"][t]))  # noqa: E731
    h, h_last = lam(400) - lam(600), lam(600) - lam(800)
    ab_t, ab_p = s["alphas_cumprod"][600], s["alphas_cumprod"][400]
    x0_np = (np.asarray(xt) - np.sqrt(1 - ab_t) * np.asarray(out)) / np.sqrt(ab_t)
    d = x0_np + (x0_np - np.asarray(last_x0)) * h / (2 * h_last)
    expect = np.sqrt((1 - ab_p) / (1 - ab_t)) * np.asarray(xt) - np.sqrt(ab_p) * (np.exp(-h) - 1) * d
    np.testing.assert_allclose(second, expect, rtol=1e-3, atol=1e-4)
    final, x0 = D.dpmpp_2m_step(lin, xt, 0, -1, out, last_x0, 20)
    np.testing.assert_allclose(final, x0)


def test_vlb_terms(lin):
    s = _np(lin)
    levels = jnp.asarray(np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3)) / 127.5 - 1, jnp.float32)
    eps = jax.random.normal(jax.random.key(12), levels.shape)
    # L_T closed form: ᾱ x0² / 2 + (1 − ᾱ − 1 − log(1 − ᾱ)) / 2 per dim
    ab = s["alphas_cumprod"][-1]
    x = np.asarray(levels, np.float64).reshape(3, -1)
    np.testing.assert_allclose(D.prior_kl(lin, levels), np.sum(0.5 * (ab * x**2 - ab - np.log(1 - ab)), -1), rtol=1e-4)
    for t in (1, 500, T - 1):  # the true x0 as the model's output: p equals q, the KL term is 0
        xt = D.q_sample(lin, levels, t, eps)
        np.testing.assert_allclose(D.vlb_term(lin, levels, xt, t, levels, "x0"), 0.0, atol=1e-3)
        assert float(D.vlb_term(lin, levels, xt, t, levels + 0.1, "x0").min()) > 0
    xt = D.q_sample(lin, levels, 0, eps)
    mean, logvar, _ = D.p_mean_variance(lin, xt, 0, eps)
    np.testing.assert_allclose(D.vlb_term(lin, levels, xt, 0, eps),
                               vae.discretized_gaussian_nll(levels, mean, 0.5 * logvar), rtol=1e-6)
    np.testing.assert_allclose(logvar.ravel()[0], np.log(s["posterior_variance"][1]), rtol=1e-5)


def test_min_snr_weights_and_loss(lin):
    t = jnp.asarray([0, 100, 999])
    snr = np.asarray(lin.alphas_cumprod)[np.asarray(t)] / (1 - np.asarray(lin.alphas_cumprod)[np.asarray(t)])
    np.testing.assert_allclose(D.loss_weight(lin, t, "epsilon", 5.0), np.minimum(snr, 5) / snr, rtol=1e-5)
    np.testing.assert_allclose(D.loss_weight(lin, t, "v", 5.0), np.minimum(snr, 5) / (snr + 1), rtol=1e-5)
    np.testing.assert_allclose(D.loss_weight(lin, t, "x0", 0.0), 1.0)
    x0, eps = jnp.ones((3, 2)), jnp.zeros((3, 2))
    np.testing.assert_allclose(D.diffusion_loss(lin, jnp.ones((3, 2)), x0, eps, t), 1.0)


def test_log_snr_normal_timesteps_follow_their_distribution(lin):
    t = np.asarray(D.sample_timesteps_log_snr(jax.random.key(0), 20000, lin, 1.0, 2.4))
    a = np.asarray(lin.alphas_cumprod, np.float64)
    log_snr = np.log(a / (1 - a))[t]
    assert t.min() >= 0 and t.max() <= 999 and t.dtype == np.int32
    # Discretization moves each draw to the next step down in log SNR (steps are < 0.2 apart in the middle).
    assert 0.8 < np.median(log_snr) < 1.0
    assert np.mean(np.abs(log_snr - 1.0) < 2.4) == pytest.approx(0.68, abs=0.02)
    assert np.median(t) == pytest.approx(np.argmax(np.log(a / (1 - a)) <= 1.0), abs=5)  # t ~ 170: SNR = e
    # t >= 500 exactly when the drawn log SNR is below log SNR_499: uniform t spends half its steps there.
    full = np.log(a / (1 - a))
    assert np.mean(t >= 500) == pytest.approx(0.5 * (1 + math.erf((full[499] - 1.0) / (2.4 * math.sqrt(2)))), abs=0.01)


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        D.make_schedule("quadratic")
    with pytest.raises(ValueError, match="unknown prediction"):
        D.training_target(D.make_schedule("linear", 10), jnp.ones(1), jnp.ones(1), 0, "score")
