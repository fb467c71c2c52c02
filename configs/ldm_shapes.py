"""Latent diffusion on the embedded shapes dataset: a frozen autoencoder from its run (VAE by default:
32x32 images -> 8x8x4 latents, scaled to unit variance), a text-conditional UNet on the latents with a
prompt model trained jointly, DDIM sampling with classifier-free guidance, judged by a SigLIP run.

    python -m experiments.train --config configs/vae_shapes.py --workdir runs/vae_shapes          # stage 1
    python -m experiments.train --config configs/siglip_shapes.py --workdir runs/siglip_shapes    # the judge
    python -m experiments.train --config configs/ldm_shapes.py --workdir runs/ldm_shapes
    python -m experiments.sample --config configs/ldm_shapes.py --workdir runs/ldm_shapes --prompt "a large red circle"

`--config.latent.run` may name a VQ-VAE or VQ-GAN run instead (latents before quantization, LDM's
VQ-regularized variant). Variants: "" (default); "class"; "uncond"; "dit"; "tiny" (for tests: give latent.run
and eval.judge yourself).
"""

from ml_collections import ConfigDict

from configs.diffusion_common import apply_common_variant, diffusion_config


def get_config(arg: str = "") -> ConfigDict:
    # Sized for under 20 minutes on 2 CPU cores: 1800 steps of 64 at ~430 ms (experiments.bench); 2000 took 20m38s.
    c = diffusion_config(total_steps=1800, batch_size=64, learning_rate=1e-3)
    c.latent.run = "runs/vae_shapes"
    c.eval.judge = "runs/siglip_shapes"
    # 8x8 latents: two levels (8x8, 4x4); self- and cross-attention at 4x4 (and in the middle block). Attention
    # at 8x8 too, and two blocks per level, cost 2.9x the FLOPs (1256 ms per step).
    c.model.unet = ConfigDict(dict(ch=48, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), num_heads=4,
                                   dropout=0.0))
    for variant in filter(None, arg.split(",")):
        if not apply_common_variant(c, variant):
            raise ValueError(f"unknown variant {variant!r} for ldm_shapes; use '', 'class', 'uncond', 'dit', 'tiny' "
                             f"(comma-separated to combine)")
        if variant == "tiny":
            c.latent.run, c.eval.judge = "", ""
    return c
