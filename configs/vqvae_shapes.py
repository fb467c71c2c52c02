"""VQ-VAE image tokenizer on the embedded shapes dataset: 32x32 images -> 8x8 grids of 512 codes.

    python -m experiments.train --config configs/vqvae_shapes.py --workdir runs/vqvae_shapes
    python -m experiments.train --config configs/vqvae_shapes.py:tiny --workdir /tmp/vq   # seconds, for tests

Variants (comma-separated, they compose): "" (default: EMA codebook started by k-means on the first
batch, dead-code restarts);
"plain" (no anti-collapse options: codebook loss, no EMA, no restarts); "64px" (64x64 images,
downsampling 8, 1024 codes); "tiny".
"""

from ml_collections import ConfigDict

from configs.common import run_config


def get_config(arg: str = "") -> ConfigDict:
    # Sized for 15 CPU minutes (2 cores, ~140 examples/s). lr 2e-3 beat 1e-3 by 1.3 dB at 1800 steps.
    c = run_config("vqvae", total_steps=1800, batch_size=64, log_every=50, eval_every=300, checkpoint_every=300)
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
            codebook_size=512, code_dim=32, beta=0.25,
            ema_decay=0.99,      # > 0: EMA codebook updates (no codebook loss); 0: learned by the codebook loss
            kmeans_init=10,      # > 0: k-means iterations on the first batch's encoder outputs start the codes (EMA)
            restart_below=0.03,  # restart codes below this fraction of a uniform share (needs EMA); 0: off
            cosine=False,        # l2-normalized codes
            lookup_dim=0))))     # > 0: look codes up in a projected space of this size
    c.eval = ConfigDict(dict(num_examples=512, batch_size=128))
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
        c.data.image_size = 64
        c.model.encoder.ch_mult = (1, 1, 2, 2)  # downsampling 8: 8x8 code grids
        c.model.quantizer.codebook_size = 1024
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
        c.eval.num_examples = 32
        c.eval.batch_size = 16
    else:
        raise ValueError(f"unknown variant {arg!r} for vqvae_shapes; use '', 'plain', '64px', 'tiny' "
                         f"(comma-separated to combine)")
