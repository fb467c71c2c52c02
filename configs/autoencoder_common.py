"""What the image autoencoder configs (vae, vqvae, vqgan, dvae on shapes) share: run length, optimizer, data,
the ResNet encoder/decoder, evaluation, and the image-side parts of the `:64px` and `:tiny` variants.
Each config adds its own latent or quantizer settings."""

from ml_collections import ConfigDict

from configs.common import run_config, tiny_run


def autoencoder_config(task: str, *, learning_rate: float, lr_mults: tuple = ()) -> ConfigDict:
    # Sized for 15 CPU minutes on a 2-core AVX2 machine (README, "Image autoencoders": about 10-13 min there).
    # Batch 32: half the images of the batch-64 runs the README's GPU figures first came from.
    c = run_config(task, total_steps=1800, batch_size=32, log_every=50, eval_every=300, checkpoint_every=300)
    c.optimizer = ConfigDict(dict(
        name="adam", learning_rate=learning_rate, schedule="cosine", warmup_steps=100, end_lr_fraction=0.05,
        b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0, freeze="", lr_mults=lr_mults,
        wd_exclude=".*"))
    c.data = ConfigDict(dict(source="shapes", seed=0, image_size=32, flip=True, num_threads=2, prefetch=4))
    c.model = ConfigDict(dict(
        dtype="float32",
        # ch_mult (1, 2, 2): downsampling 4, so 32x32 images become 8x8 grids.
        encoder=ConfigDict(dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn=False)),
        # The decoder mirrors the encoder; a non-zero ch / num_res_blocks here widens or deepens it alone.
        decoder=ConfigDict(dict(ch=0, num_res_blocks=0))))
    c.eval = ConfigDict(dict(num_examples=512, batch_size=128))
    return c


def use_64px(c: ConfigDict) -> None:
    c.batch_size = 64  # the batch of the README's 64px figures; these variants are not sized for 15 CPU minutes
    c.data.image_size = 64
    c.model.encoder.ch_mult = (1, 1, 2, 2)  # downsampling 8: still 8x8 grids


def use_tiny(c: ConfigDict) -> None:
    tiny_run(c)
    c.model.encoder = ConfigDict(dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn=True))
    c.eval.num_examples = 32
    c.eval.batch_size = 16
