"""Latent diffusion on the embedded shapes dataset: a frozen autoencoder from its run (VAE by default:
32x32 images -> 8x8x4 latents, scaled to unit variance), a text-conditional UNet on the latents with a
prompt model trained jointly, DDIM sampling with classifier-free guidance, judged by a SigLIP run.

    python -m experiments.train --config configs/vae_shapes.py:ldm --workdir runs/vae_shapes_ldm  # stage 1
    python -m experiments.train --config configs/siglip_shapes.py:judge32 --workdir runs/siglip_judge32  # the judge
    python -m experiments.train --config configs/ldm_shapes.py --workdir runs/ldm_shapes
    python -m experiments.sample --config configs/ldm_shapes.py --workdir runs/ldm_shapes --prompt "a large red circle"

`--config.latent.run` may name a VQ-VAE or VQ-GAN run instead (latents before quantization, LDM's
VQ-regularized variant). Variants: "" (default); "class"; "uncond"; "dit"; "tiny" (for tests: give latent.run
and eval.judge yourself).
"""

from ml_collections import ConfigDict

from configs.diffusion_common import apply_common_variant, diffusion_config


def get_config(arg: str = "") -> ConfigDict:
    # Sized for under 20 minutes on 2 CPU cores: 6500 steps of 64 at ~137 ms each in the run (huge pages for
    # XLA's buffers, jvlm/host_malloc.py; 177 ms without) and four evaluations took 16m28s. Shape is what takes
    # long: colour is right from ~1000 steps, shape keeps improving to the end.
    c = diffusion_config(total_steps=6500, batch_size=64, learning_rate=1e-3)
    c.latent.run = "runs/vae_shapes_ldm"  # vae_shapes.py:ldm: a lighter KL and longer training than vae_shapes' default
    c.eval.judge = "runs/siglip_judge32"  # a judge at the generator's resolution
    # 8x8 latents: two levels (8x8, 4x4); self- and cross-attention at 4x4 (and in the middle block). Attention
    # at 8x8 too, and two blocks per level, cost 2.9x the FLOPs (1256 ms per step).
    c.model.unet.update(dict(ch=48, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), num_heads=4,
                             dropout=0.0))
    # Stable Diffusion's noise schedule and v-prediction (SD 2's): more of the training steps at the noise levels
    # where an object's shape is decided than DDPM's linear schedule, whose last third is nearly pure noise.
    c.diffusion.update(dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction="v"))
    # Plain guidance at 3 inflates the guided latents into over-saturated blobs; rescaled to the conditional
    # output's std (φ = 1) the same guidance draws the prompt's shape far more often (0.27 -> 0.40 on one
    # checkpoint; README, "What moved it").
    c.sample.guidance_rescale = 1.0
    c.eval.num_samples = 192  # four per class: ±0.036 on prompt accuracy instead of ±0.05 (about 20 s per evaluation)
    for variant in filter(None, arg.split(",")):
        if not apply_common_variant(c, variant):
            raise ValueError(f"unknown variant {variant!r} for ldm_shapes; use '', 'class', 'uncond', 'dit', 'tiny' "
                             f"(comma-separated to combine)")
        if variant == "tiny":
            c.latent.run, c.eval.judge = "", ""
    return c
