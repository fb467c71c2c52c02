"""The full diffusion sampler: every denoising step inside one `lax.scan`, so a 50-step DDIM sample is one
compiled program (no Python loop per step), with classifier-free guidance and negative prompts.

    x0 = sample(schedule, denoise, x_T, rng, sampler="ddim", num_steps=50, guidance=3.0,
                cond=prompt_embeddings, uncond=negative_or_null_embeddings)

`denoise(x_t, t, cond) -> model output` (t: int32 [B]); `cond`/`uncond` are pytrees with a leading batch
axis (or None for an unconditional model). With guidance g != 1 each step makes one batched model call
on [x; x] with [cond; uncond] and uses u + g·(c − u) (Ho & Salimans 2022); `uncond` is the null condition
the model was trained with under conditioning dropout, or a negative prompt's. guidance_rescale φ > 0
(diffusers' `guidance_rescale`; Lin et al. 2023, eq. 15-16) scales that guided output to the conditional
output's standard deviation, mixed with weight φ: large g inflates it, and the inflated latents decode to
over-saturated blobs. With self_condition=True, `denoise(x_t, t, cond, x0_prev)` also reads the x0 estimate
of the previous step's (guided) output, zeros at the first step (Chen et al. 2022's self-conditioning).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jvlm.objectives import diffusion as D

SAMPLERS = ("ddpm", "ddim", "dpm++2m")


SPACINGS = ("linspace", "logsnr")


def timesteps(num_train_steps: int, num_steps: int, spacing: str = "linspace",
              alphas_cumprod: np.ndarray | None = None) -> np.ndarray:
    """num_steps distinct timesteps from T−1 down to 0: the first step starts from pure noise's index and
    the last one lands on the data. "linspace": evenly spaced in t (diffusers' "linspace"); "logsnr":
    evenly spaced in λ = log(α/σ) (DPM-Solver's choice, needs alphas_cumprod), which keeps the multistep
    solver's step-size ratios moderate where the linear schedule's λ races near the data."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"{num_steps} sampling steps requested, but the schedule has {num_train_steps}: "
                         f"use between 1 and {num_train_steps}.")
    if spacing == "linspace":
        return np.round(np.linspace(num_train_steps - 1, 0, num_steps)).astype(np.int32)
    if spacing != "logsnr":
        raise ValueError(f"unknown timestep spacing {spacing!r}; use one of {SPACINGS}")
    ab = np.asarray(alphas_cumprod, np.float64)
    lam = 0.5 * (np.log(ab) - np.log1p(-ab))  # increasing as t decreases
    targets = np.linspace(lam[-1], lam[0], num_steps)
    ts = np.searchsorted(lam[::-1], targets)  # lam[::-1] is increasing in reversed t
    ts = (num_train_steps - 1 - np.clip(ts, 0, num_train_steps - 1)).astype(np.int32)
    ts[0], ts[-1] = num_train_steps - 1, 0
    ts = np.maximum.accumulate(ts[::-1])[::-1]  # non-increasing
    for i in range(1, num_steps):  # distinct: nudge collisions toward the data end
        ts[i] = min(ts[i], ts[i - 1] - 1)
    if ts[-1] < 0:  # too many steps for distinct λ points: fall back to even spacing in t
        return timesteps(num_train_steps, num_steps, "linspace")
    return ts


def check_request(num_train_steps: int, sampler: str, num_steps: int, guidance: float, conditional: bool,
                  guidance_rescale: float = 0.0) -> None:
    """The checks a sampling request must pass before anything compiles; raises ValueError naming the fix."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
    timesteps(num_train_steps, num_steps)
    if sampler == "ddpm" and num_steps != num_train_steps:
        raise ValueError(f"ancestral (ddpm) sampling takes all {num_train_steps} steps of the schedule, not "
                         f"{num_steps}; for fewer steps use sampler='ddim' (eta=1 is ancestral on the "
                         f"respaced schedule) or 'dpm++2m'.")
    if guidance != 1.0 and not conditional:
        raise ValueError(f"guidance={guidance} needs a conditional model trained with conditioning dropout "
                         f"(a null condition to guide against); this model is unconditional: use guidance 1.")
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale={guidance_rescale} is a mixing weight: use a value in [0, 1] "
                         f"(0 = plain guidance, 1 = fully rescaled)")


def rescale_guidance(guided: jax.Array, cond_out: jax.Array, phi: float) -> jax.Array:
    """φ·guided·std(cond_out)/std(guided) + (1 − φ)·guided, the standard deviations per example."""
    axes = tuple(range(1, guided.ndim))
    ratio = jnp.std(cond_out, axis=axes, keepdims=True) / (jnp.std(guided, axis=axes, keepdims=True) + 1e-12)
    return phi * guided * ratio + (1.0 - phi) * guided


def sample(schedule: D.Schedule, denoise: Callable, x_T: jax.Array, rng: jax.Array, *, sampler: str = "ddim",
           num_steps: int = 50, eta: float = 0.0, guidance: float = 1.0, cond: Any = None, uncond: Any = None,
           prediction: str = "epsilon", variance: str = "fixed_small", clip_x0: bool = False,
           spacing: str | None = None, guidance_rescale: float = 0.0, self_condition: bool = False) -> jax.Array:
    """Runs the reverse process from x_T to x0 with `num_steps` steps; traceable (call it under jit).
    spacing: of the timesteps (see `timesteps`); default "logsnr" for dpm++2m, else "linspace"."""
    T = schedule.num_steps
    check_request(T, sampler, num_steps, guidance, cond is not None, guidance_rescale)
    if guidance != 1.0 and uncond is None:
        raise ValueError("guidance != 1 needs `uncond`: the null condition (or a negative prompt's)")
    spacing = spacing or ("logsnr" if sampler == "dpm++2m" else "linspace")
    # The timesteps are static: a "logsnr" spacing reads the schedule's values (close over it, don't trace it).
    ab = np.asarray(schedule.alphas_cumprod) if spacing == "logsnr" else None
    ts = timesteps(T, num_steps, spacing, ab)
    t_prev = np.append(ts[1:], -1).astype(np.int32)
    t_last = np.append(-1, ts[:-1]).astype(np.int32)   # the timestep of the previous model call
    batch = x_T.shape[0]

    def call(x, tb, c, x0_prev):
        return denoise(x, tb, c, x0_prev) if self_condition else denoise(x, tb, c)

    def model_output(x, t, x0_prev):
        tb = jnp.full((batch,), t, jnp.int32)
        if guidance == 1.0:
            return call(x, tb, cond, x0_prev)
        both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
        # Both halves read the same estimate: the guided x0 the sampler is following.
        out = call(jnp.concatenate([x, x]), jnp.concatenate([tb, tb]), both, jnp.concatenate([x0_prev, x0_prev]))
        c, u = jnp.split(out, 2)
        guided = u + guidance * (c - u)
        return rescale_guidance(guided, c, guidance_rescale) if guidance_rescale else guided

    def body(carry, step):
        x, last_x0, rng, x0_prev = carry
        t, tp, tl = step
        rng, key = jax.random.split(rng)
        out = model_output(x, t, x0_prev)
        if self_condition:
            x0_prev = D.predict_x0(schedule, x, t, out, prediction, clip_x0)
        if sampler == "ddpm":
            x = D.ddpm_step(schedule, x, t, out, key, prediction, variance, clip_x0)
        elif sampler == "ddim":
            x = D.ddim_step(schedule, x, t, tp, out, eta, key if eta else None, prediction, clip_x0)
        else:
            x, last_x0 = D.dpmpp_2m_step(schedule, x, t, tp, out, last_x0, tl, prediction)
        return (x, last_x0, rng, x0_prev), None

    zeros = jnp.zeros_like(x_T)
    (x, _, _, _), _ = jax.lax.scan(body, (x_T, zeros, rng, zeros), (ts, t_prev, t_last))
    return x
