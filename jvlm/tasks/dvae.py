"""dVAE image tokenizer (DALL-E's stage 1) on the spine: the ResNet encoder gives logits over K codes at each
position of the h x w grid; training decodes a Gumbel-softmax relaxed one-hot (jvlm.objectives.gumbel) through
a learned [K, code_dim] codebook, with tau annealed and the KL to the uniform prior ramped in. Inference uses
hard codes: the argmax of the logits, no noise.

Loss (per pixel dimension, images in [-1, 1]): MSE(x_hat, x) + beta * mean over positions of KL(q || U(K)).
Settings are in `config.model.quantizer`; the tau and beta schedules are given as fractions of total_steps,
so a shortened run keeps their shape.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jvlm.config import ConfigError
from jvlm.data.pixels import images_to_float
from jvlm.models.autoencoder import Decoder, Encoder
from jvlm.objectives import gumbel, vq
from jvlm.tasks.image_autoencoder import ImageAutoencoderTask, code_metrics, psnr_per_image
from jvlm.train import optim
from jvlm.train.step import LossOutput, ParamGroup


class DiscreteVAE(nn.Module):
    """logits: images [-1, 1] -> [B, h, w, K]; decode: (relaxed) one-hots [B, h, w, K] -> images;
    decode_codes: int codes [B, h, w] -> images (the same codebook rows, looked up)."""
    encoder: dict[str, Any]
    decoder: dict[str, Any]   # decoder_settings(): the encoder's, optionally wider or deeper
    codebook_size: int
    code_dim: int
    dtype: Any = jnp.float32

    def setup(self):
        self.enc = Encoder(out_channels=self.codebook_size, dtype=self.dtype, **self.encoder)
        self.dec = Decoder(dtype=self.dtype, **self.decoder)
        # Unit-scale rows: a one-hot then feeds the decoder's first conv inputs of the scale its init expects.
        self.codebook = self.param("codebook", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), (None, None)), (self.codebook_size, self.code_dim))

    def logits(self, images):
        return self.enc(images).astype(jnp.float32)

    def decode(self, one_hot):
        return self.dec(one_hot @ self.codebook)

    def decode_codes(self, codes):
        return self.dec(jnp.take(self.codebook, codes, axis=0))

    def __call__(self, images):  # for init only: touches every parameter
        return self.decode(jax.nn.softmax(self.logits(images)))


class DVAETask(ImageAutoencoderTask):

    def validate(self) -> None:
        super().validate()
        q = self.config.model.quantizer
        if q.codebook_size < 2:
            raise ConfigError(f"config.model.quantizer.codebook_size must be >= 2, got {q.codebook_size}.")
        if not 0 < q.temperature_end <= q.temperature_start:
            raise ConfigError(f"config.model.quantizer needs 0 < temperature_end <= temperature_start, got "
                              f"{q.temperature_end} and {q.temperature_start}.")
        for key in ("temperature_anneal_fraction", "kl_warmup_fraction"):
            if not 0 <= q[key] <= 1:
                raise ConfigError(f"config.model.quantizer.{key} is a fraction of total_steps in [0, 1], got {q[key]}.")

    @property
    def model(self) -> DiscreteVAE:
        m, q = self.config.model, self.config.model.quantizer
        return DiscreteVAE(**self.encoder_decoder, codebook_size=q.codebook_size, code_dim=q.code_dim,
                           dtype=jnp.dtype(m.dtype))

    def init(self, rng):
        d = self.config.data
        return {"main": self.model.init(rng, jnp.zeros((1, d.image_size, d.image_size, 3)))["params"]}, {}

    def param_groups(self, params) -> list[ParamGroup]:
        tx, schedule, frozen = optim.make_optimizer(self.config.optimizer, params["main"], self.config.total_steps)
        return [ParamGroup("main", self.loss_fn, tx, schedule, frozen)]

    # ------------------------------------------------------------------ training
    def schedules(self, step) -> tuple[jax.Array, jax.Array]:
        """(tau, beta) at a (traced) step."""
        q, n = self.config.model.quantizer, self.config.total_steps
        tau = gumbel.temperature_schedule(step, q.temperature_start, q.temperature_end,
                                          round(q.temperature_anneal_fraction * n))
        return tau, gumbel.linear_warmup(step, q.kl_weight, round(q.kl_warmup_fraction * n))

    def loss_fn(self, params, batch, rng, ctx) -> LossOutput:
        p, q = params["main"], self.config.model.quantizer
        x = images_to_float(batch["image"])
        logits = self.model.apply({"params": p}, x, method=DiscreteVAE.logits)
        tau, beta = self.schedules(ctx.step)
        sample = gumbel.gumbel_softmax(rng, logits, tau, hard=q.hard)
        x_hat = self.model.apply({"params": p}, sample, method=DiscreteVAE.decode)
        mse = jnp.mean(jnp.square(x_hat - x))
        kl = jnp.mean(gumbel.kl_to_uniform(logits))
        _, perplexity, usage = vq.code_statistics(jnp.argmax(logits, axis=-1), q.codebook_size)
        metrics = {"mse": mse, "kl": kl, "temperature": tau, "kl_weight": beta,
                   "psnr": jnp.mean(psnr_per_image(x_hat, x)),  # of relaxed samples
                   "perplexity": perplexity, "codebook_usage": usage}
        return LossOutput(mse + beta * kl, metrics)

    # ------------------------------------------------------------------ inference and evaluation
    def functions(self) -> dict:
        """Jitted tokenize(params, model_state, uint8 images) -> codes [B, h, w] and
        detokenize(params, model_state, codes) -> float images in [-1, 1]; model_state is unused."""
        if not hasattr(self, "_functions"):
            model = self.model

            def tokenize(p, ms, images):
                logits = model.apply({"params": p}, images_to_float(images), method=DiscreteVAE.logits)
                return jnp.argmax(logits, axis=-1).astype(jnp.int32)

            def detokenize(p, ms, codes):
                return model.apply({"params": p}, codes, method=DiscreteVAE.decode_codes)

            self._functions = {"tokenize": jax.jit(tokenize), "detokenize": jax.jit(detokenize)}
        return self._functions

    def reconstruct_fn(self):
        """Hard codes (what tokenize gives), plus per image the KL and the PSNR of decoding a Gumbel sample at
        the final tau instead, as in training: a large gap to eval/psnr means broad posteriors."""
        fn, model, q = self.functions(), self.model, self.config.model.quantizer

        @jax.jit
        def relaxed(p, images, rng):
            x = images_to_float(images)
            logits = model.apply({"params": p}, x, method=DiscreteVAE.logits)
            sample = gumbel.gumbel_softmax(rng, logits, q.temperature_end)
            x_hat = model.apply({"params": p}, sample, method=DiscreteVAE.decode)
            return {"kl": jnp.mean(gumbel.kl_to_uniform(logits), axis=(1, 2)),
                    "psnr_sampled": psnr_per_image(x_hat, x)}

        def reconstruct(p, ms, images, rng):
            codes = fn["tokenize"](p, ms, images)
            return fn["detokenize"](p, ms, codes), {"codes": codes, **relaxed(p, images, rng)}
        return reconstruct

    def summarize(self, per_example) -> dict[str, Any]:
        return {**code_metrics(per_example["codes"], self.config.model.quantizer.codebook_size),
                "eval/kl": float(np.mean(per_example["kl"])),
                "eval/psnr_sampled": float(np.mean(per_example["psnr_sampled"]))}
