"""What every image autoencoder / tokenizer task shares (VAE, VQ-VAE, VQ-GAN, dVAE): the shapes images,
the config checks on sizes, and evaluation on held-out images (PSNR, SSIM, a PNG grid of originals
above reconstructions, plus whatever per-example quantities the family reports)."""

from __future__ import annotations

import abc
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jvlm import sharding
from jvlm.config import ConfigError, check_data_source
from jvlm.data import shapes
from jvlm.data.pipeline import StepIndexedLoader, fixed_batches
from jvlm.data.pixels import float_to_uint8
from jvlm.eval.image_metrics import psnr, save_grid, ssim
from jvlm.models.autoencoder import decoder_settings, downsampling_factor
from jvlm.tasks.base import Task


class ImageAutoencoderTask(Task):

    def validate(self) -> None:
        c = self.config
        check_data_source(c, self.data_sources, f"the {c.task} task")
        f = downsampling_factor(c.model.encoder.ch_mult)
        if c.data.image_size % f:
            raise ConfigError(f"config.data.image_size={c.data.image_size} is not divisible by the downsampling "
                              f"factor {f} of model.encoder.ch_mult={tuple(c.model.encoder.ch_mult)}.")
        self.encoder_decoder  # checks config.model.decoder
        dp = sharding.data_parallel_size(self.mesh.shape)
        if c.eval.batch_size % dp:
            raise ConfigError(f"config.eval.batch_size={c.eval.batch_size} is not divisible by the data-parallel "
                              f"size {dp}; use a multiple of {dp}.")

    @property
    def encoder_decoder(self) -> dict:
        """The model's `encoder` and `decoder` settings: the decoder mirrors model.encoder unless model.decoder
        widens or deepens it."""
        m = self.config.model
        return dict(encoder=dict(m.encoder), decoder=decoder_settings(dict(m.encoder), m.get("decoder")))

    # ------------------------------------------------------------------ data
    def train_loader(self, start_step, rows):
        c = self.config
        return StepIndexedLoader(
            shapes.ShapesSource("train", image_size=c.data.image_size, seed=c.data.seed), global_batch=c.batch_size,
            seed=c.seed, transform=self.transform, start_step=start_step, num_steps=c.total_steps, rows=rows,
            num_threads=c.data.num_threads, prefetch=c.data.prefetch)

    def transform(self, example, rng):
        image = example["image"]
        if self.config.data.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image)}

    def abstract_batch(self, batch_size):
        s = self.config.data.image_size
        return {"image": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.uint8)}

    # ------------------------------------------------------------------ evaluation
    @abc.abstractmethod
    def reconstruct_fn(self) -> Callable:
        """Jitted (params, model_state, uint8 images, rng) -> (float images in [-1, 1], {name: per-example array})."""

    @abc.abstractmethod
    def summarize(self, per_example: dict[str, np.ndarray]) -> dict[str, float]:
        """Eval metrics from the per-example arrays reconstruct_fn returned, over the whole eval set."""

    def evaluate(self, state, mesh) -> dict[str, Any]:
        """Held-out shapes images (the test split): PSNR and SSIM of the reconstructions, the family's own
        metrics, and samples/reconstructions_<step>.png (originals above reconstructions)."""
        c = self.config
        params = (state.ema_params or state.params)["main"]
        fn = self.reconstruct_fn()
        rng = jax.random.key(c.seed + 1)  # fixed: every evaluation sees the same posterior samples
        originals, recons, extras = [], [], []
        source = shapes.ShapesSource("test", image_size=c.data.image_size, seed=c.data.seed)
        plain = lambda ex, rng: {"image": ex["image"]}  # noqa: E731
        for i, batch in enumerate(fixed_batches(source, batch_size=c.eval.batch_size,
                                                num_examples=c.eval.num_examples, transform=plain)):
            valid = batch["_valid"]
            g = sharding.global_batch_from_full(batch, mesh)
            x_hat, per_example = fn(params, state.model_state, g["image"], jax.random.fold_in(rng, i))
            originals.append(batch["image"][valid])
            recons.append(float_to_uint8(sharding.to_host(x_hat)[valid]))
            extras.append({k: sharding.to_host(v)[valid] for k, v in per_example.items()})
        originals, recons = np.concatenate(originals), np.concatenate(recons)
        out = {"eval/psnr": float(np.mean(psnr(originals, recons))),
               "eval/ssim": float(np.mean(ssim(originals, recons)))}
        out.update(self.summarize({k: np.concatenate([e[k] for e in extras]) for k in extras[0]}))
        if jax.process_index() == 0 and self.workdir:
            n = min(16, len(originals))
            step = int(jax.device_get(state.step))
            save_grid(os.path.join(self.workdir, "samples", f"reconstructions_{step:07d}.png"),
                      [originals[:n], recons[:n]])
        return out


def psnr_per_image(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """PSNR [B] in dB of reconstructions against images, both in [-1, 1] (a range of 2, so peak² = 4),
    inside jit; reconstructions are clipped first, as the 8-bit images they stand for would be."""
    mse = jnp.mean(jnp.square(jnp.clip(x_hat, -1, 1) - x), axis=(1, 2, 3))
    return 10 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def code_metrics(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    """eval/codebook_usage (fraction of codes used at least once) and eval/perplexity of code frequencies."""
    counts = np.bincount(codes.reshape(-1), minlength=codebook_size)
    p = counts[counts > 0] / counts.sum()
    return {"eval/codebook_usage": float(np.mean(counts > 0)), "eval/perplexity": float(np.exp(-np.sum(p * np.log(p))))}
