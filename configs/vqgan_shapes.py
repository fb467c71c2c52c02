"""VQ-GAN image tokenizer on the embedded shapes dataset: the VQ-VAE of configs/vqvae_shapes.py (same
encoder, decoder and codebook options) plus a patch discriminator and, when given a feature network,
a perceptual loss.

    python -m experiments.train --config configs/vqgan_shapes.py --workdir runs/vqgan_shapes
    # perceptual loss from a trained jvlm image encoder, or from a conv network's .npz weights:
    ... --config.perceptual.run=runs/siglip_shapes
    ... --config.perceptual.weights_file=vgg16.npz        (format: jvlm/models/feature_nets.py)

Variants: "" (default), "64px" (64x64 images, downsampling 8, 1024 codes), "tiny" (seconds, for tests).
"""

from ml_collections import ConfigDict

from configs import vqvae_shapes


def get_config(arg: str = "") -> ConfigDict:
    c = vqvae_shapes.get_config(arg)
    c.task = "vqgan"
    tiny = "tiny" in arg.split(",")
    c.gan = ConfigDict(dict(
        loss="hinge",                 # or "non_saturating"
        # taming starts the discriminator once reconstructions are good: GAN gradients on a blurry
        # autoencoder mostly add noise. Here: the last third of the run.
        start_step=c.total_steps * 2 // 3,
        ramp_steps=0 if tiny else 200,  # fade the generator's GAN term in over these steps
        # times the adaptive weight. taming's disc_weight is 0.8; on shapes 0.8 cost 1.4 dB PSNR against 0.1
        # (28.77 vs 30.18 dB, batch 64) for no visible gain in sharpness at 32x32.
        weight=0.1,
        adaptive_weight=True,
        max_adaptive_weight=1e4,
        discriminator=ConfigDict(dict(ch=8 if tiny else 32, num_layers=2)),
        # taming: Adam(4.5e-6 * batch, betas (0.5, 0.9)) for both players.
        optimizer=ConfigDict(dict(name="adam", learning_rate=2e-4, schedule="constant", warmup_steps=0,
                                  b1=0.5, b2=0.9, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0, freeze="",
                                  lr_mults=(), wd_exclude=".*"))))
    c.perceptual = ConfigDict(dict(
        run="",            # a jvlm run whose image encoder gives the features (contrastive, vqvae, vqgan)
        weights_file="",   # or an .npz conv feature network (e.g. VGG16 converted once, as LPIPS uses)
        weight=1.0))       # without run or weights_file the perceptual term is off, and the run says so
    return c
