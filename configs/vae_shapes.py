"""Gaussian VAE on the embedded shapes dataset: 32x32 images -> 8x8x4 latents (a diagonal Gaussian
posterior), decoded to a discretized Gaussian over the 8-bit pixels; reports the ELBO in bits/dim.

    python -m experiments.train --config configs/vae_shapes.py --workdir runs/vae_shapes
    python -m experiments.train --config configs/vae_shapes.py:tiny --workdir /tmp/vae   # seconds, for tests

Variants (comma-separated, they compose): "" (default); "64px" (64x64 images, downsampling 8: 8x8x4
latents); "tiny".
"""

from ml_collections import ConfigDict

from configs.common import run_config


def get_config(arg: str = "") -> ConfigDict:
    # Sized for 15 CPU minutes (2 cores), as vqvae_shapes.
    c = run_config("vae", total_steps=1800, batch_size=64, log_every=50, eval_every=300, checkpoint_every=300)
    c.optimizer = ConfigDict(dict(
        name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=100, end_lr_fraction=0.05,
        b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0, freeze="",
        # The decoder's log-scale must travel from 0 to about -3; at Adam's ~lr per step that would take
        # longer than the run.
        lr_mults=(("log_scale", 10.0),),
        wd_exclude=".*"))
    c.data = ConfigDict(dict(source="shapes", seed=0, image_size=32, flip=True, num_threads=2, prefetch=4))
    c.model = ConfigDict(dict(
        dtype="float32",
        # ch_mult (1, 2, 2): downsampling 4, so 32x32 images become 8x8 latent grids.
        encoder=ConfigDict(dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn=False)),
        latent_channels=4,
        beta=1.0,             # KL weight in the training loss; reported bits/dim always use 1
        kl_warmup_steps=0))   # > 0: beta ramps linearly from 0 over this many steps
    c.eval = ConfigDict(dict(num_examples=512, batch_size=128))
    for variant in filter(None, arg.split(",")):
        _apply_variant(c, variant)
    return c


def _apply_variant(c: ConfigDict, arg: str) -> None:
    if arg == "64px":
        c.data.image_size = 64
        c.model.encoder.ch_mult = (1, 1, 2, 2)  # downsampling 8: 8x8 latent grids
    elif arg == "tiny":
        c.total_steps = 20
        c.batch_size = 16
        c.log_every = 2
        c.eval_every = 10
        c.checkpoint_every = 5
        c.optimizer.warmup_steps = 2
        c.model.encoder = ConfigDict(dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=True))
        c.eval.num_examples = 32
        c.eval.batch_size = 16
    else:
        raise ValueError(f"unknown variant {arg!r} for vae_shapes; use '', '64px', 'tiny' (comma-separated to combine)")
