"""A trained image tokenizer (VQ-VAE, VQ-GAN, dVAE run) outside training: images <-> code grids.

    from jvlm.eval.image_tokenizer import ImageTokenizer
    tok = ImageTokenizer.load("runs/vqgan_shapes")
    codes = tok.tokenize(images)        # uint8 [N, H, W, 3] -> int32 [N, H/f, W/f]
    images = tok.detokenize(codes)      # -> uint8 [N, H, W, 3]

The same jitted functions the run's evaluation uses; the codebook comes from the checkpoint (a
parameter, or the EMA codebook in the model state).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jvlm.data.pixels import float_to_uint8
from jvlm.models.autoencoder import downsampling_factor
from jvlm.train.run_loader import load_run

TOKENIZER_TASKS = ("vqvae", "vqgan", "dvae")


class ImageTokenizer:
    def __init__(self, config: ml_collections.ConfigDict, params, model_state, step: int):
        from jvlm.tasks import get_task_class

        self.config, self.params, self.model_state, self.step = config, params, model_state, step
        self._fn = get_task_class(config.task)(config, None, None).functions()

    @classmethod
    def load(cls, workdir: str, *, ema: bool = True) -> "ImageTokenizer":
        """The newest checkpoint of a tokenizer run (its EMA parameters when the run kept them)."""
        run = load_run(workdir, TOKENIZER_TASKS,
                       f"give the workdir of an image tokenizer run ({', '.join(TOKENIZER_TASKS)})", ema=ema)
        return cls(run.config, run.params["main"], run.model_state, run.step)

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    @property
    def codebook_size(self) -> int:
        return self.config.model.quantizer.codebook_size

    @property
    def grid_size(self) -> int:
        return self.image_size // downsampling_factor(self.config.model.encoder.ch_mult)

    def tokenize(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, image_size, image_size, 3] -> int32 codes [N, grid_size, grid_size]."""
        images = np.asarray(images)
        want = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != want:
            raise ValueError(f"tokenize expects uint8 images [N, {', '.join(map(str, want))}] (this tokenizer's "
                             f"training size), got shape {images.shape}; resize or convert to RGB first")
        if images.dtype != np.uint8:
            raise ValueError(f"tokenize expects uint8 pixels in [0, 255], got dtype {images.dtype}")
        return np.concatenate([np.asarray(self._fn["tokenize"](self.params, self.model_state, images[i:i + batch_size]))
                               for i in range(0, len(images), batch_size)]).astype(np.int32)

    def detokenize(self, codes: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """int codes [N, grid_size, grid_size] in [0, codebook_size) -> uint8 images [N, H, W, 3]."""
        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.shape[1:] != (self.grid_size, self.grid_size):
            raise ValueError(f"detokenize expects codes [N, {self.grid_size}, {self.grid_size}], got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}); got [{codes.min()}, {codes.max()}]")
        return np.concatenate([float_to_uint8(self._fn["detokenize"](self.params, self.model_state,
                                                                     codes[i:i + batch_size]))
                               for i in range(0, len(codes), batch_size)])
