"""Contrastive image-text pretraining (SigLIP / CLIP / LiT) on the spine."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jvlm import sharding
from jvlm.config import ConfigError, check_choice, check_data_source
from jvlm.data import shapes
from jvlm.data.hard_negatives import WordSwapNegatives
from jvlm.data.pipeline import StepIndexedLoader, fixed_batches
from jvlm.data.pixels import images_to_float
from jvlm.data.sources import make_source
from jvlm.eval.metrics import (TEMPLATE_REDUCTIONS, class_prompts, configured_reduction, retrieval_recall,
                               template_scores, topk_accuracy)
from jvlm.data.tokenizer import Tokenizer, shapes_tokenizer, train_sentencepiece
from jvlm.models.two_tower import TwoTower
from jvlm.objectives import contrastive
from jvlm.tasks.base import Task
from jvlm.train import optim
from jvlm.train.step import LossOutput, ParamGroup, merge_microbatches, split_microbatches


class ContrastiveTask(Task):
    data_sources = ("shapes", "folder", "tfds")

    def validate(self) -> None:
        c, m = self.config, self.config.model
        check_choice("model.loss", m.loss, ("sigmoid", "softmax"))
        check_choice("model.loss_impl", m.loss_impl, ("dense", "ring", "all_gather"))
        if m.loss == "softmax" and m.loss_impl == "ring":
            raise ConfigError("config.model.loss_impl='ring' is for the sigmoid loss; the softmax needs the whole "
                              "batch's normalizer: use loss_impl='all_gather' or 'dense'.")
        check_data_source(c, self.data_sources, "the contrastive task")
        if c.data.source == "folder" and not c.data.path:
            raise ConfigError("config.data.source='folder' needs config.data.path: a .jsonl file of "
                              '{"image": ..., "caption": ...} lines or a folder of images with .txt captions.')
        if c.data.source == "tfds" and not c.data.tfds_name:
            raise ConfigError("config.data.source='tfds' needs config.data.tfds_name (a prepared dataset).")
        dp = sharding.data_parallel_size(self.mesh.shape)
        if c.eval.batch_size % dp:
            raise ConfigError(f"config.eval.batch_size={c.eval.batch_size} is not divisible by the data-parallel "
                              f"size {dp}; use a multiple of {dp}.")
        size, patch = c.data.image_size, m.image.patch_size
        if size % patch:
            raise ConfigError(
                f"config.data.image_size={size} is not divisible by config.model.image.patch_size={patch}; "
                f"pick a patch size that divides the image size (e.g. {_divisor_hint(size, patch)}).")
        if not m.image_head and m.embed_dim != m.image.width:
            raise ConfigError(f"config.model.image_head=False uses the image features as the embedding, so "
                              f"config.model.embed_dim ({m.embed_dim}) must equal model.image.width ({m.image.width}).")
        for tower in ("image", "text"):
            t = m[tower]
            if t.width % t.num_heads:
                raise ConfigError(f"config.model.{tower}.width={t.width} is not divisible by "
                                  f"config.model.{tower}.num_heads={t.num_heads}.")
        k = c.data.get("hard_negatives", 0)
        if k < 0:
            raise ConfigError(f"config.data.hard_negatives={k}: the number of hard-negative captions per "
                              f"example must be >= 0 (0 turns them off).")
        if k and not c.data.swap_groups:
            raise ConfigError("config.data.hard_negatives > 0 needs config.data.swap_groups: space-separated "
                              "word groups to swap within, e.g. ('circle square triangle',).")
        if k and m.loss == "softmax" and m.loss_impl != "dense":
            raise ConfigError("hard negatives with the softmax loss need config.model.loss_impl='dense' (they join "
                              "each image's own softmax row); the sigmoid loss supports them with every loss_impl.")
        if k:
            self.negatives  # noqa: B018 -- builds the swapper now: malformed groups fail before anything compiles
        check_choice("eval.template_reduce", configured_reduction(c.eval), TEMPLATE_REDUCTIONS)
        if not 32 <= size <= 256:
            raise ConfigError(f"config.data.image_size={size} is outside the shapes dataset's range 32..256.")

    def setup(self) -> None:
        d = self.config.data

        def train(path):  # on the captions, once
            if d.source == "shapes":
                shapes_tokenizer(path, vocab_size=d.vocab_size, seed=d.seed)
            else:
                src = self._source("train")
                captions = (src[i]["caption"] for i in range(min(len(src), 20_000)))
                train_sentencepiece(captions, path, vocab_size=d.vocab_size, model_type="bpe")
        self.tokenizer = self.setup_tokenizer(Tokenizer, train)

    @property
    def model(self) -> TwoTower:
        c = self.config
        m = c.model
        return TwoTower(
            image=dict(m.image), text=dict(m.text) | dict(vocab_size=c.data.vocab_size, max_len=c.data.max_text_len),
            embed_dim=m.embed_dim, loss=m.loss, dtype=jnp.dtype(m.dtype), remat=m.remat, image_head=m.image_head)

    def _dummy_batch(self):
        d = self.config.data
        return (jnp.zeros((1, d.image_size, d.image_size, 3), jnp.float32),
                jnp.zeros((1, d.max_text_len), jnp.int32))

    def init(self, rng):
        variables = self.model.init(rng, *self._dummy_batch())
        return {"main": variables["params"]}, {}

    def param_groups(self, params) -> list[ParamGroup]:
        tx, schedule, frozen = optim.make_optimizer(self.config.optimizer, params["main"], self.config.total_steps)
        return [ParamGroup("main", self.loss_fn, tx, schedule, frozen)]

    # The generic step's accumulation averages per-micro-batch losses, which would drop the negatives
    # of other micro-batches; this task accumulates with a feature cache instead (see embed_batch).
    handles_grad_accum = True

    @property
    def num_negatives(self) -> int:
        return self.config.data.get("hard_negatives", 0)

    def embed_batch(self, params, batch):
        """(zimg, ztxt, zneg, t', b) for the whole batch, encoded in `grad_accum_steps` micro-batches;
        zneg [N, K, D] embeds the hard-negative captions (None without them).

        Two-pass feature cache (GradCache): a scan over micro-batches whose body is
        `jax.checkpoint`-ed keeps only the embeddings in the forward pass; the loss then sees every
        negative of the full batch, and the scan's backward pass re-runs one micro-batch's towers at a
        time to backpropagate the embedding gradients. Equal to one large batch (tested).
        """
        keys = ("image", "text", "neg_text") if self.num_negatives else ("image", "text")

        def apply(p, mb):
            n, texts = mb["text"].shape[0], mb["text"]
            if "neg_text" in mb:  # one text-tower call for captions and their negatives
                texts = jnp.concatenate([texts, mb["neg_text"].reshape(-1, texts.shape[-1])])
            zimg, zall, scale, bias = self.model.apply({"params": p}, images_to_float(mb["image"]), texts)
            zneg = zall[n:].reshape(n, -1, zall.shape[-1]) if "neg_text" in mb else None
            return zimg, zall[:n], zneg, scale, bias

        k = self.config.get("grad_accum_steps", 1)
        if k == 1:
            return apply(params, {key: batch[key] for key in keys})
        micro = split_microbatches({key: batch[key] for key in keys}, k)

        def body(_, mb):
            return None, jax.checkpoint(apply)(params, mb)

        _, (zimg, ztxt, zneg, scale, bias) = jax.lax.scan(body, None, micro)
        return (merge_microbatches(zimg), merge_microbatches(ztxt), None if zneg is None else merge_microbatches(zneg),
                scale[0], None if bias is None else bias[0])

    def loss_fn(self, params, batch, rng, ctx) -> LossOutput:
        zimg, ztxt, zneg, scale, bias = self.embed_batch(params["main"], batch)
        m = self.config.model
        if m.loss == "sigmoid":
            if m.loss_impl == "dense":
                loss = contrastive.sigmoid_loss(zimg, ztxt, scale, bias)
            else:
                loss = contrastive.sharded_sigmoid_loss(zimg, ztxt, scale, bias, mesh=self.mesh,
                                                        axis=sharding.BATCH_AXES, impl=m.loss_impl)
            metrics = {"temperature": jnp.exp(scale), "bias": bias}
            if zneg is not None:
                neg = contrastive.sigmoid_hard_negative_loss(zimg, zneg, scale, bias, batch["neg_valid"])
                loss, metrics["hard_negative_loss"] = loss + neg, neg
            return LossOutput(loss, metrics)
        if m.loss_impl == "dense":
            loss = contrastive.softmax_contrastive_loss(
                zimg, ztxt, scale, zneg=zneg, neg_valid=None if zneg is None else batch["neg_valid"])
        else:
            loss = contrastive.sharded_softmax_contrastive_loss(zimg, ztxt, scale, mesh=self.mesh,
                                                                axis=sharding.BATCH_AXES)
        return LossOutput(loss, {"temperature": jnp.exp(jnp.minimum(scale, jnp.log(100.0)))})

    def abstract_batch(self, batch_size):
        d, k = self.config.data, self.num_negatives
        out = {"image": jax.ShapeDtypeStruct((batch_size, d.image_size, d.image_size, 3), jnp.uint8),
               "text": jax.ShapeDtypeStruct((batch_size, d.max_text_len), jnp.int32)}
        if k:
            out["neg_text"] = jax.ShapeDtypeStruct((batch_size, k, d.max_text_len), jnp.int32)
            out["neg_valid"] = jax.ShapeDtypeStruct((batch_size, k), jnp.bool_)
        return out

    def transform(self, example: dict, rng: np.random.Generator) -> dict:
        if self.config.data.flip and self.config.data.source == "shapes" and rng.random() < 0.5:
            example = shapes.flip_horizontal(example)  # swaps left/right in the caption too
        L = self.config.data.max_text_len
        tokens, truncated = self.tokenizer.encode(example["caption"], L)
        out = {"image": example["image"], "text": tokens, "_truncated": np.asarray(truncated)}
        if self.num_negatives:
            captions, out["neg_valid"] = self.negatives(example["caption"], rng)
            out["neg_text"] = self.tokenizer.encode_batch(captions, L)[0]
        return out

    @property
    def negatives(self) -> WordSwapNegatives:
        if not hasattr(self, "_negatives"):
            groups = [g.split() for g in self.config.data.swap_groups]
            self._negatives = WordSwapNegatives(groups, self.num_negatives)
        return self._negatives

    def _source(self, split: str):
        """Training data from the configured source; zero-shot splits always come from shapes."""
        d = self.config.data
        if d.source == "shapes" or split != "train":
            return shapes.ShapesSource(split, image_size=d.image_size, seed=d.seed)
        # Built once: the tokenizer pass (setup) and the training loader read the same source, so its scan and
        # its warnings about dropped or unreadable records happen once per run.
        if getattr(self, "_user_source", None) is None:
            if d.source == "folder":
                self._user_source = make_source("folder", path=d.path, image_size=d.image_size)
            else:
                self._user_source = make_source("tfds", name=d.tfds_name, split=d.tfds_split, image_size=d.image_size,
                                                data_dir=d.tfds_data_dir or None, caption_key=d.caption_key)
        return self._user_source

    def train_loader(self, start_step, rows):
        c = self.config
        return StepIndexedLoader(
            self._source("train"), global_batch=c.batch_size, seed=c.seed, transform=self.transform,
            start_step=start_step, num_steps=c.total_steps, rows=rows, num_threads=c.data.num_threads, prefetch=c.data.prefetch)

    # ---------------------------------------------------------------- evaluation
    def _encode(self, params, mesh, split: str, num: int, *, text: bool):
        """Embeddings (and labels) of the first `num` examples of a split, computed sharded."""
        c = self.config
        bs = c.eval.batch_size
        fn = self.encoders()
        img_out, txt_out, labels = [], [], []
        plain = lambda ex, rng: {"image": ex["image"], "label": np.int32(ex["label"]),  # noqa: E731
                                 "text": self.tokenizer.encode(ex["caption"], c.data.max_text_len)[0]}
        for batch in fixed_batches(self._source(split), batch_size=bs, num_examples=num, transform=plain):
            valid = batch["_valid"]
            g = sharding.global_batch_from_full(batch, mesh)
            img_out.append(sharding.to_host(fn["image"](params, g["image"]))[valid])
            if text:
                txt_out.append(sharding.to_host(fn["text"](params, g["text"]))[valid])
            labels.append(batch["label"][valid])
        return (np.concatenate(img_out), np.concatenate(txt_out) if text else None, np.concatenate(labels))

    def encoders(self) -> dict:
        """Jitted {'image': f(params, uint8 images), 'text': f(params, tokens)} -> normalized embeddings."""
        if not hasattr(self, "_encoders"):
            model = self.model
            self._encoders = {
                "image": jax.jit(lambda p, x: model.apply({"params": p}, images_to_float(x),
                                                          method=TwoTower.encode_image)),
                "text": jax.jit(lambda p, t: model.apply({"params": p}, t, method=TwoTower.encode_text)),
            }
        return self._encoders

    def prompt_embeddings(self, params, mesh) -> np.ndarray:
        """Embeddings of every template filled with every colour x shape class, [C*T, D] (class-major)."""
        prompts = class_prompts(shapes.class_names(), tuple(self.config.eval.templates))
        tokens = self.tokenizer.encode_batch(prompts, self.config.data.max_text_len)[0]
        pad = (-len(tokens)) % sharding.data_parallel_size(mesh.shape)
        tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), np.int32)])
        g = sharding.global_batch_from_full({"text": tokens}, mesh)
        return sharding.to_host(self.encoders()["text"](params, g["text"]))[:len(prompts)]

    def evaluate(self, state, mesh) -> dict[str, Any]:
        if self.config.data.source != "shapes":  # zero-shot classes are the shapes classes
            return {}
        params = (state.ema_params or state.params)["main"]
        c = self.config
        n, reduce = c.eval.num_examples, configured_reduction(c.eval)
        prompts = self.prompt_embeddings(params, mesh)
        scores = lambda zimg, how: template_scores(  # noqa: E731
            zimg, prompts, len(shapes.class_names()), len(c.eval.templates), how)
        out = {}
        for split, key in (("zeroshot_seen", "zeroshot"), ("zeroshot_unseen", "zeroshot_unseen")):
            zimg, _, labels = self._encode(params, mesh, split, n, text=False)
            acc = topk_accuracy(scores(zimg, reduce), labels, (1, 5))
            out[f"eval/{key}_top1"] = acc[1]
            if key == "zeroshot":
                out[f"eval/{key}_top5"] = acc[5]
            if reduce != "mean_embedding":  # CLIP's prompt ensembling alongside, for comparison
                out[f"eval/{key}_top1_mean_embedding"] = topk_accuracy(
                    scores(zimg, "mean_embedding"), labels, (1,))[1]
        zimg, ztxt, _ = self._encode(params, mesh, "validation", n, text=True)  # 1-3 objects, full captions
        out.update({f"eval/{k}": v for k, v in retrieval_recall(zimg @ ztxt.T, (1, 5)).items()})
        return out


def _divisor_hint(size: int, patch: int) -> int:
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    return min(divisors, key=lambda d: abs(d - patch))
