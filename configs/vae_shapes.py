"""Gaussian VAE on the embedded shapes dataset: 32x32 images -> 8x8x4 latents (a diagonal Gaussian
posterior), decoded to a discretized Gaussian over the 8-bit pixels; reports the ELBO in bits/dim.

    python -m experiments.train --config configs/vae_shapes.py --workdir runs/vae_shapes
    python -m experiments.train --config configs/vae_shapes.py:tiny --workdir /tmp/vae   # seconds, for tests

Variants (comma-separated, they compose): "" (default); "ldm" (the first stage of configs/ldm_shapes.py:
KL weight 0.1 and twice the steps); "64px" (64x64 images, downsampling 8: 8x8x4 latents); "tiny".

    python -m experiments.train --config configs/vae_shapes.py:ldm --workdir runs/vae_shapes_ldm   # 8 minutes
"""

from ml_collections import ConfigDict

from configs.autoencoder_common import autoencoder_config, use_64px, use_tiny


def get_config(arg: str = "") -> ConfigDict:
    # The decoder's log-scale must travel from 0 to about -3; at Adam's ~lr per step that would take
    # longer than the run.
    c = autoencoder_config("vae", learning_rate=1e-3, lr_mults=(("log_scale", 10.0),))
    c.model.latent_channels = 4
    c.model.beta = 1.0            # KL weight in the training loss; reported bits/dim always use 1
    c.model.kl_warmup_steps = 0   # > 0: beta ramps linearly from 0 over this many steps
    for variant in filter(None, arg.split(",")):
        _apply_variant(c, variant)
    return c


def _apply_variant(c: ConfigDict, arg: str) -> None:
    if arg == "ldm":
        # Latents for a diffusion model, not the best ELBO: a lighter KL (LDM's KL-regularized autoencoders keep
        # it light too) and twice the steps reconstruct large objects' shapes far better (judged on real images:
        # 0.97 against 0.81), and the diffusion model draws them better (README, "What moved it").
        c.model.beta = 0.1
        c.total_steps, c.eval_every, c.checkpoint_every = 3600, 900, 900
    elif arg == "64px":
        use_64px(c)
    elif arg == "tiny":
        use_tiny(c)
    else:
        raise ValueError(f"unknown variant {arg!r} for vae_shapes; use '', 'ldm', '64px', 'tiny' (comma-separated to combine)")
