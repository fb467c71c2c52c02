"""VQ-GAN on the spine: two optimizers and parameter groups in one step and one checkpoint, the adaptive
weight against its definition, pluggable perceptual features, and tokenizing outside training."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from helpers import REPO, devices_env, run_cli
from models.test_feature_nets import write_conv_net

from experiments import tokenize as tokenize_cli
from jvlm.config import load_config
from jvlm.data.shapes import ShapesSource
from jvlm.eval.image_tokenizer import ImageTokenizer
from jvlm.objectives import gan
from jvlm.tasks.vqvae import VQAutoencoder
from jvlm.train import loop
from jvlm.train.run_loader import load_weights
from jvlm.train.metrics import read_metrics
from jvlm.train.run_loader import STATE_ITEM, restore_subtrees, stored_state
from jvlm.train.step import StepContext

TINY = "configs/vqgan_shapes.py:tiny"


def build(*overrides):
    cfg = load_config(TINY, [f"--config.{o}" for o in overrides])
    task, _ = loop.build(cfg, None, devices=jax.devices()[:1])
    return task


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """20 tiny steps, the discriminator from step 10, perceptual features from a file the test wrote; every
    checkpoint (5, 10, 15, 20) kept."""
    tmp = tmp_path_factory.mktemp("vqgan")
    write_conv_net(tmp / "net.npz")
    proc = run_cli(["experiments.train", "--config", TINY, "--workdir", str(tmp / "run"), "--config.gan.start_step=10",
                    f"--config.perceptual.weights_file={tmp / 'net.npz'}", "--config.keep_checkpoints=4"],
                   env=devices_env(1))
    return tmp / "run", proc


def test_generator_and_discriminator_train_in_one_step_and_one_checkpoint(run):
    workdir, proc = run
    assert "perceptual loss: conv net from" in proc.stdout + proc.stderr
    rows = [r for r in read_metrics(workdir) if "adaptive_weight" in r]
    before, after = [r for r in rows if r["step"] <= 10], [r for r in rows if r["step"] > 10]
    assert before and after
    assert all(r["adaptive_weight"] == 0 and r["disc/loss"] == 0 for r in before)  # GAN off before start_step
    assert all(r["adaptive_weight"] > 0 and r["gan_weight"] > 0 and r["disc/loss"] > 0 and r["perceptual"] > 0
               for r in after)
    assert "eval/psnr" in rows[-1] and "disc/learning_rate" in rows[-1]
    params = load_weights(str(workdir)).params
    assert set(params) == {"main", "disc"}
    # The discriminator learns from gan.start_step on, and only then: bit for bit the same at steps 5 and 10 (while
    # the tokenizer moved), different at 20.
    at = params_at(workdir, (5, 10, 20))
    assert trees_equal(at[5]["disc"], at[10]["disc"]) and not trees_equal(at[5]["main"], at[10]["main"])
    assert not trees_equal(at[10]["disc"], at[20]["disc"])


def params_at(workdir, steps) -> dict:
    """{step: params by group} from the run's checkpoints at these steps (only the parameters are read)."""
    out = {}
    for step in steps:
        directory = epath.Path(workdir) / "checkpoints" / str(step) / STATE_ITEM
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored_state(directory)["params"])
        out[step] = restore_subtrees(directory, {"params": target})["params"]
    return out


def trees_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_a_checkpoint_tokenizes_and_detokenizes_outside_training(run, tmp_path):
    workdir, _ = run
    tok = ImageTokenizer.load(str(workdir))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    codes = tok.tokenize(images)
    assert codes.shape == (3, 16, 16) and codes.dtype == np.int32 and 0 <= codes.min() and codes.max() < 32
    back = tok.detokenize(codes)
    assert back.shape == images.shape and back.dtype == np.uint8
    # An image's codes do not depend on the rest of its batch (no batch statistics at inference).
    np.testing.assert_array_equal(tok.tokenize(images[1:2]), codes[1:2])
    with pytest.raises(ValueError, match=r"expects uint8 images \[N, 32, 32, 3\].*got shape \(3, 32, 32, 4\)"):
        tok.tokenize(np.zeros((3, 32, 32, 4), np.uint8))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
        tok.detokenize(codes + 32)

    out = tmp_path / "codes.npz"
    # The command's main() in this process (its flags, loading, batching and writing are what the CLI runs).
    args = ["--config", TINY, "--workdir", str(workdir), "--split", "test", "--num_examples", "40", "--out", str(out)]
    tokenize_cli.main(args)
    saved = np.load(out)
    assert saved["codes"].shape == (40, 16, 16) and len(saved["caption"]) == 40
    source = ShapesSource("test", image_size=tok.image_size)
    rows = [source[int(i)] for i in saved["index"][[0, 17, 39]]]
    np.testing.assert_array_equal(saved["codes"][[0, 17, 39]], tok.tokenize(np.stack([r["image"] for r in rows])))
    assert list(saved["caption"][[0, 17, 39]]) == [r["caption"] for r in rows]
    with pytest.raises(SystemExit, match="exists"):  # never overwritten
        tokenize_cli.main(args)


def test_adaptive_weight_matches_gradient_norms_at_the_last_layer():
    task = build("gan.start_step=0")
    task.setup()
    params, state = task.init(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = jax.jit(task.loss_fn)(params, {"image": jnp.asarray(images)}, jax.random.PRNGKey(2),
                                StepContext(jnp.int32(0), state))
    # Independently: differentiate the whole model w.r.t. the decoder's last kernel.
    x = jnp.asarray(images, jnp.float32) / 127.5 - 1

    def reconstruct(kernel):
        p = jax.tree.map(lambda a: a, params["main"])
        p["dec"]["conv_out"] = dict(p["dec"]["conv_out"], kernel=kernel)
        _, q = task.encode_quantize(p, state, x)
        return task.model.apply({"params": p}, q.quantized, method=VQAutoencoder.decode)

    kernel = params["main"]["dec"]["conv_out"]["kernel"]
    g_rec = jax.jit(jax.grad(lambda k: jnp.mean(jnp.square(reconstruct(k) - x))))(kernel)
    g_gan = jax.jit(jax.grad(lambda k: gan.generator_loss(task.discriminator.apply({"params": params["disc"]}, reconstruct(k)),
                                                  "hinge")))(kernel)
    want = np.linalg.norm(g_rec) / (np.linalg.norm(g_gan) + 1e-4)
    assert float(out.metrics["adaptive_weight"]) == pytest.approx(float(want), rel=1e-3)


def test_perceptual_features_from_a_trained_run_or_off_with_a_message(reference_run, capsys):
    build().setup()
    assert "perceptual loss: off" in capsys.readouterr().out
    task = build(f"perceptual.run={reference_run[0]}")
    task.setup()
    assert "contrastive image encoder" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32) for _ in range(2))
    assert float(task.perceptual(a, a)) == pytest.approx(0.0, abs=1e-6) and float(task.perceptual(a, b)) > 0


def test_the_readme_tokenizer_script_runs_on_a_checkpoint(run):
    """The README's "Tokenizing outside training" snippet, as a user would paste it, pointed at this run."""
    workdir, _ = run
    text = open(os.path.join(REPO, "README.md")).read()
    snippet = next(block for block in re.findall(r"```python\n(.*?)\n```", text, re.S) if "ImageTokenizer.load" in block)
    scope = {}
    exec(snippet.replace('"runs/vqgan_shapes"', repr(str(workdir))), scope)
    tok, codes, recon = scope["tok"], scope["codes"], scope["recon"]
    assert codes.shape == (8, 16, 16) and codes.max() < tok.codebook_size and recon.shape == (8, 32, 32, 3)
