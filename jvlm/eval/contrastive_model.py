"""Inference with a trained contrastive (SigLIP/CLIP/LiT) run: encode images and texts, zero-shot classify.

    from jvlm.eval.contrastive_model import ContrastiveModel
    model = ContrastiveModel.load("runs/siglip_shapes")
    probs = model.zero_shot(images, ["red circle", "blue square"], templates=("a {}",))

The run's own preprocessing (resize/crop to the trained size, [-1, 1] scaling) and tokenizer are used.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jvlm.data.sources import load_image
from jvlm.data.tokenizer import Tokenizer
from jvlm.eval.metrics import average_templates, class_prompts, configured_reduction, template_scores
from jvlm.tasks.contrastive import ContrastiveTask
from jvlm.train.run_loader import load_run


class ContrastiveModel:
    def __init__(self, config: ml_collections.ConfigDict, params, tokenizer: Tokenizer, step: int):
        self.config, self.params, self.tokenizer, self.step = config, params, tokenizer, step
        encoders = ContrastiveTask(config, None, None).encoders()  # the same jitted towers training evaluates
        self._image, self._text = encoders["image"], encoders["text"]
        self._scale = (float(np.exp(params["logit_scale"])),
                       float(params["logit_bias"]) if "logit_bias" in params else None)

    @classmethod
    def load(cls, workdir: str, *, ema: bool = True) -> "ContrastiveModel":
        """The newest checkpoint of a run (its EMA parameters when the run kept them)."""
        run = load_run(workdir, ("contrastive",), "give the workdir of a contrastive run", ema=ema)
        return cls(run.config, run.params["main"], run.tokenizer, run.step)

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    def preprocess(self, images) -> np.ndarray:
        """uint8 [N, H, W, 3] at the trained size, from arrays, PIL images or paths."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:3] == (self.image_size,) * 2:
            if images.shape[-1] != 3:
                raise ValueError(f"images have {images.shape[-1]} channels; expected RGB (3).")
            return images.astype(np.uint8)
        return np.stack([load_image(_as_loadable(im), self.image_size) for im in images])

    def encode_image(self, images, batch_size: int = 256) -> np.ndarray:
        """L2-normalized image embeddings [N, D]."""
        x = self.preprocess(images)
        return np.concatenate([np.asarray(self._image(self.params, x[i:i + batch_size]))
                               for i in range(0, len(x), batch_size)])

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalized text embeddings [N, D]; texts longer than the context are truncated."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string.")
        tokens, _ = self.tokenizer.encode_batch(list(texts), self.config.data.max_text_len)
        return np.concatenate([np.asarray(self._text(self.params, tokens[i:i + batch_size]))
                               for i in range(0, len(tokens), batch_size)])

    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str] = ("a {}",)) -> np.ndarray:
        """One embedding per class: the normalized mean over the templates (CLIP's prompt ensembling)."""
        emb = self.encode_text(class_prompts(class_names, templates))
        return average_templates(emb, len(class_names), len(templates))

    @property
    def template_reduce(self) -> str:
        """How zero-shot scores combine templates, as the run was evaluated (eval.template_reduce)."""
        return configured_reduction(self.config.eval)

    def class_scores(self, image_emb: np.ndarray, class_names: Sequence[str], templates: Sequence[str] = ("a {}",),
                     reduce: str | None = None) -> np.ndarray:
        """Cosine scores [N, C] of image embeddings against the classes' prompts, combined over the
        templates by `reduce` ("mean_embedding" or "max"; default: the run's eval.template_reduce)."""
        emb = self.encode_text(class_prompts(class_names, templates))
        return template_scores(image_emb, emb, len(class_names), len(templates), reduce or self.template_reduce)

    def zero_shot(self, images, class_names: Sequence[str], templates: Sequence[str] = ("a {}",),
                  reduce: str | None = None) -> np.ndarray:
        """Class probabilities [N, C]: a softmax over the model's scaled similarities."""
        logits = self._scale[0] * self.class_scores(self.encode_image(images), class_names, templates, reduce)
        return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))


def _as_loadable(image):
    if hasattr(image, "convert"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    return image
