"""The dVAE task on the spine: a training run, hard-code tokenize/detokenize, which parameters the relaxation
trains, sharding, bad config."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from helpers import devices_env, run_cli

from jvlm import sharding
from jvlm.config import ConfigError, load_config
from jvlm.tasks.dvae import DiscreteVAE
from jvlm.train import loop
from jvlm.train.metrics import read_metrics
from jvlm.train.step import StepContext

TINY = "configs/dvae_shapes.py:tiny"


def build(*overrides):
    return loop.build(load_config(TINY, [f"--config.{o}" for o in overrides]), None, devices=jax.devices()[:1])[0]


@pytest.fixture(scope="module")
def params():
    return meta.unbox(jax.jit(build().init)(jax.random.PRNGKey(0))[0])


def images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_cli_run_anneals_tau_lowers_the_loss_and_reports_code_metrics(tmp_path):
    run_cli(["experiments.train", "--config", TINY, "--workdir", str(tmp_path)], env=devices_env(1))
    rows = read_metrics(tmp_path)
    first, last = rows[0], rows[-1]
    assert last["loss"] < first["loss"]
    for key in ("eval/psnr", "eval/ssim", "eval/codebook_usage", "eval/perplexity", "eval/kl", "eval/psnr_sampled",
                "psnr", "kl", "perplexity"):
        assert key in last and math.isfinite(last[key]), key
    assert 0 < last["eval/codebook_usage"] <= 1 and 1 <= last["eval/perplexity"] <= 32
    assert first["temperature"] < 1.0 and last["temperature"] == pytest.approx(1 / 16)
    assert last["kl_weight"] == pytest.approx(load_config(TINY).model.quantizer.kl_weight)
    assert sorted(os.listdir(tmp_path / "samples")) == ["reconstructions_0000010.png", "reconstructions_0000020.png"]


def test_tokenize_gives_hard_codes_and_detokenize_images_of_the_input_shape(params):
    task = build()
    fn = task.functions()
    x = images()
    codes = fn["tokenize"](params["main"], {}, x)
    assert codes.shape == (4, 16, 16) and jnp.issubdtype(codes.dtype, jnp.integer)   # tiny: downsampling 2
    assert 0 <= int(codes.min()) and int(codes.max()) < 32
    np.testing.assert_array_equal(codes, fn["tokenize"](params["main"], {}, x))     # no noise at inference
    out = fn["detokenize"](params["main"], {}, codes)
    assert out.shape == x.shape and out.dtype == jnp.float32
    # Codes decode as the one-hot rows of the codebook they index.
    decode = jax.jit(lambda p, y: task.model.apply({"params": p}, y, method=DiscreteVAE.decode))
    via_one_hot = decode(params["main"], jax.nn.one_hot(codes, 32))
    np.testing.assert_allclose(out, via_one_hot, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hard", [False, True])
def test_encoder_codebook_and_decoder_all_learn_from_the_reconstruction_through_the_relaxation(params, hard):
    # The MSE alone: the encoder's gradient can then only come through the relaxed samples.
    task = build(f"model.quantizer.hard={hard}")
    batch = {"image": images(8)}
    loss = jax.jit(lambda p, step: task.loss_fn(p, batch, jax.random.PRNGKey(1), StepContext(step, {})).metrics["mse"])
    grads = jax.grad(loss)(params, jnp.int32(10))["main"]
    assert set(grads) == {"enc", "dec", "codebook"}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)


def test_loss_on_eight_devices_matches_one_device(params):
    # The Gumbel noise and the code statistics are drawn and reduced over the global batch, on any mesh.
    task, batch = build(), {"image": images(16)}
    loss = jax.jit(lambda p, b: task.loss_fn(p, b, jax.random.PRNGKey(1), StepContext(jnp.int32(5), {})))
    one = loss(params, batch)
    mesh = sharding.make_mesh({"data": 8})
    eight = loss(jax.device_put(params, sharding.replicated(mesh)), sharding.global_batch(batch, mesh))
    for key in ("mse", "kl", "perplexity", "codebook_usage"):
        np.testing.assert_allclose(float(one.metrics[key]), float(eight.metrics[key]), rtol=1e-4, err_msg=key)


def test_bad_schedules_are_named():
    with pytest.raises(ConfigError, match="temperature_end <= temperature_start"):
        build("model.quantizer.temperature_end=2.0")
    with pytest.raises(ConfigError, match="kl_warmup_fraction is a fraction of total_steps"):
        build("model.quantizer.kl_warmup_fraction=1.5")
