"""What the diffusion configs (ddpm_shapes in pixel space, ldm_shapes in an autoencoder's latent space)
share: run settings, optimizer, data, the noise schedule, the text encoder, sampling and evaluation."""

from ml_collections import ConfigDict

from configs.common import run_config, tiny_run


def diffusion_config(*, total_steps: int, batch_size: int, learning_rate: float) -> ConfigDict:
    c = run_config("diffusion", total_steps=total_steps, batch_size=batch_size, log_every=50,
                   eval_every=total_steps // 4, checkpoint_every=total_steps // 4)
    # Samples and evaluation use the EMA parameters. 0.995 (a ~140-step half-life), not the usual 0.9999: in a
    # few-thousand-step run a slower average would still hold a sizeable share of the random init.
    c.ema_decay = 0.995
    c.optimizer = ConfigDict(dict(
        name="adamw", learning_rate=learning_rate, schedule="cosine", warmup_steps=100, end_lr_fraction=0.05,
        b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0, freeze="", lr_mults=(), wd_exclude=".*"))
    c.data = ConfigDict(dict(
        source="shapes", seed=0, image_size=32, max_objects=3,
        flip=True,          # caption-consistent: "left" and "right" swap with the image
        max_text_len=48, vocab_size=256,
        tokenizer="",       # "" trains one on the captions (WORKDIR/tokenizer.model)
        num_threads=2, prefetch=4))
    c.diffusion = ConfigDict(dict(
        schedule="linear", num_train_steps=1000, beta_start=1e-4, beta_end=0.02,  # DDPM's
        prediction="epsilon",   # "epsilon" | "x0" | "v"
        min_snr_gamma=0.0,      # > 0: Min-SNR-γ loss weights (5 is the paper's)
        timesteps="uniform",    # t ~ U{0..T-1} (DDPM) | "log_snr_normal": log SNR_t ~ N(log_snr_mean, log_snr_std²)
        log_snr_mean=1.0, log_snr_std=2.4,  # EDM's noise-level distribution (ln σ ~ N(-1.2, 1.2²), σ_data 0.5)
        variance="fixed_small",  # ancestral sampling's σ_t²: "fixed_small" (β̃_t) | "fixed_large" (β_t)
        zero_terminal_snr=False,   # rescale the schedule to ᾱ_{T-1} ≈ 0 (Lin et al. 2024; needs v or x0)
        # Self-conditioning (Chen et al. 2022): the denoiser also reads its previous x0 estimate (trained on half
        # of the batches, which cost one more forward pass); sampling feeds it the previous step's, at no cost.
        self_condition=False))
    c.conditioning = ConfigDict(dict(
        kind="text",        # "text" (captions, cross-attention) | "class" (colour x shape label) | "none"
        dropout=0.1))       # conditioning dropout: trains the unconditional mode guidance needs
    c.latent = ConfigDict(dict(run="", scale=0.0))  # latent diffusion: an autoencoder run; 0 = measure 1/std
    c.model = ConfigDict(dict(
        dtype="float32",
        denoiser="unet",    # "unet" | "dit" (model.dit)
        dit=ConfigDict(dict(patch_size=2, width=128, depth=4, num_heads=4)),
        # pooled_context: the prompt's mean token feature is added to the time embedding too (text only).
        unet=ConfigDict(dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(2,), num_heads=4, dropout=0.0,
                             pooled_context=False)),
        # The prompt model trains with the denoiser; text.run = a contrastive run (configs/siglip_shapes.py)
        # uses that run's text tower, frozen, and its tokenizer instead (the other text fields are then unused).
        text=ConfigDict(dict(width=64, depth=2, num_heads=4, mlp_dim=128, run=""))))
    # guidance_rescale φ: 0 is plain classifier-free guidance (diffusers' default); see diffusion_sampler.py.
    c.sample = ConfigDict(dict(sampler="ddim", steps=50, guidance=3.0, eta=0.0, guidance_rescale=0.0))
    c.eval = ConfigDict(dict(
        num_samples=96, batch_size=48, grid_rows=6,   # two samples per colour x shape class
        prompt_template="a large {}",
        nll_examples=16,    # > 0: eval/bits_per_dim, the variational bound over all T steps (pixel space only)
        judge="",           # a contrastive run (configs/siglip_shapes.py) for prompt accuracy and FD
        inception_weights="",  # an .npz of pytorch-fid's Inception (jvlm/eval/inception_fid.py): eval/fid_inception
        judge_templates=("a small {}", "a medium {}", "a large {}", "a single small {}", "a single medium {}",
                         "a single large {}")))
    return c


def apply_common_variant(c: ConfigDict, arg: str) -> bool:
    """The variants both diffusion configs share; False when `arg` is not one of them."""
    if arg == "class":
        c.conditioning.kind = "class"
    elif arg == "uncond":
        c.conditioning.kind = "none"
        c.conditioning.dropout = 0.0
        c.sample.guidance = 1.0
    elif arg == "dit":
        c.model.denoiser = "dit"
    elif arg == "tiny":
        tiny_run(c)
        c.model.unet.update(dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), num_heads=2,
                                 dropout=0.0))
        c.model.text.update(dict(width=16, depth=1, num_heads=2, mlp_dim=32))
        c.model.dit = ConfigDict(dict(patch_size=4, width=16, depth=1, num_heads=2))
        c.diffusion.num_train_steps = 100
        c.sample.steps = 4
        c.eval.num_samples = 16
        c.eval.batch_size = 8
        c.eval.grid_rows = 2
        c.eval.nll_examples = 8
    else:
        return False
    return True
