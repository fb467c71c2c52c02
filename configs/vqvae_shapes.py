"""VQ-VAE image tokenizer on the embedded shapes dataset: 32x32 images -> 8x8 grids of 512 codes.

    python -m experiments.train --config configs/vqvae_shapes.py --workdir runs/vqvae_shapes
    python -m experiments.train --config configs/vqvae_shapes.py:tiny --workdir /tmp/vq   # seconds, for tests

Variants (comma-separated, they compose): "" (default: EMA codebook started by k-means on the first
batch, dead-code restarts);
"plain" (no anti-collapse options: codebook loss, no EMA, no restarts); "64px" (64x64 images,
downsampling 8, 1024 codes); "tiny".
"""

from ml_collections import ConfigDict

from configs.autoencoder_common import autoencoder_config, use_64px, use_tiny


def get_config(arg: str = "") -> ConfigDict:
    c = autoencoder_config("vqvae", learning_rate=2e-3)  # lr 2e-3 beat 1e-3 by 1.3 dB at 1800 steps
    c.model.quantizer = ConfigDict(dict(
        codebook_size=512, code_dim=32, beta=0.25,
        ema_decay=0.99,      # > 0: EMA codebook updates (no codebook loss); 0: learned by the codebook loss
        kmeans_init=10,      # > 0: k-means iterations on the first batch's encoder outputs start the codes (EMA)
        restart_below=0.03,  # restart codes below this fraction of a uniform share (needs EMA); 0: off
        cosine=False,        # l2-normalized codes
        lookup_dim=0))       # > 0: look codes up in a projected space of this size
    for variant in filter(None, arg.split(",")):
        _apply_variant(c, variant)
    return c


def _apply_variant(c: ConfigDict, arg: str) -> None:
    if arg == "plain":  # the baseline without anti-collapse options
        c.model.quantizer.ema_decay = 0.0
        c.model.quantizer.kmeans_init = 0
        c.model.quantizer.restart_below = 0.0
        c.model.quantizer.cosine = False
        c.model.quantizer.lookup_dim = 0
    elif arg == "64px":
        use_64px(c)
        c.model.quantizer.codebook_size = 1024
    elif arg == "tiny":
        use_tiny(c)
        c.model.quantizer.codebook_size = 32
        c.model.quantizer.code_dim = 8
    else:
        raise ValueError(f"unknown variant {arg!r} for vqvae_shapes; use '', 'plain', '64px', 'tiny' "
                         f"(comma-separated to combine)")
