"""Gaussian-posterior VAE on the spine: ResNet encoder -> (mean, logvar) of a diagonal Gaussian over
[h, w, latent_channels] latents, ResNet decoder -> the mean of a discretized Gaussian over the 8-bit
pixels with a learned log-scale per RGB channel (jvlm.objectives.vae).

Training minimizes (NLL + beta * KL) / D per example (D = H*W*3), so the learning rate does not depend on
the image size; beta may ramp up linearly from 0 over `model.kl_warmup_steps`. Reported bits/dim always
use beta = 1: (NLL + KL) / (D ln 2), an upper bound on the code length of the discrete images.
`functions()["encode"]` / `["decode"]` serve later stages (latent diffusion) the posterior and images.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from jvlm.config import ConfigError
from jvlm.data.pixels import images_to_float
from jvlm.models.autoencoder import Decoder, Encoder
from jvlm.objectives import vae
from jvlm.tasks.image_autoencoder import ImageAutoencoderTask, psnr_per_image
from jvlm.train import optim
from jvlm.train.step import LossOutput, ParamGroup

LOGVAR_RANGE = (-30.0, 20.0)    # keeps exp(logvar) finite early in training
LOG_SCALE_RANGE = (-9.0, 3.0)   # decoder scale 1e-4 .. 20: far beyond any useful value either way


class Posterior(NamedTuple):
    mean: jax.Array     # [B, h, w, latent_channels]
    logvar: jax.Array   # same shape
    z: jax.Array        # one reparameterized sample


class GaussianAutoencoder(nn.Module):
    """encode: images [-1, 1] -> (mean, logvar); decode: z -> image means (unbounded; [-1, 1] is the data)."""
    encoder: dict[str, Any]
    decoder: dict[str, Any]   # decoder_settings(): the encoder's, optionally wider or deeper
    latent_channels: int
    dtype: Any = jnp.float32

    def setup(self):
        self.enc = Encoder(out_channels=2 * self.latent_channels, dtype=self.dtype, **self.encoder)
        self.dec = Decoder(dtype=self.dtype, **self.decoder)
        self.log_scale = self.param("log_scale", nn.with_logical_partitioning(nn.initializers.zeros, (None,)), (3,))

    def encode(self, images):
        mean, logvar = jnp.split(self.enc(images).astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z):
        return self.dec(z)

    def decoder_log_scale(self):
        return jnp.clip(self.log_scale, *LOG_SCALE_RANGE)

    def __call__(self, images):  # for init only: touches every parameter
        mean, _ = self.encode(images)
        return self.decode(mean) + self.decoder_log_scale()


class VAETask(ImageAutoencoderTask):

    def validate(self) -> None:
        super().validate()
        m = self.config.model
        if m.latent_channels < 1:
            raise ConfigError(f"config.model.latent_channels must be >= 1, got {m.latent_channels}.")
        if m.beta < 0:
            raise ConfigError(f"config.model.beta must be >= 0 (1 is the true ELBO), got {m.beta}.")
        if m.get("kl_warmup_steps", 0) < 0:
            raise ConfigError(f"config.model.kl_warmup_steps must be >= 0 (0: no warm-up), got {m.kl_warmup_steps}.")

    @property
    def model(self) -> GaussianAutoencoder:
        m = self.config.model
        return GaussianAutoencoder(**self.encoder_decoder, latent_channels=m.latent_channels, dtype=jnp.dtype(m.dtype))

    @property
    def num_dims(self) -> int:
        return self.config.data.image_size ** 2 * 3

    def init(self, rng):
        s = self.config.data.image_size
        return {"main": self.model.init(rng, jnp.zeros((1, s, s, 3)))["params"]}, {}

    def param_groups(self, params) -> list[ParamGroup]:
        tx, schedule, frozen = optim.make_optimizer(self.config.optimizer, params["main"], self.config.total_steps)
        return [ParamGroup("main", self.loss_fn, tx, schedule, frozen)]

    # ------------------------------------------------------------------ the model's pieces
    def posterior(self, p, images, rng) -> Posterior:
        """uint8 images [B, H, W, 3] -> the posterior and one sample from it."""
        if images.dtype != jnp.uint8:
            raise ValueError(f"the VAE encodes uint8 images [batch, height, width, 3] in [0, 255], got dtype "
                             f"{images.dtype}; pass the stored 8-bit pixels (the likelihood is over 256 levels)")
        mean, logvar = self.model.apply({"params": p}, images_to_float(images), method=GaussianAutoencoder.encode)
        return Posterior(mean, logvar, vae.reparameterize(rng, mean, logvar))

    def decode(self, p, z):
        return self.model.apply({"params": p}, z, method=GaussianAutoencoder.decode)

    def log_scale(self, p):
        return self.model.apply({"params": p}, method=GaussianAutoencoder.decoder_log_scale)

    def elbo_terms(self, p, images, rng):
        """-> (posterior, decoder mean from the sample, per-example NLL nats, per-example KL nats)."""
        post = self.posterior(p, images, rng)
        x_mean = self.decode(p, post.z)
        nll = vae.discretized_gaussian_nll(images_to_float(images), x_mean, self.log_scale(p))
        return post, x_mean, nll, vae.gaussian_kl(post.mean, post.logvar)

    def beta(self, step):
        m = self.config.model
        warmup = m.get("kl_warmup_steps", 0)
        if not warmup:
            return jnp.asarray(m.beta, jnp.float32)
        return m.beta * jnp.minimum(step.astype(jnp.float32) / warmup, 1.0)

    # ------------------------------------------------------------------ training
    def loss_fn(self, params, batch, rng, ctx) -> LossOutput:
        p = params["main"]
        x = batch["image"]
        post, x_mean, nll, kl = self.elbo_terms(p, x, rng)
        beta = self.beta(ctx.step)
        loss = jnp.mean(vae.negative_elbo(nll, kl, beta)) / self.num_dims
        nll_bpd = jnp.mean(vae.bits_per_dim(nll, self.num_dims))
        kl_bpd = jnp.mean(vae.bits_per_dim(kl, self.num_dims))
        # PSNR of the decoder mean at the training sample (evaluation decodes the posterior mean instead)
        metrics = {"nll_bits_per_dim": nll_bpd, "kl_bits_per_dim": kl_bpd, "bits_per_dim": nll_bpd + kl_bpd,
                   "kl": jnp.mean(kl), "beta": beta, "decoder_scale": jnp.mean(jnp.exp(self.log_scale(p))),
                   "posterior_std": jnp.mean(jnp.exp(0.5 * post.logvar)),
                   "psnr": jnp.mean(psnr_per_image(x_mean, images_to_float(x)))}
        return LossOutput(loss, metrics)

    # ------------------------------------------------------------------ inference and evaluation
    def functions(self) -> dict:
        """Jitted encode(params, uint8 images, rng) -> Posterior(mean, logvar, z) and
        decode(params, z) -> images in [-1, 1] (the decoder mean, unclipped)."""
        if not hasattr(self, "_functions"):
            self._functions = {"encode": jax.jit(self.posterior), "decode": jax.jit(self.decode)}
        return self._functions

    def reconstruct_fn(self):
        """The PNG and PSNR use the decoder mean at the posterior mean; bits/dim one posterior sample."""
        if hasattr(self, "_reconstruct"):
            return self._reconstruct

        def reconstruct(p, ms, images, rng):
            post, _, nll, kl = self.elbo_terms(p, images, rng)
            per_example = {"nll_bits_per_dim": vae.bits_per_dim(nll, self.num_dims),
                           "kl_bits_per_dim": vae.bits_per_dim(kl, self.num_dims),
                           "bits_per_dim": vae.bits_per_dim(vae.negative_elbo(nll, kl), self.num_dims)}
            return self.decode(p, post.mean), per_example
        self._reconstruct = jax.jit(reconstruct)
        return self._reconstruct

    def summarize(self, per_example) -> dict[str, Any]:
        return {f"eval/{k}": float(v.mean()) for k, v in per_example.items()}
