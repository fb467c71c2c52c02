"""VQ-VAE image tokenizer on the spine: ResNet encoder/decoder + vector quantizer (jvlm.objectives.vq).

Options against codebook collapse (all in `config.model.quantizer`): `ema_decay > 0` moves codes by
EMA of their assigned encoder outputs instead of the codebook loss (the codebook then lives in the
non-gradient model state); `restart_below > 0` restarts codes whose assignment share fell below that
fraction of a uniform share (needs EMA); `cosine` compares l2-normalized codes; `lookup_dim > 0`
looks codes up in a low-dimensional projection (ViT-VQGAN's factorized codes).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jvlm import sharding
from jvlm.config import ConfigError
from jvlm.data import shapes
from jvlm.data.pipeline import StepIndexedLoader, fixed_batches
from jvlm.eval.image_metrics import psnr, save_grid, ssim
from jvlm.models.autoencoder import Decoder, Encoder, downsampling_factor
from jvlm.models.layers import dense_init
from jvlm.objectives import vq
from jvlm.tasks.base import Task
from jvlm.tasks.contrastive import images_to_float
from jvlm.train import optim
from jvlm.train.step import LossOutput, ParamGroup


def float_to_uint8(x):
    return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)


class VQAutoencoder(nn.Module):
    """encode: images [-1, 1] -> z_e [B, h, w, code_dim]; decode: codes -> images. The codebook is a
    parameter unless EMA updates it (then the caller passes it from the model state)."""
    encoder: dict[str, Any]
    codebook_size: int
    code_dim: int
    lookup_dim: int = 0          # > 0: quantize in a projected space of this size
    learned_codebook: bool = True
    dtype: Any = jnp.float32

    def setup(self):
        self.enc = Encoder(out_channels=self.code_dim, dtype=self.dtype, **self.encoder)
        self.dec = Decoder(dtype=self.dtype, **self.encoder)
        dim = self.lookup_dim or self.code_dim
        if self.lookup_dim:
            self.to_lookup = nn.Dense(self.lookup_dim, kernel_init=dense_init(("embed", None)))
            self.from_lookup = nn.Dense(self.code_dim, kernel_init=dense_init((None, "embed")))
        if self.learned_codebook:
            self.codebook = self.param("codebook", nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_in", "uniform"), (None, None)), (self.codebook_size, dim))

    def encode(self, images):
        z = self.enc(images)
        return self.to_lookup(z) if self.lookup_dim else z

    def decode(self, z_q):
        return self.dec(self.from_lookup(z_q) if self.lookup_dim else z_q)

    def __call__(self, images):  # for init only: touches every parameter
        z = self.encode(images)
        return self.decode(z)


class VQVAETask(Task):

    # ------------------------------------------------------------------ config
    def validate(self) -> None:
        c, q = self.config, self.config.model.quantizer
        f = downsampling_factor(c.model.encoder.ch_mult)
        if c.data.image_size % f:
            raise ConfigError(f"config.data.image_size={c.data.image_size} is not divisible by the downsampling "
                              f"factor {f} of model.encoder.ch_mult={tuple(c.model.encoder.ch_mult)}.")
        if q.restart_below > 0 and q.ema_decay <= 0:
            raise ConfigError("config.model.quantizer.restart_below needs EMA codebook updates: set "
                              "model.quantizer.ema_decay (e.g. 0.99) or restart_below=0.")
        if q.codebook_size < 2:
            raise ConfigError(f"config.model.quantizer.codebook_size must be >= 2, got {q.codebook_size}.")
        dp = sharding.data_parallel_size(self.mesh.shape)
        if c.eval.batch_size % dp:
            raise ConfigError(f"config.eval.batch_size={c.eval.batch_size} is not divisible by the data-parallel "
                              f"size {dp}; use a multiple of {dp}.")

    @property
    def model(self) -> VQAutoencoder:
        m, q = self.config.model, self.config.model.quantizer
        return VQAutoencoder(encoder=dict(m.encoder), codebook_size=q.codebook_size, code_dim=q.code_dim,
                             lookup_dim=q.lookup_dim, learned_codebook=q.ema_decay <= 0, dtype=jnp.dtype(m.dtype))

    @property
    def _ema(self) -> bool:
        return self.config.model.quantizer.ema_decay > 0

    def init(self, rng):
        d = self.config.data
        params = self.model.init(rng, jnp.zeros((1, d.image_size, d.image_size, 3)))["params"]
        state = {}
        if self._ema:  # codes start at scaled random directions; EMA then pulls them to the data
            q = self.config.model.quantizer
            book = jax.random.normal(jax.random.fold_in(rng, 1), (q.codebook_size, q.lookup_dim or q.code_dim))
            book = vq.l2_normalize(book) if q.cosine else book
            state = {"codebook": book, "ema": vq.ema_init(book),
                     "usage": jnp.full((q.codebook_size,), 1.0 / q.codebook_size)}
        return {"main": params}, state

    def param_groups(self, params) -> list[ParamGroup]:
        tx, schedule, frozen = optim.make_optimizer(self.config.optimizer, params["main"], self.config.total_steps)
        return [ParamGroup("main", self.loss_fn, tx, schedule, frozen)]

    # ------------------------------------------------------------------ training
    def codebook(self, params, model_state):
        """The codes: EMA-updated ones live in the model state, learned ones are a parameter."""
        return model_state["codebook"] if self._ema else params["codebook"]

    def quantize(self, params, model_state, z):
        q = self.config.model.quantizer
        return vq.vector_quantize(z, self.codebook(params, model_state), q.beta, cosine=q.cosine)

    def loss_fn(self, params, batch, rng, ctx) -> LossOutput:
        q, p = self.config.model.quantizer, params["main"]
        x = images_to_float(batch["image"])
        z = self.model.apply({"params": p}, x, method=VQAutoencoder.encode)
        out = self.quantize(p, ctx.model_state, z)
        x_hat = self.model.apply({"params": p}, out.quantized, method=VQAutoencoder.decode)
        mse = jnp.mean(jnp.square(x_hat - x))
        loss = mse + out.commitment_loss + (0.0 if self._ema else out.codebook_loss)
        per_image = jnp.mean(jnp.square(jnp.clip(x_hat, -1, 1) - x), axis=(1, 2, 3))
        metrics = {"mse": mse, "psnr": jnp.mean(10 * jnp.log10(4.0 / jnp.maximum(per_image, 1e-10))),
                   "perplexity": out.perplexity, "codebook_usage": out.usage,
                   "commitment_loss": out.commitment_loss, "codebook_loss": out.codebook_loss}
        new_state = None
        if self._ema:
            new_state, restarted = self._update_codebook(ctx.model_state, z, out, rng)
            metrics["restarted_codes"] = restarted
        return LossOutput(loss, metrics, new_state)

    def _update_codebook(self, state, z, out, rng):
        q = self.config.model.quantizer
        zs = vq.l2_normalize(z) if q.cosine else z
        ema, book = vq.ema_update(state["ema"], zs, out.indices, decay=q.ema_decay)
        share = out.counts / jnp.maximum(jnp.sum(out.counts), 1.0)
        usage = q.ema_decay * state["usage"] + (1 - q.ema_decay) * share
        restarted = jnp.zeros((), jnp.int32)
        if q.restart_below > 0:
            k = q.codebook_size
            book, restarted = vq.restart_dead_codes(book, usage * k, zs, rng, threshold=q.restart_below)
            dead = usage * k < q.restart_below
            ema = vq.EMAState(jnp.where(dead, 1.0, ema.cluster_size), jnp.where(dead[:, None], book, ema.embed_sum))
            usage = jnp.where(dead, 1.0 / k, usage)
        book = vq.l2_normalize(book) if q.cosine else book
        return {"codebook": book, "ema": ema, "usage": usage}, restarted

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

    # ------------------------------------------------------------------ inference and evaluation
    def functions(self) -> dict:
        """Jitted tokenize(params, model_state, uint8 images) -> codes and detokenize(params, model_state, codes)
        -> float images in [-1, 1]."""
        if not hasattr(self, "_functions"):
            model = self.model

            def tokenize(p, ms, images):
                z = model.apply({"params": p}, images_to_float(images), method=VQAutoencoder.encode)
                return self.quantize(p, ms, z).indices

            def detokenize(p, ms, codes):
                q = self.config.model.quantizer
                book = self.codebook(p, ms)
                z_q = jnp.take(vq.l2_normalize(book) if q.cosine else book, codes, axis=0)
                return model.apply({"params": p}, z_q, method=VQAutoencoder.decode)

            self._functions = {"tokenize": jax.jit(tokenize), "detokenize": jax.jit(detokenize)}
        return self._functions

    def evaluate(self, state, mesh) -> dict[str, Any]:
        """Held-out shapes images (the test split): PSNR, SSIM, codebook usage and perplexity over the
        whole evaluation set, and a PNG grid of originals above reconstructions."""
        c = self.config
        params = (state.ema_params or state.params)["main"]
        fn = self.functions()
        originals, recons, codes = [], [], []
        source = shapes.ShapesSource("test", image_size=c.data.image_size, seed=c.data.seed)
        plain = lambda ex, rng: {"image": ex["image"]}  # noqa: E731
        for batch in fixed_batches(source, batch_size=c.eval.batch_size, num_examples=c.eval.num_examples,
                                   transform=plain):
            valid = batch["_valid"]
            g = sharding.global_batch_from_full(batch, mesh)
            idx = fn["tokenize"](params, state.model_state, g["image"])
            x_hat = sharding.to_host(fn["detokenize"](params, state.model_state, idx))[valid]
            originals.append(batch["image"][valid])
            recons.append(float_to_uint8(x_hat))
            codes.append(sharding.to_host(idx)[valid])
        originals, recons, codes = np.concatenate(originals), np.concatenate(recons), np.concatenate(codes)
        counts = np.bincount(codes.reshape(-1), minlength=c.model.quantizer.codebook_size)
        p = counts / counts.sum()
        out = {"eval/psnr": float(np.mean(psnr(originals, recons))), "eval/ssim": float(np.mean(ssim(originals, recons))),
               "eval/codebook_usage": float(np.mean(counts > 0)),
               "eval/perplexity": float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))}
        if jax.process_index() == 0 and self.workdir:
            n = min(16, len(originals))
            step = int(jax.device_get(state.step))
            save_grid(os.path.join(self.workdir, "samples", f"reconstructions_{step:07d}.png"),
                      [originals[:n], recons[:n]])
        return out
