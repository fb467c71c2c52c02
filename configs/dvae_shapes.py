"""dVAE image tokenizer (DALL-E's stage 1, Gumbel-softmax) on the embedded shapes dataset: 32x32 images ->
8x8 grids of 512 codes.

    python -m experiments.train --config configs/dvae_shapes.py --workdir runs/dvae_shapes
    python -m experiments.train --config configs/dvae_shapes.py:tiny --workdir /tmp/dvae   # seconds, for tests

Variants (comma-separated, they compose): "" (default); "64px" (64x64 images, downsampling 8, 1024 codes);
"tiny".
"""

from ml_collections import ConfigDict

from configs.common import run_config


def kl_weight(ch_mult, sigma: float = 0.1) -> float:
    """DALL-E's beta = 6.6 nats per grid position against a NLL summed over pixel dimensions, restated for our
    per-dimension MSE: divide by the pixel dimensions per position (3 * f^2; 192 for DALL-E and for 64px here,
    48 at 32px), then multiply by 2 sigma^2, since MSE = 2 sigma^2 * Gaussian NLL. sigma = 0.1 in [-1, 1]
    units is the error of a ~26 dB reconstruction. 32px: 2.75e-3; 64px: 6.9e-4."""
    f = 2 ** (len(ch_mult) - 1)
    return 6.6 * 2 * sigma ** 2 / (3 * f * f)


def get_config(arg: str = "") -> ConfigDict:
    # Sized for 15 CPU minutes (2 cores), like configs/vqvae_shapes.py.
    c = run_config("dvae", total_steps=1800, batch_size=64, log_every=50, eval_every=300, checkpoint_every=300)
    c.optimizer = ConfigDict(dict(
        name="adam", learning_rate=2e-3, schedule="cosine", warmup_steps=100, end_lr_fraction=0.05,
        b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0, freeze="", lr_mults=(),
        wd_exclude=".*"))
    c.data = ConfigDict(dict(source="shapes", seed=0, image_size=32, flip=True, num_threads=2, prefetch=4))
    c.model = ConfigDict(dict(
        dtype="float32",
        # ch_mult (1, 2, 2): downsampling 4, so 32x32 images become 8x8 code grids.
        encoder=ConfigDict(dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn=False)),
        quantizer=ConfigDict(dict(
            codebook_size=512, code_dim=32,
            # tau 1 -> 1/16 (DALL-E's range) exponentially over the first 80% of the run, then held, so the
            # decoder ends on nearly hard codes, as at inference.
            temperature_start=1.0, temperature_end=1.0 / 16, temperature_anneal_fraction=0.8,
            kl_weight=kl_weight((1, 2, 2)),
            kl_warmup_fraction=0.1,  # beta ramps up from 0 (as DALL-E's): the encoder first becomes informative
            hard=False))))           # True: straight-through hard samples instead of soft ones
    c.eval = ConfigDict(dict(num_examples=512, batch_size=128))
    for variant in filter(None, arg.split(",")):
        _apply_variant(c, variant)
    return c


def _apply_variant(c: ConfigDict, arg: str) -> None:
    if arg == "64px":
        c.data.image_size = 64
        c.model.encoder.ch_mult = (1, 1, 2, 2)  # downsampling 8: 8x8 code grids
        c.model.quantizer.codebook_size = 1024
        c.model.quantizer.kl_weight = kl_weight((1, 1, 2, 2))
    elif arg == "tiny":
        c.total_steps = 20
        c.batch_size = 16
        c.log_every = 2
        c.eval_every = 10
        c.checkpoint_every = 5
        c.optimizer.warmup_steps = 2
        c.model.encoder = ConfigDict(dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=True))
        c.model.quantizer.codebook_size = 32
        c.model.quantizer.code_dim = 8
        c.model.quantizer.kl_weight = kl_weight((1, 2))
        c.eval.num_examples = 32
        c.eval.batch_size = 16
    else:
        raise ValueError(f"unknown variant {arg!r} for dvae_shapes; use '', '64px', 'tiny' "
                         f"(comma-separated to combine)")
