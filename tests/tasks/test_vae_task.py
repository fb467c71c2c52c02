"""The Gaussian VAE task on the spine: a tiny run through the real CLI, encode/decode, bad input."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jvlm.config import ConfigError, load_config
from jvlm.models.autoencoder import decoder_settings
from jvlm.train import loop
from jvlm.train.metrics import read_metrics

TINY = "configs/vae_shapes.py:tiny"


def build(*overrides):
    cfg = load_config(TINY, [f"--config.{o}" for o in overrides])
    task, _ = loop.build(cfg, None, devices=jax.devices()[:1])
    return task


def test_cli_run_lowers_the_loss_and_reports_a_finite_elbo(vae_run):
    # Trained with a KL weight of 0.5: the loss is NLL + 0.5 KL, but bits/dim must stay the ELBO, NLL + KL (at
    # beta = 1 the two coincide and the test could not tell them apart).
    workdir, _ = vae_run
    rows = read_metrics(workdir)
    last = rows[-1]
    assert last["loss"] < rows[0]["loss"]
    for key in ("eval/bits_per_dim", "eval/nll_bits_per_dim", "eval/kl_bits_per_dim", "eval/psnr", "eval/ssim",
                "bits_per_dim", "kl", "psnr", "decoder_scale"):
        assert key in last and math.isfinite(last[key]), key
    assert 0 < last["eval/bits_per_dim"] < 16
    for prefix in ("eval/", ""):
        np.testing.assert_allclose(last[f"{prefix}bits_per_dim"],
                                   last[f"{prefix}nll_bits_per_dim"] + last[f"{prefix}kl_bits_per_dim"], rtol=1e-5)
    # The loss (nats per dimension) is the beta-weighted bound, and the KL term is large enough to tell them apart.
    nll, kl = last["nll_bits_per_dim"], last["kl_bits_per_dim"]
    assert last["beta"] == 0.5 and kl > 1e-3 * nll
    np.testing.assert_allclose(last["loss"], (nll + 0.5 * kl) * math.log(2), rtol=1e-5)
    assert last["decoder_scale"] < 1.0  # the learned log-scale moved from its initial 0
    assert sorted(os.listdir(workdir / "samples")) == ["reconstructions_0000010.png", "reconstructions_0000020.png"]


def test_encode_decode_shapes_and_bad_inputs_are_named():
    task = build()
    params = nn.unbox(task.init(jax.random.key(0))[0]["main"])
    fn = task.functions()
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    post = fn["encode"](params, images, jax.random.key(1))
    assert post.mean.shape == post.logvar.shape == post.z.shape == (2, 16, 16, 4)  # tiny: downsampling 2
    assert fn["decode"](params, post.z).shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match=r"expects images \[batch, height, width, 3\], got shape \(2, 32, 32, 4\)"):
        fn["encode"](params, np.zeros((2, 32, 32, 4), np.uint8), jax.random.key(1))
    with pytest.raises(ValueError, match="image size 31x31 is not divisible by the downsampling factor 2"):
        fn["encode"](params, np.zeros((2, 31, 31, 3), np.uint8), jax.random.key(1))
    with pytest.raises(ValueError, match="encodes uint8 images"):
        fn["encode"](params, np.zeros((2, 32, 32, 3), np.float32), jax.random.key(1))


def test_a_wider_decoder_leaves_the_encoder_as_it_was():
    narrow = nn.unbox(build().init(jax.random.key(0))[0]["main"])
    wide = nn.unbox(build("model.decoder.ch=16", "model.decoder.num_res_blocks=2").init(jax.random.key(0))[0]["main"])
    assert jax.tree.map(jnp.shape, wide["enc"]) == jax.tree.map(jnp.shape, narrow["enc"])  # the latents' maker
    assert narrow["dec"]["conv_in"]["kernel"].shape[-1] == 8 * 2 and wide["dec"]["conv_in"]["kernel"].shape[-1] == 16 * 2
    assert "up0_block2" in wide["dec"] and "up0_block2" not in narrow["dec"]   # num_res_blocks + 1 per level
    with pytest.raises(ConfigError, match="may set only ch, num_res_blocks .* got ch_mult"):
        decoder_settings({"ch": 8, "ch_mult": (1, 2)}, {"ch_mult": (1, 2, 2)})


def test_the_ldm_variant_changes_the_loss_and_the_length_not_the_network():
    # ldm_shapes' per-step cost includes this encoder: the variant must keep the default's architecture.
    default, ldm = load_config("configs/vae_shapes.py"), load_config("configs/vae_shapes.py:ldm")
    assert ldm.model.beta == 0.1 and ldm.total_steps == 2 * default.total_steps
    assert ldm.model.encoder.to_dict() == default.model.encoder.to_dict() and ldm.model.latent_channels == 4
    assert load_config("configs/ldm_shapes.py").latent.run.endswith("vae_shapes_ldm")
    assert load_config("configs/vae_shapes.py:ldm,tiny").model.beta == 0.1  # it composes with the test size


def test_config_errors_and_kl_warmup():
    with pytest.raises(ConfigError, match="latent_channels must be >= 1"):
        build("model.latent_channels=0")
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        build("model.beta=-1.0")
    with pytest.raises(ConfigError, match="not divisible by the downsampling factor"):
        build("data.image_size=31")
    task = build("model.kl_warmup_steps=10", "model.beta=0.5")
    betas = [float(task.beta(jnp.int32(s))) for s in (0, 5, 10, 50)]
    np.testing.assert_allclose(betas, [0.0, 0.25, 0.5, 0.5])
