"""Denoising diffusion on the spine (DDPM; latent diffusion when `config.latent.run` names an autoencoder
run): a UNet or DiT denoiser (`model.denoiser`), conditioned on captions through a Transformer text encoder trained with it
(cross-attention), or through the frozen text tower of a contrastive run (`model.text.run`, Stable Diffusion's
use of CLIP: every token's last hidden state, with that run's tokenizer), on class labels, or on nothing.

Training (Ho et al. 2020, Algorithm 1): x0 = images in [-1, 1] (or the autoencoder's latents times
`latent.scale`), t ~ U{0..T-1} (or with log SNR_t normal, `diffusion.timesteps`), x_t = q_sample(x0, t, ε),
loss = weight(t) * ‖output − target‖² (ε, x0 or v). Conditioning dropout (`conditioning.dropout`) replaces
the caption with the empty one (or the label with the null class) so the same network is also the
unconditional model classifier-free guidance needs. Sampling uses the EMA parameters when the run keeps them (`ema_decay`).
With `diffusion.self_condition` the denoiser also reads an x0 estimate stacked on its input's channels: its own,
gradient-stopped, on half of the training batches (zeros on the rest), the previous step's when sampling.

Evaluation writes samples/samples_<step>.png (one row per prompt), `eval/bits_per_dim` (the variational
bound on held-out images, pixel space, `eval.nll_examples` > 0) and, with a judge (`eval.judge`, a
contrastive run), `eval/prompt_accuracy`, `eval/fd_siglip` and the judge's own accuracy on real images; with
Inception weights (`eval.inception_weights`, jvlm/eval/inception_fid.py), `eval/fid_inception` against as many
real held-out single-object images.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jvlm import sharding
from jvlm.config import ConfigError, check_choice, check_data_source
from jvlm.data import shapes
from jvlm.data.pipeline import StepIndexedLoader
from jvlm.data.pixels import float_to_uint8, images_to_float
from jvlm.data.tokenizer import Tokenizer, shapes_tokenizer
from jvlm.eval.image_metrics import save_grid
from jvlm.models.autoencoder import downsampling_factor
from jvlm.models.dit import DiT
from jvlm.models.text import TextTransformer
from jvlm.models.unet import UNet
from jvlm.objectives import diffusion as D
from jvlm.objectives.diffusion_sampler import SAMPLERS, check_request, sample
from jvlm.tasks.base import Task
from jvlm.train import optim
from jvlm.train.step import LossOutput, ParamGroup

CONDITIONINGS = ("text", "class", "none")


class DiffusionTask(Task):
    optional_keys = Task.optional_keys + ("diffusion", "conditioning", "latent", "sample")
    frozen_text = None  # (tower, parameters) when model.text.run names a contrastive run; set by setup()

    # ------------------------------------------------------------------ config
    def validate(self) -> None:
        c = self.config
        d, cond, s = c.diffusion, c.conditioning, c.sample
        check_data_source(c, self.data_sources, "the diffusion task")
        check_choice("diffusion.schedule", d.schedule, D.SCHEDULES)
        check_choice("diffusion.prediction", d.prediction, D.PREDICTIONS)
        check_choice("diffusion.timesteps", d.timesteps, D.TIMESTEP_SAMPLINGS)
        if d.timesteps == "log_snr_normal" and not d.log_snr_std > 0:
            raise ConfigError(f"config.diffusion.log_snr_std={d.log_snr_std} must be > 0.")
        check_choice("diffusion.variance", d.variance, D.VARIANCES)
        if d.get("zero_terminal_snr") and d.prediction == "epsilon":
            raise ConfigError("config.diffusion.zero_terminal_snr leaves no signal at t = T-1, where an ε-prediction "
                              "says nothing about the image; set diffusion.prediction='v' (as Lin et al. do) or 'x0'.")
        check_choice("conditioning.kind", cond.kind, CONDITIONINGS)
        check_choice("sample.sampler", s.sampler, SAMPLERS)
        check_choice("model.denoiser", c.model.get("denoiser", "unet"), ("unet", "dit"))
        unet = c.model.get("denoiser", "unet") == "unet"
        if not 0.0 <= cond.dropout < 1.0:
            raise ConfigError(f"config.conditioning.dropout={cond.dropout} must be in [0, 1).")
        if s.guidance != 1.0 and cond.kind != "none" and cond.dropout == 0.0:
            raise ConfigError(f"config.sample.guidance={s.guidance} needs a model trained with conditioning dropout "
                              f"(an unconditional mode to guide against): set conditioning.dropout > 0 (0.1 is usual) "
                              f"or sample.guidance=1.")
        try:
            r = sampling_settings(s)
            check_request(d.num_train_steps, r.sampler, r.steps, r.guidance, cond.kind != "none", r.guidance_rescale)
        except ValueError as e:
            raise ConfigError(f"config.sample: {e}") from None
        if unet and c.model.unet.get("pooled_context") and cond.kind != "text":
            raise ConfigError(f"config.model.unet.pooled_context pools the prompt's token features, but "
                              f"conditioning.kind={cond.kind!r} has none; set it to False or use kind 'text'.")
        if unet:
            f, what = downsampling_factor(c.model.unet.ch_mult), f"the UNet's downsampling (model.unet.ch_mult={tuple(c.model.unet.ch_mult)})"
        else:
            f, what = c.model.dit.patch_size, "the DiT's model.dit.patch_size"
        if c.data.image_size % f and not c.latent.run:
            raise ConfigError(f"config.data.image_size={c.data.image_size} is not divisible by {f}, {what}.")
        dp = sharding.data_parallel_size(self.mesh.shape) if self.mesh is not None else 1
        if c.eval.batch_size % dp:
            raise ConfigError(f"config.eval.batch_size={c.eval.batch_size} is not divisible by the data-parallel "
                              f"size {dp}; use a multiple of {dp}.")
        if c.eval.get("inception_weights") and c.eval.num_samples < 2:
            raise ConfigError(f"config.eval.inception_weights needs eval.num_samples >= 2 (a covariance), got "
                              f"{c.eval.num_samples}.")

    @functools.cached_property
    def schedule(self) -> D.Schedule:  # built once, not at every trace that reads it
        d = self.config.diffusion
        return D.make_schedule(d.schedule, d.num_train_steps, beta_start=d.beta_start, beta_end=d.beta_end,
                               zero_terminal_snr=d.get("zero_terminal_snr", False))

    @property
    def denoiser(self) -> UNet | DiT:
        """model.denoiser: "unet" (model.unet) or "dit" (model.dit); both take (x_t, t, context/labels)."""
        c = self.config
        cond = dict(context_dim=self.text_encoder.width if c.conditioning.kind == "text" else 0,
                    num_classes=len(shapes.class_names()) if c.conditioning.kind == "class" else 0,
                    dtype=jnp.dtype(c.model.dtype))
        if c.model.get("denoiser", "unet") == "dit":
            d = c.model.dit
            return DiT(out_channels=self.channels, patch_size=d.patch_size, width=d.width, depth=d.depth,
                       num_heads=d.num_heads, **cond)
        u = c.model.unet
        return UNet(out_channels=self.channels, ch=u.ch, ch_mult=tuple(u.ch_mult), num_res_blocks=u.num_res_blocks,
                    attn_levels=tuple(u.attn_levels), num_heads=u.num_heads, dropout=u.dropout,
                    pooled_context=u.get("pooled_context", False), **cond)

    @property
    def text_encoder(self) -> TextTransformer:
        """The prompt model: trained here (model.text), or a contrastive run's tower (model.text.run, after setup)."""
        if self.frozen_text is not None:
            return self.frozen_text[0]
        c = self.config
        t = c.model.text
        return TextTransformer(vocab_size=c.data.vocab_size, width=t.width, depth=t.depth, num_heads=t.num_heads,
                               mlp_dim=t.mlp_dim, max_len=c.data.max_text_len, pool="none",
                               dtype=jnp.dtype(c.model.dtype))

    def _load_text_tower(self, run: str) -> tuple[tuple[TextTransformer, Any], Tokenizer]:
        """((per-token text tower, its parameters), its tokenizer) of a contrastive run."""
        from jvlm.eval.contrastive_model import ContrastiveModel
        c = self.config
        try:
            model = ContrastiveModel.load(run)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"config.model.text.run: {e} (one trained with configs/siglip_shapes.py; or set "
                              f"model.text.run='' to train a text encoder with the denoiser)") from None
        rc = model.config
        if rc.data.max_text_len != c.data.max_text_len:
            raise ConfigError(f"the text tower in {run} reads {rc.data.max_text_len} tokens but "
                              f"config.data.max_text_len={c.data.max_text_len}; "
                              f"set data.max_text_len={rc.data.max_text_len}.")
        t = {k: v for k, v in rc.model.text.items() if k != "pool"}
        tower = TextTransformer(**t, vocab_size=rc.data.vocab_size, max_len=rc.data.max_text_len, pool="none",
                                dtype=jnp.dtype(c.model.dtype))
        return (tower, model.params["txt"]), model.tokenizer

    # ------------------------------------------------------------------ setup: tokenizer, autoencoder, judge
    def setup(self) -> None:
        c = self.config
        self.tokenizer, self.frozen_text = None, None
        if c.conditioning.kind == "text" and c.model.text.get("run"):
            # The tower's own tokenizer: its token ids are what it learned.
            self.frozen_text, self.tokenizer = self._load_text_tower(c.model.text.run)
            print(f"[diffusion] prompt model: the frozen text tower of {c.model.text.run} "
                  f"(width {self.text_encoder.width})", flush=True)
        elif c.conditioning.kind == "text":
            self.tokenizer = self.setup_tokenizer(Tokenizer, lambda path: shapes_tokenizer(
                path, vocab_size=c.data.vocab_size, seed=c.data.seed))
        self.codec = None
        if c.latent.run:
            from jvlm.eval.latent_codec import LatentCodec
            try:
                self.codec = LatentCodec.load(c.latent.run, c.data.image_size, scale=c.latent.scale,
                                              workdir=self.workdir)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"config.latent.run: {e}") from None
            print(f"[diffusion] latent space: {self.codec.description}", flush=True)
        self.judge = None
        if c.eval.judge:
            from jvlm.eval.contrastive_model import ContrastiveModel
            try:
                self.judge = ContrastiveModel.load(c.eval.judge)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"config.eval.judge: {e} (train one with configs/siglip_shapes.py, or set "
                                  f"eval.judge='' to evaluate without prompt accuracy)") from None
        self.inception, self._real_inception = None, None
        if c.eval.get("inception_weights"):
            from jvlm.eval.inception_fid import InceptionFID
            try:  # loaded (and checked) now, not at the first evaluation
                self.inception = InceptionFID(c.eval.inception_weights, batch_size=min(50, c.eval.num_samples))
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"config.eval.inception_weights: {e} (or set eval.inception_weights='' to "
                                  f"evaluate without eval/fid_inception)") from None

    @property
    def channels(self) -> int:
        return self.codec.channels if getattr(self, "codec", None) is not None else 3

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        if getattr(self, "codec", None) is not None:
            return self.codec.latent_shape
        s = self.config.data.image_size
        return (s, s, 3)

    # ------------------------------------------------------------------ parameters
    def init(self, rng):
        c = self.config
        x = jnp.zeros((1,) + self.sample_shape)
        if self.self_conditioning:  # the denoiser reads [x_t, x0 estimate] stacked on channels
            x = jnp.concatenate([x, x], axis=-1)
        t = jnp.zeros((1,), jnp.int32)
        params = {}
        kwargs = {}
        if c.conditioning.kind == "text":
            tokens = jnp.zeros((1, c.data.max_text_len), jnp.int32)
            if self.frozen_text is None:  # a frozen tower's parameters are constants, not trained state
                params["text"] = self.text_encoder.init(jax.random.fold_in(rng, 1), tokens)["params"]
            kwargs = dict(context=jnp.zeros((1, c.data.max_text_len, self.text_encoder.width)),
                          context_mask=jnp.ones((1, c.data.max_text_len), bool))
        elif c.conditioning.kind == "class":
            kwargs = dict(labels=jnp.zeros((1,), jnp.int32))
        params["denoiser"] = self.denoiser.init(rng, x, t, **kwargs)["params"]
        return {"main": params}, {}

    def param_groups(self, params) -> list[ParamGroup]:
        tx, schedule, frozen = optim.make_optimizer(self.config.optimizer, params["main"], self.config.total_steps)
        return [ParamGroup("main", self.loss_fn, tx, schedule, frozen)]

    # ------------------------------------------------------------------ the model as a function
    def null_condition(self, batch_size: int) -> dict:
        """The condition of the unconditional mode: the empty caption's tokens, or the null class."""
        c = self.config
        if c.conditioning.kind == "text":
            tokens = self.tokenizer.encode("", c.data.max_text_len)[0]
            return {"text": jnp.broadcast_to(jnp.asarray(tokens), (batch_size, c.data.max_text_len))}
        if c.conditioning.kind == "class":
            return {"label": jnp.full((batch_size,), len(shapes.class_names()), jnp.int32)}
        return {}

    @property
    def self_conditioning(self) -> bool:
        return bool(self.config.diffusion.get("self_condition", False))

    def x0_estimate(self, x_t, t, model_output) -> jax.Array:
        """The x0 a model output implies (clipped to the pixel range in pixel space, as the samplers clip it)."""
        return D.predict_x0(self.schedule, x_t, t, model_output, self.config.diffusion.prediction,
                            clip=self.codec is None)

    def denoise(self, p: dict, x_t, t, cond: dict, train: bool = False, rng=None, x0_prev=None):
        """The model output at (x_t, t) under a condition {"text": tokens} / {"label": ids} / {}. A
        self-conditioning model also reads `x0_prev`, its previous x0 estimate (None: zeros, "no estimate")."""
        if self.self_conditioning:
            x_t = jnp.concatenate([x_t, jnp.zeros_like(x_t) if x0_prev is None else x0_prev], axis=-1)
        kwargs = {}
        if "text" in cond:
            tokens = cond["text"]
            text_params = p["text"] if self.frozen_text is None else self.frozen_text[1]
            feats = self.text_encoder.apply({"params": text_params}, tokens)
            kwargs = dict(context=feats, context_mask=tokens != 0)
        elif "label" in cond:
            kwargs = dict(labels=cond["label"])
        rngs = {"dropout": rng} if train and rng is not None else {}
        return self.denoiser.apply({"params": p["denoiser"]}, x_t, t, train=train, rngs=rngs, **kwargs)

    def to_x0(self, images) -> jax.Array:
        """uint8 images -> the diffusion's data space: [-1, 1] pixels or scaled latents."""
        return images_to_float(images) if self.codec is None else self.codec.encode(images)

    def from_x0(self, x0) -> jax.Array:
        """The data space -> images in [-1, 1]."""
        return x0 if self.codec is None else self.codec.decode(x0)

    # ------------------------------------------------------------------ training
    def loss_fn(self, params, batch, rng, ctx) -> LossOutput:
        c = self.config
        d = c.diffusion
        p = params["main"]
        x0 = self.to_x0(batch["image"])
        b = x0.shape[0]
        k_t, k_noise, k_drop, k_model = jax.random.split(rng, 4)
        if d.timesteps == "log_snr_normal":
            t = D.sample_timesteps_log_snr(k_t, b, self.schedule, d.log_snr_mean, d.log_snr_std)
        else:
            t = D.sample_timesteps(k_t, b, d.num_train_steps)
        noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
        cond = {k: batch[k] for k in ("text", "label") if k in batch}
        if cond and c.conditioning.dropout > 0:
            drop = jax.random.bernoulli(k_drop, c.conditioning.dropout, (b,))
            null = self.null_condition(b)
            cond = {k: jnp.where(drop.reshape((b,) + (1,) * (v.ndim - 1)), null[k], v) for k, v in cond.items()}
        x_t = D.q_sample(self.schedule, x0, t, noise)
        x0_prev = None
        if self.self_conditioning:
            # Self-conditioning (Chen et al. 2022, "Analog Bits"): on half of the batches the model first estimates
            # x0 without an estimate, and then trains on reading that estimate (gradient-stopped), as the sampler
            # feeds it the previous step's. lax.cond runs the extra forward pass only on those batches.
            def estimate(_):
                return jax.lax.stop_gradient(self.x0_estimate(x_t, t, self.denoise(p, x_t, t, cond)))
            x0_prev = jax.lax.cond(jax.random.bernoulli(jax.random.fold_in(rng, 5)), estimate,
                                   lambda _: jnp.zeros_like(x0), None)
        out = self.denoise(p, x_t, t, cond, train=True, rng=k_model, x0_prev=x0_prev)
        per_example = D.diffusion_loss(self.schedule, out, x0, noise, t, d.prediction, d.min_snr_gamma)
        return LossOutput(jnp.mean(per_example), {"x0_std": jnp.std(x0)})

    # ------------------------------------------------------------------ data
    def transform(self, example: dict, rng: np.random.Generator) -> dict:
        c = self.config
        if c.data.flip and rng.random() < 0.5:
            example = shapes.flip_horizontal(example)  # the caption's left/right swap with the image
        out = {"image": example["image"]}
        if c.conditioning.kind == "text":
            out["text"] = self.tokenizer.encode(example["caption"], c.data.max_text_len)[0]
        elif c.conditioning.kind == "class":
            out["label"] = np.int32(example["label"])
        return out

    def train_loader(self, start_step, rows):
        c = self.config
        # A class names one object: class-conditional models train on single-object images.
        source = shapes.ShapesSource("train", image_size=c.data.image_size, seed=c.data.seed,
                                     max_objects=1 if c.conditioning.kind == "class" else c.data.max_objects)
        return StepIndexedLoader(source, global_batch=c.batch_size, seed=c.seed, transform=self.transform,
                                 start_step=start_step, num_steps=c.total_steps, rows=rows,
                                 num_threads=c.data.num_threads, prefetch=c.data.prefetch)

    def abstract_batch(self, batch_size):
        c = self.config
        s = c.data.image_size
        out = {"image": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.uint8)}
        if c.conditioning.kind == "text":
            out["text"] = jax.ShapeDtypeStruct((batch_size, c.data.max_text_len), jnp.int32)
        elif c.conditioning.kind == "class":
            out["label"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        return out

    # ------------------------------------------------------------------ sampling
    def encode_prompts(self, prompts: list[str]) -> dict:
        """Host-side conditions for prompts: tokens (text), class ids (class: a prompt names a class), {}."""
        c = self.config
        if c.conditioning.kind == "text":
            tokens, truncated = self.tokenizer.encode_batch(list(prompts), c.data.max_text_len)
            if np.any(truncated):
                long = [p for p, t in zip(prompts, truncated) if t][0]
                raise ValueError(f"the prompt {long!r} is longer than the model's context of {c.data.max_text_len} "
                                 f"tokens; shorten it (or train with a larger data.max_text_len)")
            return {"text": tokens}
        if c.conditioning.kind == "class":
            names = shapes.class_names()
            unknown = [p for p in prompts if _class_of(p) is None]
            if unknown:
                raise ValueError(f"a class-conditional model takes prompts that name one colour x shape class "
                                 f"(e.g. 'a red circle'); {unknown[0]!r} names none of {len(names)} classes")
            return {"label": np.asarray([_class_of(p) for p in prompts], np.int32)}
        return {}

    def sampler_fn(self, sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                   eta: float | None = None, guidance_rescale: float | None = None):
        """Jitted (params, x_T, rng, cond, uncond) -> images in [-1, 1]; the whole loop is one program."""
        r = sampling_settings(self.config.sample, sampler, steps, guidance, eta, guidance_rescale)
        conditional = self.config.conditioning.kind != "none"
        check_request(self.config.diffusion.num_train_steps, r.sampler, r.steps, r.guidance, conditional,
                      r.guidance_rescale)
        key = tuple(r)
        cache = self.__dict__.setdefault("_samplers", {})
        if key not in cache:
            schedule, d = self.schedule, self.config.diffusion

            def run(p, x_T, rng, cond, uncond):
                def denoise(x, t, cd, x0_prev=None):
                    return self.denoise(p, x, t, cd or {}, x0_prev=x0_prev)
                x0 = sample(schedule, denoise, x_T, rng, sampler=r.sampler, self_condition=self.self_conditioning,
                            num_steps=r.steps, eta=r.eta, guidance=r.guidance, cond=cond if conditional else None,
                            uncond=uncond if r.guidance != 1.0 else None, prediction=d.prediction,
                            variance=d.variance, clip_x0=self.codec is None, guidance_rescale=r.guidance_rescale)
                return jnp.clip(self.from_x0(x0), -1.0, 1.0)
            cache[key] = jax.jit(run)
        return cache[key]

    def generate(self, params, prompts: list[str], rng, *, negative_prompt: str | None = None, **sampler_kw) -> np.ndarray:
        """uint8 images [len(prompts), H, W, 3] for the prompts (ignored by an unconditional model)."""
        n = len(prompts)
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([negative_prompt] * n) if negative_prompt is not None else self.null_condition(n)
        x_T = jax.random.normal(jax.random.fold_in(rng, 0), (n,) + self.sample_shape)
        x_T, cond, uncond = (self._batch_on_mesh(a) for a in ({"x": x_T}, cond, uncond))
        images = self.sampler_fn(**sampler_kw)(params, x_T["x"], jax.random.fold_in(rng, 1), cond, uncond)
        return float_to_uint8(sharding.to_host(images))

    def _batch_on_mesh(self, arrays: dict) -> dict:
        """Host arrays of one batch -> arrays sharded over the mesh's data axes. Left unsharded, a jitted
        call on replicated parameters computes the whole batch on every device (8x the work on 8 CPU devices)."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if not arrays or self.mesh is None or len(next(iter(arrays.values()))) % sharding.data_parallel_size(
                self.mesh.shape):
            return {k: jnp.asarray(v) for k, v in arrays.items()}
        return sharding.global_batch_from_full(arrays, self.mesh)

    # ------------------------------------------------------------------ likelihood
    def nll_fn(self):
        """Jitted (params, uint8 images, rng) -> [B] bits/dim of the variational bound L_T + Σ L_t + L_0
        (DDPM eq. 5) under the unconditional mode, every t evaluated (one lax.map over T model calls)."""
        if not hasattr(self, "_nll"):
            schedule, d = self.schedule, self.config.diffusion

            def nll(p, images, rng):
                x0 = images_to_float(images)
                null = self.null_condition(x0.shape[0])

                def term(t):
                    x_t = D.q_sample(schedule, x0, t, jax.random.normal(jax.random.fold_in(rng, t), x0.shape))
                    out = self.denoise(p, x_t, jnp.full((x0.shape[0],), t), null)
                    return D.vlb_term(schedule, x0, x_t, t, out, d.prediction, d.variance)
                total = jnp.sum(jax.lax.map(term, jnp.arange(d.num_train_steps)), axis=0) + D.prior_kl(schedule, x0)
                return D.bits_per_dim(total, x0)
            self._nll = jax.jit(nll)
        return self._nll

    # ------------------------------------------------------------------ evaluation
    def eval_prompts(self, num: int) -> tuple[list[str], np.ndarray]:
        """`num` prompts cycling over all colour x shape classes (balanced), and their class ids."""
        names = shapes.class_names()
        labels = np.arange(num) % len(names)
        template = self.config.eval.prompt_template
        return [template.format(names[i]) for i in labels], labels

    def evaluate(self, state, mesh) -> dict[str, Any]:
        c = self.config
        params = (state.ema_params or state.params)["main"]
        rng = jax.random.key(c.seed + 1)  # fixed: every evaluation draws the same starting noise
        prompts, labels = self.eval_prompts(c.eval.num_samples)
        images = np.concatenate([self.generate(params, prompts[i:i + c.eval.batch_size], jax.random.fold_in(rng, i))
                                 for i in range(0, len(prompts), c.eval.batch_size)])
        out = {}
        step = int(jax.device_get(state.step))
        if jax.process_index() == 0 and self.workdir:
            rows = c.eval.grid_rows
            per_row = min(8, len(images) // rows) if rows else 0
            grid = [images[r * per_row:(r + 1) * per_row] for r in range(rows)] if per_row else [images[:8]]
            save_grid(os.path.join(self.workdir, "samples", f"samples_{step:07d}.png"), grid)
        n_nll = c.eval.get("nll_examples", 0)
        if n_nll and self.codec is None:  # bits/dim of pixels; a latent model's bound is over latents
            source = shapes.ShapesSource("test", image_size=c.data.image_size, seed=c.data.seed)
            held_out = np.stack([source[i]["image"] for i in range(n_nll)])
            bpd = self.nll_fn()(params, self._batch_on_mesh({"x": held_out})["x"], jax.random.key(c.seed + 2))
            out["eval/bits_per_dim"] = float(np.mean(sharding.to_host(bpd)))
        if self.judge is not None:
            from jvlm.eval.generation_metrics import judge_metrics
            out.update(judge_metrics(self.judge, images, labels, c.data.seed, tuple(c.eval.judge_templates)))
        if getattr(self, "inception", None) is not None:
            from jvlm.eval.generation_metrics import real_single_objects
            from jvlm.eval.inception_fid import features_fid
            if self._real_inception is None:  # the same real images at every evaluation: their features once
                real, _ = real_single_objects(len(images), c.data.image_size, c.data.seed)
                self._real_inception = self.inception.features(real)
            out["eval/fid_inception"] = features_fid(self.inception.features(images), self._real_inception)
        return out


class SamplingSettings(NamedTuple):
    sampler: str
    steps: int
    guidance: float
    eta: float
    guidance_rescale: float


def sampling_settings(s, sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                      eta: float | None = None, guidance_rescale: float | None = None) -> SamplingSettings:
    """The run's `sample` settings with the given overrides (None, or an empty sampler / 0 steps, keeps the
    run's)."""
    return SamplingSettings(
        sampler=sampler or s.sampler, steps=steps or s.steps, guidance=s.guidance if guidance is None else guidance,
        eta=s.eta if eta is None else eta,
        # runs saved before the key existed sampled without rescaling
        guidance_rescale=s.get("guidance_rescale", 0.0) if guidance_rescale is None else guidance_rescale)


def _class_of(prompt: str) -> int | None:
    """The class id a prompt names ("a large red circle" -> red circle), or None."""
    words = prompt.lower().replace(",", " ").split()
    colors = [w for w in words if w in shapes.COLORS]
    kinds = [w for w in words if w in shapes.SHAPES]
    if len(colors) != 1 or len(kinds) != 1:
        return None
    return shapes.class_index(colors[0], kinds[0])
