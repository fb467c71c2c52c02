"""dVAE image tokenizer (DALL-E's stage 1, Gumbel-softmax) on the embedded shapes dataset: 32x32 images ->
8x8 grids of 512 codes.

    python -m experiments.train --config configs/dvae_shapes.py --workdir runs/dvae_shapes
    python -m experiments.train --config configs/dvae_shapes.py:tiny --workdir /tmp/dvae   # seconds, for tests

Variants (comma-separated, they compose): "" (default); "64px" (64x64 images, downsampling 8, 1024 codes);
"tiny".
"""

from ml_collections import ConfigDict

from configs.autoencoder_common import autoencoder_config, use_64px, use_tiny


def kl_weight(ch_mult, sigma: float = 0.1) -> float:
    """DALL-E's beta = 6.6 nats per grid position against a NLL summed over pixel dimensions, restated for our
    per-dimension MSE: divide by the pixel dimensions per position (3 * f^2; 192 for DALL-E and for 64px here,
    48 at 32px), then multiply by 2 sigma^2, since MSE = 2 sigma^2 * Gaussian NLL. sigma = 0.1 in [-1, 1]
    units is the error of a ~26 dB reconstruction. 32px: 2.75e-3; 64px: 6.9e-4."""
    f = 2 ** (len(ch_mult) - 1)
    return 6.6 * 2 * sigma ** 2 / (3 * f * f)


def get_config(arg: str = "") -> ConfigDict:
    c = autoencoder_config("dvae", learning_rate=2e-3)
    c.model.quantizer = ConfigDict(dict(
        codebook_size=512, code_dim=32,
        # tau 1 -> 1/16 (DALL-E's range) exponentially over the first 80% of the run, then held, so the
        # decoder ends on nearly hard codes, as at inference.
        temperature_start=1.0, temperature_end=1.0 / 16, temperature_anneal_fraction=0.8,
        kl_weight=kl_weight((1, 2, 2)),
        kl_warmup_fraction=0.1,  # beta ramps up from 0 (as DALL-E's): the encoder first becomes informative
        hard=False))             # True: straight-through hard samples instead of soft ones
    for variant in filter(None, arg.split(",")):
        _apply_variant(c, variant)
    return c


def _apply_variant(c: ConfigDict, arg: str) -> None:
    if arg == "64px":
        use_64px(c)
        c.model.quantizer.codebook_size = 1024
        c.model.quantizer.kl_weight = kl_weight((1, 1, 2, 2))
    elif arg == "tiny":
        use_tiny(c)
        c.model.quantizer.codebook_size = 32
        c.model.quantizer.code_dim = 8
        c.model.quantizer.kl_weight = kl_weight((1, 2))
    else:
        raise ValueError(f"unknown variant {arg!r} for dvae_shapes; use '', '64px', 'tiny' "
                         f"(comma-separated to combine)")
