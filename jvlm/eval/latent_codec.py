"""A trained, frozen autoencoder as the data space of latent diffusion (Rombach et al. 2022).

    codec = LatentCodec.load("runs/vae_shapes", image_size=32, scale=0.0, workdir="runs/ldm")
    z = codec.encode(uint8_images)    # traceable: [B, h, w, C] latents times `scale`
    x = codec.decode(z)               # -> images in [-1, 1]

VAE runs give the posterior mean; VQ-VAE / VQ-GAN runs the encoder's output before quantization, and
decoding quantizes first (LDM's VQ-regularized first stage). Latents are multiplied by `scale` so that
they have about unit variance (LDM's 0.18215 for SD's VAE): scale 0 measures 1/std on 512 training
images once and writes it to WORKDIR/latent_scale.json, which a resumed run or `experiments.sample`
reads back, so one run always uses one scale. The autoencoder's parameters are constants of the
programs that use it: it never trains here.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jvlm.config import ConfigError
from jvlm.data import shapes
from jvlm.data.pixels import images_to_float
from jvlm.models.autoencoder import downsampling_factor
from jvlm.train.run_loader import load_run

AUTOENCODER_TASKS = ("vae", "vqvae", "vqgan")
SCALE_FILE = "latent_scale.json"


class LatentCodec:
    def __init__(self, config: ml_collections.ConfigDict, params, model_state, run: str, scale: float):
        from jvlm.tasks import get_task_class

        self.config, self.params, self.model_state, self.run = config, params, model_state, run
        self.task = get_task_class(config.task)(config, None, None)
        self.scale = scale

    @classmethod
    def load(cls, run: str, image_size: int, *, scale: float = 0.0, workdir: str | None = None) -> "LatentCodec":
        def same_size(config):
            if config.data.image_size != image_size:
                raise ConfigError(f"the autoencoder in {run} was trained on {config.data.image_size}x"
                                  f"{config.data.image_size} images but config.data.image_size={image_size}; "
                                  f"use the same size.")

        loaded = load_run(run, AUTOENCODER_TASKS, f"set latent.run to an autoencoder run "
                                                  f"({', '.join(AUTOENCODER_TASKS)})", check=same_size)
        codec = cls(loaded.config, loaded.params["main"], loaded.model_state, run, 1.0)
        codec.scale = scale or codec._stored_or_measured_scale(workdir)
        return codec

    def _stored_or_measured_scale(self, workdir: str | None) -> float:
        path = os.path.join(workdir, SCALE_FILE) if workdir else None
        if path and os.path.exists(path):
            with open(path) as f:
                return float(json.load(f)["scale"])
        source = shapes.ShapesSource("train", image_size=self.config.data.image_size, seed=self.config.data.seed)
        images = np.stack([source[i]["image"] for i in range(512)])
        z = np.asarray(jax.jit(self._encode_unscaled)(images))
        scale = float(1.0 / z.std())
        if path and jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump({"scale": scale, "autoencoder": self.run, "measured_on": "512 shapes train images"}, f)
            os.replace(path + ".tmp", path)
        return scale

    @property
    def channels(self) -> int:
        m = self.config.model
        return m.latent_channels if self.config.task == "vae" else m.quantizer.code_dim

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.config.data.image_size // downsampling_factor(self.config.model.encoder.ch_mult)
        return (s, s, self.channels)

    @property
    def description(self) -> str:
        h, w, c = self.latent_shape
        return f"{self.config.task} from {self.run}, latents {h}x{w}x{c} times {self.scale:.4g}"

    def _encode_unscaled(self, images):
        if self.config.task == "vae":
            return self.task.posterior(self.params, images, jax.random.key(0)).mean
        from jvlm.tasks.vqvae import VQAutoencoder
        return self.task.model.apply({"params": self.params}, images_to_float(images), method=VQAutoencoder.encode)

    def encode(self, images) -> jax.Array:
        """uint8 images [B, H, W, 3] -> scaled latents (gradient-stopped: the autoencoder is frozen)."""
        return jax.lax.stop_gradient(self._encode_unscaled(images) * self.scale)

    def decode(self, z) -> jax.Array:
        z = z / self.scale
        if self.config.task == "vae":
            return self.task.decode(self.params, z)
        from jvlm.tasks.vqvae import VQAutoencoder
        z_q = self.task.quantize(self.params, self.model_state, z).quantized
        return self.task.model.apply({"params": self.params}, z_q, method=VQAutoencoder.decode)
