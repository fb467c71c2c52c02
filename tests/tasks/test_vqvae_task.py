"""The VQ-VAE task on the spine: training, evaluation outputs, EMA codebook, sharding, bad input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import devices_env, run_cli, step_setup, train

from jvlm.config import ConfigError, load_config
from jvlm.data.pixels import images_to_float
from jvlm.models.autoencoder import Encoder
from jvlm.objectives import vq
from jvlm.tasks.vqvae import VQAutoencoder
from jvlm.train import loop
from jvlm.train.metrics import read_metrics

TINY = "configs/vqvae_shapes.py:tiny"
PLAIN = ("model.quantizer.ema_decay=0.0", "model.quantizer.restart_below=0.0", "model.quantizer.kmeans_init=0")


def setup(n_devices, *overrides):
    return step_setup(TINY, n_devices, *overrides)


def batches(n, size=32):
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8)} for _ in range(n)]


def run_steps(fn, state, mesh, n=3):
    return train(fn, state, mesh, batches(n))


def test_cli_run_logs_reconstruction_metrics_and_writes_a_png_grid(tmp_path):
    run_cli(["experiments.train", "--config", TINY, "--workdir", str(tmp_path)], env=devices_env(1))
    rows = read_metrics(tmp_path)
    last = rows[-1]
    for key in ("eval/psnr", "eval/ssim", "eval/codebook_usage", "eval/perplexity", "psnr", "perplexity"):
        assert key in last, key
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert 0 < last["eval/codebook_usage"] <= 1 and 1 <= last["eval/perplexity"] <= 32
    assert sorted(os.listdir(tmp_path / "samples")) == ["reconstructions_0000010.png", "reconstructions_0000020.png"]
    from PIL import Image
    assert Image.open(tmp_path / "samples" / "reconstructions_0000020.png").size[1] == 2 * 34 + 2  # 2 rows


@pytest.fixture(scope="module")
def ema_step():
    """One compiled 1-device step with the EMA codebook (no restarts), shared by the tests below."""
    return setup(1, "model.quantizer.restart_below=0.0")


def fresh(step_setup_result):
    fn, state, mesh = step_setup_result
    return fn, jax.tree.map(jnp.copy, state), mesh  # the step donates its input state


def test_ema_codebook_lives_in_model_state_starts_at_kmeans_centroids_and_moves(ema_step):
    fn, state, mesh = fresh(ema_step)
    assert "codebook" not in state.params["main"]
    assert not bool(state.model_state["initialized"])
    task = loop.build(load_config(TINY, []), None, devices=jax.devices()[:1])[0]
    x = images_to_float(batches(1)[0]["image"])
    z = np.asarray(task.model.apply({"params": state.params["main"]}, x, method=VQAutoencoder.encode)).reshape(-1, 8)

    def quantization_error(book):
        return np.mean(np.min(np.sum((z[:, None] - np.asarray(book)[None]) ** 2, -1), -1))

    random_error = quantization_error(state.model_state["codebook"])
    state, _ = run_steps(fn, state, mesh, n=1)
    assert bool(state.model_state["initialized"])
    # The step's k-means ran on exactly these encoder outputs: one EMA step later the codes fit them about as
    # well as k-means does on its own, far better than the random start did, and nearly every code is in use.
    kmeans_error = quantization_error(vq.kmeans(z, 32, jax.random.PRNGKey(3), iters=10))
    assert quantization_error(state.model_state["codebook"]) < min(1.15 * kmeans_error, 0.6 * random_error)
    used = np.unique(np.argmin(np.sum((z[:, None] - np.asarray(state.model_state["codebook"])[None]) ** 2, -1), -1))
    assert len(used) > 0.8 * 32
    after_first = np.asarray(state.model_state["codebook"])
    state, _ = run_steps(fn, state, mesh, n=2)
    assert not np.allclose(after_first, np.asarray(state.model_state["codebook"]))  # EMA updates move the codes


def test_plain_codebook_is_a_parameter_moved_by_the_codebook_loss():
    fn, state, mesh = setup(1, *PLAIN)
    before = np.asarray(state.params["main"]["codebook"])
    state, _ = run_steps(fn, state, mesh)
    assert state.model_state == {} and not np.allclose(before, np.asarray(state.params["main"]["codebook"]))


def test_eight_device_step_matches_one_device_including_ema_statistics(ema_step):
    s1, l1 = run_steps(*fresh(ema_step))
    s8, l8 = run_steps(*setup(8, "model.quantizer.restart_below=0.0"))
    np.testing.assert_allclose(l1, l8, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(s1.model_state["ema"].cluster_size),
                               np.asarray(s8.model_state["ema"].cluster_size), rtol=1e-4, atol=1e-6)


def test_bad_inputs_are_named():
    enc = Encoder(out_channels=4, ch=8, ch_mult=(1, 2))
    with pytest.raises(ValueError, match=r"expects images \[batch, height, width, 3\], got shape \(1, 32, 32, 1\)"):
        enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="image size 31x31 is not divisible by the downsampling factor 2"):
        enc.init(jax.random.PRNGKey(0), jnp.zeros((1, 31, 31, 3)))
    with pytest.raises(ConfigError, match="not divisible by the downsampling factor 8"):
        setup(1, "model.encoder.ch_mult=(1, 2, 2, 2)", "data.image_size=36")
    with pytest.raises(ConfigError, match="restart_below needs EMA codebook updates"):
        setup(1, "model.quantizer.ema_decay=0.0")
    with pytest.raises(ConfigError, match="kmeans_init initializes the EMA codebook"):
        setup(1, "model.quantizer.ema_decay=0.0", "model.quantizer.restart_below=0.0")


def test_low_dimensional_cosine_lookup_trains():
    fn, state, mesh = setup(1, "model.quantizer.lookup_dim=4", "model.quantizer.cosine=True")
    lookup = np.asarray(state.params["main"]["to_lookup"]["kernel"])
    # One batch four times: the losses then differ only by training. The first update's learning rate is 0 (warm-up)
    # and its step replaces the codebook by k-means; the two updates after it lower the loss by about a third (with
    # a learning rate near 0 it stays within 1% of the first).
    state, losses = train(fn, state, mesh, batches(1) * 4)
    assert losses[-1] < 0.8 * losses[0], losses
    book = np.asarray(state.model_state["codebook"])
    assert book.shape == (32, 4)
    np.testing.assert_allclose(np.linalg.norm(book, axis=-1), 1.0, rtol=1e-4)  # codes stay on the sphere
    moved = np.asarray(state.params["main"]["to_lookup"]["kernel"])
    assert moved.shape == (8, 4) and not np.allclose(moved, lookup)  # the projection into the lookup space learns
