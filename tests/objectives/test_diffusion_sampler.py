"""The full sampler on data whose optimal denoiser is known in closed form (x0 ~ N(μ, s²) per dim): every
sampler must turn noise into samples with the data's mean and spread; the loop is one compiled scan;
classifier-free guidance combines the two conditions as u + g (c − u), optionally rescaled to the conditional
output's spread; bad requests fail before tracing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvlm.objectives import diffusion as D
from jvlm.objectives.diffusion_sampler import check_request, rescale_guidance, sample, timesteps

MU, STD = 0.6, 0.3


def oracle(schedule, prediction="epsilon"):
    """E[ε | x_t] (or x0, v) for x0 ~ N(MU, STD²): x_t ~ N(√ᾱ MU, ᾱ STD² + 1 − ᾱ)."""
    def denoise(x, t, cond):
        ab = schedule.alphas_cumprod[t][:, None]
        mu = MU + (0.0 if cond is None else cond)
        var = ab * STD**2 + 1 - ab
        eps = jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mu) / var
        x0 = mu + jnp.sqrt(ab) * STD**2 * (x - jnp.sqrt(ab) * mu) / var  # not via ε: ᾱ may be ~0 (zero terminal SNR)
        return {"epsilon": eps, "x0": x0, "v": jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0}[prediction]
    return denoise


@pytest.mark.parametrize("sampler,steps,prediction,zero_snr", [
    ("ddim", 50, "epsilon", False), ("dpm++2m", 20, "v", False), ("ddpm", 1000, "epsilon", False),
    ("ddim", 100, "x0", False), ("ddim", 50, "v", True), ("dpm++2m", 20, "v", True), ("ddpm", 1000, "v", True)])
def test_samplers_reach_the_data_distribution(sampler, steps, prediction, zero_snr):
    s = D.make_schedule("linear", 1000, zero_terminal_snr=zero_snr)
    x_T = jax.random.normal(jax.random.key(0), (4000, 2))
    fn = jax.jit(lambda x, r: sample(s, oracle(s, prediction), x, r, sampler=sampler, num_steps=steps,
                                     prediction=prediction))
    x0 = np.asarray(fn(x_T, jax.random.key(1)))
    assert abs(x0.mean() - MU) < 0.02, (sampler, x0.mean())
    assert abs(x0.std() - STD) < 0.025, (sampler, x0.std())


def test_second_order_solver_beats_ddim_at_the_same_step_count():
    s = D.make_schedule("linear", 1000)
    x_T = jax.random.normal(jax.random.key(0), (4000, 1))
    err = {m: abs(float(sample(s, oracle(s), x_T, jax.random.key(1), sampler=m, num_steps=15).std()) - STD)
           for m in ("ddim", "dpm++2m")}
    assert err["dpm++2m"] < 0.5 * err["ddim"], err


def test_the_whole_loop_is_one_scan_with_one_model_call_per_step():
    s = D.make_schedule("linear", 1000)
    calls = []

    def denoise(x, t, cond):
        calls.append(1)  # Python side effect: runs once per trace, not once per step
        return oracle(s)(x, t, cond)

    jaxpr = jax.make_jaxpr(lambda x, r: sample(s, denoise, x, r, num_steps=50))(jnp.zeros((2, 3)), jax.random.key(0))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 50 and len(calls) == 1


def test_classifier_free_guidance_extrapolates_from_the_null_condition():
    s = D.make_schedule("linear", 1000)
    seen = []

    def denoise(x, t, cond):
        seen.append(x.shape[0])
        return oracle(s)(x, t, cond)

    x_T = jax.random.normal(jax.random.key(2), (2000, 1))
    cond, null = jnp.full((2000, 1), 0.2), jnp.zeros((2000, 1))
    guided = np.asarray(sample(s, denoise, x_T, jax.random.key(3), guidance=1.0, cond=cond))
    assert abs(guided.mean() - (MU + 0.2)) < 0.02
    g3 = sample(s, denoise, x_T, jax.random.key(3), num_steps=2, guidance=3.0, cond=cond, uncond=null)
    assert seen[-1] == 4000  # one batched call for both conditions
    # one step by hand: u + 3 (c − u) with the same oracle
    ts = timesteps(1000, 2)
    out_c, out_u = (oracle(s)(x_T, jnp.full((2000,), ts[0]), c) for c in (cond, null))
    x1 = D.ddim_step(s, x_T, int(ts[0]), int(ts[1]), out_u + 3 * (out_c - out_u))
    out_c, out_u = (oracle(s)(x1, jnp.full((2000,), ts[1]), c) for c in (cond, null))
    np.testing.assert_allclose(g3, D.ddim_step(s, x1, int(ts[1]), -1, out_u + 3 * (out_c - out_u)), rtol=1e-4, atol=1e-4)


def test_guidance_rescale_matches_each_example_to_the_conditional_spread():
    rng = np.random.default_rng(0)
    scale = np.array([0.5, 1.0, 4.0])[:, None, None]  # examples of different spreads: the std is per example
    c, u = (jnp.asarray(rng.normal(size=(3, 4, 5)) * scale, jnp.float32) for _ in range(2))
    guided = u + 3.0 * (c - u)
    full = np.asarray(rescale_guidance(guided, c, 1.0))
    np.testing.assert_allclose(full.std(axis=(1, 2)), np.asarray(c).std(axis=(1, 2)), rtol=1e-5)
    ratio = full / np.asarray(guided)  # a per-example rescaling: the direction is kept
    np.testing.assert_allclose(ratio, ratio[:, :1, :1] * np.ones_like(ratio), rtol=1e-5)
    np.testing.assert_allclose(rescale_guidance(guided, c, 0.0), guided)
    np.testing.assert_allclose(rescale_guidance(guided, c, 0.7), 0.7 * full + 0.3 * np.asarray(guided), rtol=1e-5, atol=1e-6)

    # inside the sampler: one DDIM step from T-1 to 0 with x0-prediction returns the rescaled guided output; the
    # condition shifts each coordinate differently, so guidance widens the spread that rescaling then narrows
    s = D.make_schedule("linear", 1000)
    x_T = jax.random.normal(jax.random.key(4), (8, 6))
    cond, null = jnp.tile(jnp.linspace(-1.0, 1.0, 6), (8, 1)), jnp.zeros((8, 6))
    run = lambda phi: sample(s, oracle(s, "x0"), x_T, jax.random.key(5), num_steps=1, guidance=3.0, cond=cond,  # noqa: E731
                             uncond=null, prediction="x0", guidance_rescale=phi)
    t = jnp.full((8,), 999)
    oc, ou = oracle(s, "x0")(x_T, t, cond), oracle(s, "x0")(x_T, t, null)
    expect = D.ddim_step(s, x_T, 999, -1, rescale_guidance(ou + 3 * (oc - ou), oc, 0.7), prediction="x0")
    np.testing.assert_allclose(run(0.7), expect, rtol=1e-5, atol=1e-5)
    spread = lambda x: float(np.asarray(x).std(axis=1).mean())  # noqa: E731
    assert spread(run(0.0)) > 2.5 * spread(run(1.0)) and spread(run(1.0)) == pytest.approx(spread(oc), rel=1e-3)


def test_self_conditioning_feeds_each_step_the_previous_guided_x0_estimate():
    s = D.make_schedule("linear", 1000)
    x_T = jax.random.normal(jax.random.key(6), (4, 5))
    cond, null = jnp.ones((4, 5)), jnp.zeros((4, 5))
    seen = []

    def denoise(x, t, c, x0_prev):  # an ε-prediction that leans on its previous estimate
        return 0.3 * x + 0.5 * x0_prev + c

    def reference():  # the loop written out: zeros first, then the x0 of the previous step's guided output
        x, x0_prev = x_T, jnp.zeros_like(x_T)
        ts = timesteps(1000, 5)
        for t, tp in zip(ts, list(ts[1:]) + [-1]):
            c, u = denoise(x, t, cond, x0_prev), denoise(x, t, null, x0_prev)
            seen.append(x0_prev)
            out = u + 2.0 * (c - u)
            x0_prev = D.predict_x0_eps(s, x, t, out)[0]
            x = D.ddim_step(s, x, t, tp, out)
        return x

    run = lambda sc: sample(s, denoise if sc else lambda x, t, c: denoise(x, t, c, 0.0), x_T,  # noqa: E731
                            jax.random.key(0), num_steps=5, guidance=2.0, cond=cond, uncond=null, self_condition=sc)
    np.testing.assert_allclose(run(True), reference(), rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(seen[0]).max()) == 0 and float(jnp.abs(seen[1]).max()) > 0
    assert float(jnp.abs(run(True) - run(False)).max()) > 1e-3  # the estimate reaches the model


def test_bad_requests_fail_with_the_fix():
    assert list(timesteps(1000, 4)) == [999, 666, 333, 0]
    ab = np.asarray(D.make_schedule("linear", 1000).alphas_cumprod)
    for n in (2, 20, 1000):
        ts = timesteps(1000, n, "logsnr", ab)
        assert ts[0] == 999 and ts[-1] == 0 and len(set(ts)) == n and (np.diff(ts) < 0).all()
    with pytest.raises(ValueError, match="schedule has 1000"):
        check_request(1000, "ddim", 1001, 1.0, True)
    with pytest.raises(ValueError, match="conditional model"):
        check_request(1000, "ddim", 50, 3.0, False)
    with pytest.raises(ValueError, match="takes all 1000 steps"):
        check_request(1000, "ddpm", 50, 1.0, False)
    with pytest.raises(ValueError, match="unknown sampler"):
        check_request(1000, "euler", 50, 1.0, False)
    with pytest.raises(ValueError, match=r"guidance_rescale=1.5 is a mixing weight: use a value in \[0, 1\]"):
        check_request(1000, "ddim", 50, 3.0, True, 1.5)
