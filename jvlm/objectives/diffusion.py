"""Gaussian diffusion as pure functions: schedules, the forward process, the training loss, one step of
each sampler (DDPM ancestral, DDIM, DPM-Solver++(2M)) and the variational bound in bits/dim.

Timesteps are integers t = 0..T-1 indexing the schedule arrays, as in diffusers: index t is DDPM's
t + 1 (Ho et al. 2020 count 1..T), so x_t here is the paper's x_{t+1}, and "t_prev = -1" stands for the
data x_0 (ᾱ = 1). Schedules and checkpoints therefore interoperate with diffusers' schedulers.

Model outputs are one of three parameterizations (`prediction`):
  "epsilon": the noise ε (DDPM);  "x0": the clean sample;  "v": v = √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho 2022).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jvlm.objectives import vae

SCHEDULES = ("linear", "cosine", "scaled_linear")
TIMESTEP_SAMPLINGS = ("uniform", "log_snr_normal")
PREDICTIONS = ("epsilon", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large")  # σ_t² = β̃_t (posterior variance) or β_t


class Schedule(NamedTuple):
    """Arrays [T], float32, indexed by t = 0..T-1 (a pytree: pass it through jit as an argument)."""
    betas: jax.Array
    alphas: jax.Array                 # 1 − β_t
    alphas_cumprod: jax.Array         # ᾱ_t = Π_{s<=t} α_s
    alphas_cumprod_prev: jax.Array    # ᾱ_{t−1}, with ᾱ_{−1} = 1
    posterior_variance: jax.Array     # β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); β̃_0 = 0
    posterior_log_variance_clipped: jax.Array  # log β̃_t with β̃_0 replaced by β̃_1 (finite)
    posterior_mean_coef1: jax.Array   # of x0:  β_t √ᾱ_{t−1} / (1 − ᾱ_t)
    posterior_mean_coef2: jax.Array   # of x_t: (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def make_schedule(kind: str = "linear", num_steps: int = 1000, *, beta_start: float = 1e-4,
                  beta_end: float = 0.02, cosine_s: float = 0.008, max_beta: float = 0.999,
                  zero_terminal_snr: bool = False) -> Schedule:
    """"linear": β from beta_start to beta_end (DDPM); "scaled_linear": linear in √β (Stable Diffusion's,
    usually with beta_start 0.00085, beta_end 0.012); "cosine": ᾱ(t) ∝ cos²((t/T + s)/(1 + s)·π/2) with
    β clipped at max_beta (Nichol & Dhariwal 2021). zero_terminal_snr: rescaled by
    `rescale_zero_terminal_snr` (diffusers' rescale_betas_zero_snr). Computed in float64, stored as float32."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; use one of {SCHEDULES}")
    if num_steps < 2:
        raise ValueError(f"a schedule needs at least 2 steps, got num_steps={num_steps}")
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=np.float64) ** 2
    else:
        f = lambda t: np.cos((t / num_steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2  # noqa: E731
        t = np.arange(num_steps, dtype=np.float64)
        betas = np.minimum(1 - f(t + 1) / f(t), max_beta)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas = 1.0 - betas
    ab = np.cumprod(alphas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
    # Concrete arrays even when first built inside a jit trace: a Schedule is cached and reused across traces.
    with jax.ensure_compile_time_eval():
        f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
        return Schedule(
            betas=f32(betas), alphas=f32(alphas), alphas_cumprod=f32(ab), alphas_cumprod_prev=f32(ab_prev),
            posterior_variance=f32(post_var),
            posterior_log_variance_clipped=f32(np.log(np.append(post_var[1], post_var[1:]))),
            posterior_mean_coef1=f32(betas * np.sqrt(ab_prev) / (1.0 - ab)),
            posterior_mean_coef2=f32((1.0 - ab_prev) * np.sqrt(alphas) / (1.0 - ab)))


ZERO_SNR_ALPHA_CUMPROD = 2.0 ** -24  # ᾱ_{T−1} after rescaling at most: no signal, finite log SNR


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2024, Algorithm 1: √ᾱ_t shifted and scaled so that √ᾱ_0 keeps its value and √ᾱ_{T−1} = 0.

    Schedules such as SD's leave signal at t = T−1 (ᾱ = 0.0047 for scaled_linear: √ᾱ = 0.07), so the model
    learns to read the image's coarse layout from x_{T−1}, which sampling from pure noise never gives it. With
    zero terminal SNR the last step is the prompt alone. ᾱ_{T−1} becomes 2^−24 (or half of ᾱ_{T−2} if that is
    smaller, so that ᾱ keeps falling), not 0, so that log SNR and the ε→x0 conversion stay finite (diffusers
    uses 2^−24 in its Euler samplers); use v- or x0-prediction, since an ε-prediction carries no information
    about x0 there."""
    root = np.sqrt(np.cumprod(1.0 - np.asarray(betas, np.float64)))
    first, last = root[0], root[-1]
    ab = ((root - last) * first / (first - last)) ** 2
    ab[-1] = min(ZERO_SNR_ALPHA_CUMPROD, ab[-2] / 2)
    return 1.0 - np.append(ab[0], ab[1:] / ab[:-1])


def _at_shape(v, x: jax.Array) -> jax.Array:
    """v (a scalar or [B]) shaped to broadcast against x [B, ...]."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _at(a: jax.Array, t, x: jax.Array) -> jax.Array:
    """a[t] shaped to broadcast against x [B, ...]; t is a scalar or [B]."""
    return _at_shape(a[jnp.asarray(t)], x)


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; use one of {PREDICTIONS}")


# ---------------------------------------------------------------------------------------------- forward
def q_sample(s: Schedule, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
    """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε."""
    ab = _at(s.alphas_cumprod, t, x0)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def q_posterior(s: Schedule, x0: jax.Array, x_t: jax.Array, t) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q(x_{t−1} | x_t, x0) = N(coef1·x0 + coef2·x_t, β̃_t): (mean, variance, clipped log-variance)."""
    mean = _at(s.posterior_mean_coef1, t, x_t) * x0 + _at(s.posterior_mean_coef2, t, x_t) * x_t
    return mean, _at(s.posterior_variance, t, x_t), _at(s.posterior_log_variance_clipped, t, x_t)


def predict_x0_eps(s: Schedule, x_t: jax.Array, t, model_output: jax.Array,
                   prediction: str = "epsilon") -> tuple[jax.Array, jax.Array]:
    """(x0, ε) implied by the model's output at (x_t, t)."""
    _check_prediction(prediction)
    ab = _at(s.alphas_cumprod, t, x_t)
    a, sig = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    if prediction == "epsilon":
        return (x_t - sig * model_output) / a, model_output
    if prediction == "x0":
        return model_output, (x_t - a * model_output) / sig
    return a * x_t - sig * model_output, sig * x_t + a * model_output


def predict_x0(s: Schedule, x_t: jax.Array, t, model_output: jax.Array, prediction: str = "epsilon",
               clip: bool = False) -> jax.Array:
    """The x0 implied by the model's output, clipped to the pixel range [-1, 1] when `clip` (pixel space)."""
    x0, _ = predict_x0_eps(s, x_t, t, model_output, prediction)
    return jnp.clip(x0, -1.0, 1.0) if clip else x0


def training_target(s: Schedule, x0: jax.Array, noise: jax.Array, t, prediction: str = "epsilon") -> jax.Array:
    _check_prediction(prediction)
    if prediction == "epsilon":
        return noise
    if prediction == "x0":
        return x0
    ab = _at(s.alphas_cumprod, t, x0)
    return jnp.sqrt(ab) * noise - jnp.sqrt(1.0 - ab) * x0


def snr(s: Schedule, t) -> jax.Array:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t)."""
    ab = s.alphas_cumprod[jnp.asarray(t)]
    return ab / (1.0 - ab)


def loss_weight(s: Schedule, t, prediction: str = "epsilon", min_snr_gamma: float = 0.0) -> jax.Array:
    """Per-example weight [B] of the squared error. min_snr_gamma > 0: Min-SNR-γ (Hang et al. 2023), the
    x0-space weight min(SNR, γ) restated for the parameterization; 0: 1 (DDPM's simple loss)."""
    _check_prediction(prediction)
    if not min_snr_gamma:
        return jnp.ones(jnp.shape(t), jnp.float32)
    r = snr(s, t)
    clipped = jnp.minimum(r, min_snr_gamma)
    return {"epsilon": clipped / r, "x0": clipped, "v": clipped / (r + 1.0)}[prediction]


def sample_timesteps(rng: jax.Array, batch: int, num_steps: int) -> jax.Array:
    """Uniform t in 0..T−1 (DDPM Algorithm 1)."""
    return jax.random.randint(rng, (batch,), 0, num_steps)


def sample_timesteps_log_snr(rng: jax.Array, batch: int, s: Schedule, mean: float, std: float) -> jax.Array:
    """t whose log-SNR is about N(mean, std²): log λ is drawn, then the first t with log SNR_t <= it is taken
    (clipped to 0..T−1). EDM's training distribution of noise levels (Karras et al. 2022: ln σ ~ N(−1.2, 1.2²)
    with σ_data = 0.5, i.e. log SNR ~ N(1.0, 2.4²)), which puts the steps on the middle noise levels instead of
    spreading them evenly over t, where a linear schedule spends half of them at SNR < 0.1."""
    log_snr = jnp.log(snr(s, jnp.arange(s.num_steps)))  # decreasing in t
    target = mean + std * jax.random.normal(rng, (batch,))
    t = jnp.searchsorted(-log_snr, -target)  # the first t with −log SNR_t >= −target
    return jnp.clip(t, 0, s.num_steps - 1).astype(jnp.int32)


def diffusion_loss(s: Schedule, model_output: jax.Array, x0: jax.Array, noise: jax.Array, t,
                   prediction: str = "epsilon", min_snr_gamma: float = 0.0) -> jax.Array:
    """Per-example loss [B]: weight(t) · mean over dims of (output − target)², for x_t = q_sample(x0, t, noise)."""
    err = jnp.square(model_output.astype(jnp.float32) - training_target(s, x0, noise, t, prediction))
    return loss_weight(s, t, prediction, min_snr_gamma) * jnp.mean(err.reshape(err.shape[0], -1), axis=-1)


# ---------------------------------------------------------------------------------------------- samplers
def p_mean_variance(s: Schedule, x_t: jax.Array, t, model_output: jax.Array, prediction: str = "epsilon",
                    variance: str = "fixed_small", clip_x0: bool = False):
    """p(x_{t−1} | x_t) = N(μ_θ, σ_t²): (mean, log σ_t², predicted x0). σ_t² = β̃_t ("fixed_small") or
    β_t ("fixed_large"); the log-variance at t = 0 uses β̃_1 either way (finite; the decoder's scale)."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; use one of {VARIANCES}")
    x0 = predict_x0(s, x_t, t, model_output, prediction, clip_x0)
    mean, _, small_log = q_posterior(s, x0, x_t, t)
    if variance == "fixed_small":
        log_var = small_log
    else:
        large = jnp.log(jnp.append(s.posterior_variance[1], s.betas[1:]))
        log_var = _at(large, t, x_t)
    return mean, log_var, x0


def ddpm_step(s: Schedule, x_t: jax.Array, t, model_output: jax.Array, rng: jax.Array,
              prediction: str = "epsilon", variance: str = "fixed_small", clip_x0: bool = False) -> jax.Array:
    """Ancestral sampling, DDPM Algorithm 2: x_{t−1} = μ_θ(x_t, t) + σ_t z, with no noise at t = 0."""
    mean, log_var, _ = p_mean_variance(s, x_t, t, model_output, prediction, variance, clip_x0)
    if variance == "fixed_small":  # exactly β̃_t (0 at t = 0), not the clipped log
        std = jnp.sqrt(_at(s.posterior_variance, t, x_t))
    else:
        std = jnp.exp(0.5 * log_var)
    z = jax.random.normal(rng, x_t.shape, x_t.dtype)
    nonzero = (jnp.asarray(t) > 0).astype(x_t.dtype)
    return mean + _at_shape(nonzero, x_t) * std * z


def _alpha_bar_prev(s: Schedule, t_prev, x: jax.Array) -> jax.Array:
    """ᾱ at t_prev, with ᾱ = 1 for t_prev < 0 (the data)."""
    t_prev = jnp.asarray(t_prev)
    return _at_shape(jnp.where(t_prev >= 0, s.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0), x)


def ddim_step(s: Schedule, x_t: jax.Array, t, t_prev, model_output: jax.Array, eta: float = 0.0,
              rng: jax.Array | None = None, prediction: str = "epsilon", clip_x0: bool = False) -> jax.Array:
    """DDIM (Song et al. 2021, eq. 12) from t to t_prev < t (−1: the data):
    x_prev = √ᾱ_prev·x0 + √(1 − ᾱ_prev − σ²)·ε + σ z,  σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).
    η = 0 is deterministic; η = 1 with every step is DDPM with σ_t² = β̃_t."""
    if eta and rng is None:
        raise ValueError("ddim_step with eta > 0 adds noise: pass rng")
    x0, eps = predict_x0_eps(s, x_t, t, model_output, prediction)
    ab, ab_prev = _at(s.alphas_cumprod, t, x_t), _alpha_bar_prev(s, t_prev, x_t)
    if clip_x0:  # the ε consistent with the clipped x0
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
    out = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma ** 2, 0.0)) * eps
    if eta:
        out = out + sigma * jax.random.normal(rng, x_t.shape, x_t.dtype)
    return out


def dpmpp_2m_step(s: Schedule, x_t: jax.Array, t, t_prev, model_output: jax.Array, last_x0: jax.Array,
                  t_last, prediction: str = "epsilon") -> tuple[jax.Array, jax.Array]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) from t to t_prev, given the previous step's data
    prediction `last_x0` made at t_last (t_last < 0: none yet, a first-order step). With λ = log(α/σ),
    α = √ᾱ, σ = √(1 − ᾱ), h = λ_prev − λ_t, r = (λ_t − λ_last)/h:
        x_prev = (σ_prev/σ_t) x_t − α_prev (e^{−h} − 1) (x0 + (x0 − last_x0)/(2r)).
    The step to the data (t_prev < 0) returns x0 itself (first order, as diffusers' lower_order_final).
    Returns (x_prev, x0) so the caller can pass x0 on as the next step's last_x0."""
    x0, _ = predict_x0_eps(s, x_t, t, model_output, prediction)
    lam = lambda ab: 0.5 * (jnp.log(ab) - jnp.log1p(-ab))  # noqa: E731
    t_prev, t_last = jnp.asarray(t_prev), jnp.asarray(t_last)
    ab_t = _at(s.alphas_cumprod, t, x_t)
    ab_prev = _at(s.alphas_cumprod, jnp.maximum(t_prev, 0), x_t)
    ab_last = _at(s.alphas_cumprod, jnp.clip(t_last, 0, s.num_steps - 1), x_t)
    h = lam(ab_prev) - lam(ab_t)
    r = (lam(ab_t) - lam(ab_last)) / h
    second = _at_shape((t_last >= 0), x_t)
    d = x0 + jnp.where(second, (x0 - last_x0) / (2.0 * jnp.where(second, r, 1.0)), 0.0)
    step = jnp.sqrt((1 - ab_prev) / (1 - ab_t)) * x_t - jnp.sqrt(ab_prev) * jnp.expm1(-h) * d
    return jnp.where(_at_shape(t_prev >= 0, x_t), step, x0), x0


# ---------------------------------------------------------------------------------------------- likelihood
def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """Elementwise KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _sum_per_example(x):
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def prior_kl(s: Schedule, x0: jax.Array) -> jax.Array:
    """L_T = KL(q(x_T | x0) ‖ N(0, I)) [B], nats (x_T is index T−1 here)."""
    ab = s.alphas_cumprod[-1]
    return _sum_per_example(normal_kl(jnp.sqrt(ab) * x0, jnp.log1p(-ab) * jnp.ones_like(x0), 0.0, 0.0))


def vlb_term(s: Schedule, x0: jax.Array, x_t: jax.Array, t, model_output: jax.Array,
             prediction: str = "epsilon", variance: str = "fixed_small") -> jax.Array:
    """[B] nats: for t > 0, L_{t} = KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t)); for t = 0, the decoder
    term L_0 = −log p_θ(x0 | x_1 paper-indexed) under a Gaussian discretized to the 256 pixel levels.
    x0 must be 8-bit images scaled to [-1, 1] for L_0 to be a probability."""
    mean, log_var, _ = p_mean_variance(s, x_t, t, model_output, prediction, variance)
    true_mean, _, true_log_var = q_posterior(s, x0, x_t, t)
    kl = _sum_per_example(normal_kl(true_mean, true_log_var, mean, log_var))
    decoder = vae.discretized_gaussian_nll(x0, mean, 0.5 * log_var)
    return jnp.where(jnp.asarray(t) == 0, decoder, kl)


def bits_per_dim(nats: jax.Array, x0: jax.Array) -> jax.Array:
    return vae.bits_per_dim(nats, math.prod(x0.shape[1:]))
