"""VQ-VAE image tokenizer on the spine: ResNet encoder/decoder + vector quantizer (jvlm.objectives.vq).

Options against codebook collapse (all in `config.model.quantizer`): `ema_decay > 0` moves codes by
EMA of their assigned encoder outputs instead of the codebook loss (the codebook then lives in the
non-gradient model state); `restart_below > 0` restarts codes whose assignment share fell below that
fraction of a uniform share (needs EMA); `kmeans_init > 0` starts the EMA codebook at that many
k-means iterations on the first batch's encoder outputs (else the random codes sit far from the
encoder's outputs and most of them die in the first hundreds of steps); `cosine` compares
l2-normalized codes; `lookup_dim > 0` looks codes up in a low-dimensional projection (ViT-VQGAN's
factorized codes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jvlm.config import ConfigError
from jvlm.data.pixels import images_to_float
from jvlm.models.autoencoder import Decoder, Encoder
from jvlm.models.layers import dense_init
from jvlm.objectives import vq
from jvlm.tasks.image_autoencoder import ImageAutoencoderTask, code_metrics, psnr_per_image
from jvlm.train import optim
from jvlm.train.step import LossOutput, ParamGroup


class VQAutoencoder(nn.Module):
    """encode: images [-1, 1] -> z_e [B, h, w, code_dim]; decode: codes -> images. The codebook is a
    parameter unless EMA updates it (then the caller passes it from the model state)."""
    encoder: dict[str, Any]
    decoder: dict[str, Any]   # decoder_settings(): the encoder's, optionally wider or deeper
    codebook_size: int
    code_dim: int
    lookup_dim: int = 0          # > 0: quantize in a projected space of this size
    learned_codebook: bool = True
    dtype: Any = jnp.float32

    def setup(self):
        self.enc = Encoder(out_channels=self.code_dim, dtype=self.dtype, **self.encoder)
        self.dec = Decoder(dtype=self.dtype, **self.decoder)
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

    def decode(self, z_q, features_only: bool = False):
        return self.dec(self.from_lookup(z_q) if self.lookup_dim else z_q, features_only)

    def __call__(self, images):  # for init only: touches every parameter
        z = self.encode(images)
        return self.decode(z)


class VQVAETask(ImageAutoencoderTask):

    def validate(self) -> None:
        super().validate()
        q = self.config.model.quantizer
        if q.restart_below > 0 and q.ema_decay <= 0:
            raise ConfigError("config.model.quantizer.restart_below needs EMA codebook updates: set "
                              "model.quantizer.ema_decay (e.g. 0.99) or restart_below=0.")
        if self._kmeans_iters > 0 and q.ema_decay <= 0:
            raise ConfigError("config.model.quantizer.kmeans_init initializes the EMA codebook: set "
                              "model.quantizer.ema_decay (e.g. 0.99) or kmeans_init=0.")
        if q.codebook_size < 2:
            raise ConfigError(f"config.model.quantizer.codebook_size must be >= 2, got {q.codebook_size}.")

    @property
    def model(self) -> VQAutoencoder:
        m, q = self.config.model, self.config.model.quantizer
        return VQAutoencoder(**self.encoder_decoder, codebook_size=q.codebook_size, code_dim=q.code_dim,
                             lookup_dim=q.lookup_dim, learned_codebook=q.ema_decay <= 0, dtype=jnp.dtype(m.dtype))

    @property
    def _ema(self) -> bool:
        return self.config.model.quantizer.ema_decay > 0

    @property
    def _kmeans_iters(self) -> int:
        """k-means iterations that start the EMA codebook; 0 for runs saved before the option existed."""
        return self.config.model.quantizer.get("kmeans_init", 0)

    def init(self, rng):
        d = self.config.data
        params = self.model.init(rng, jnp.zeros((1, d.image_size, d.image_size, 3)))["params"]
        state = {}
        if self._ema:  # codes start at scaled random directions; EMA then pulls them to the data
            q = self.config.model.quantizer
            book = jax.random.normal(jax.random.fold_in(rng, 1), (q.codebook_size, q.lookup_dim or q.code_dim))
            book = vq.l2_normalize(book) if q.cosine else book
            state = {"codebook": book, "ema": vq.ema_init(book),
                     "usage": jnp.full((q.codebook_size,), 1.0 / q.codebook_size),
                     "initialized": jnp.asarray(self._kmeans_iters <= 0)}
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

    def encode_quantize(self, p, model_state, x):
        z = self.model.apply({"params": p}, x, method=VQAutoencoder.encode)
        return z, self.quantize(p, model_state, z)

    def quantizer_loss(self, out: vq.VQOutput) -> jax.Array:
        """Commitment, plus the codebook loss unless EMA moves the codes."""
        return out.commitment_loss + (0.0 if self._ema else out.codebook_loss)

    def quantizer_metrics(self, x, x_hat, out: vq.VQOutput) -> dict:
        return {"psnr": jnp.mean(psnr_per_image(x_hat, x)),
                "perplexity": out.perplexity, "codebook_usage": out.usage,
                "commitment_loss": out.commitment_loss, "codebook_loss": out.codebook_loss}

    def codebook_update(self, model_state, z, out, rng, metrics: dict):
        """The new model state (None without EMA); records restarted codes in `metrics`."""
        if not self._ema:
            return None
        new_state, metrics["restarted_codes"] = self._update_codebook(model_state, z, out, rng)
        return new_state

    def loss_fn(self, params, batch, rng, ctx) -> LossOutput:
        p = params["main"]
        x = images_to_float(batch["image"])
        z, out = self.encode_quantize(p, ctx.model_state, x)
        x_hat = self.model.apply({"params": p}, out.quantized, method=VQAutoencoder.decode)
        mse = jnp.mean(jnp.square(x_hat - x))
        metrics = {"mse": mse, **self.quantizer_metrics(x, x_hat, out)}
        new_state = self.codebook_update(ctx.model_state, z, out, rng, metrics)
        return LossOutput(mse + self.quantizer_loss(out), metrics, new_state)

    def _update_codebook(self, state, z, out, rng):
        q = self.config.model.quantizer
        zs = vq.l2_normalize(z) if q.cosine else z
        if self._kmeans_iters > 0:  # the first step replaces the random codes by k-means centroids
            state = jax.lax.cond(state["initialized"], lambda s: s, lambda s: self._kmeans_state(s, zs, rng), state)
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
        return {**state, "codebook": book, "ema": ema, "usage": usage}, restarted

    def _kmeans_state(self, state, zs, rng):
        q = self.config.model.quantizer
        book = vq.kmeans(zs, q.codebook_size, jax.random.fold_in(rng, 7), iters=self._kmeans_iters)
        book = vq.l2_normalize(book) if q.cosine else book
        return {**state, "codebook": book, "ema": vq.ema_init(book), "initialized": jnp.asarray(True)}

    # ------------------------------------------------------------------ inference and evaluation
    def functions(self) -> dict:
        """Jitted tokenize(params, model_state, uint8 images) -> codes [B, h, w] and
        detokenize(params, model_state, codes) -> float images in [-1, 1]."""
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

    def reconstruct_fn(self):
        fn = self.functions()

        def reconstruct(p, ms, images, rng):
            codes = fn["tokenize"](p, ms, images)
            return fn["detokenize"](p, ms, codes), {"codes": codes}
        return reconstruct

    def summarize(self, per_example) -> dict[str, Any]:
        return code_metrics(per_example["codes"], self.config.model.quantizer.codebook_size)
