"""The diffusion task in process: conditioning variants, the denoisers, self-conditioning, a frozen text tower
as the prompt model, config errors (the real CLIs are in test_diffusion_cli.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from helpers import train

from jvlm.config import ConfigError, load_config
from jvlm.eval.generation_metrics import frechet_distance
from jvlm.models.unet import UNet, masked_mean
from jvlm.tasks.diffusion import _class_of
from jvlm.train import loop

DDPM = "configs/ddpm_shapes.py:tiny"


def perturbed(params, scale: float):
    """Parameters plus Gaussian noise: at init the zero-initialized output layers block every gradient path."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    return jax.tree.unflatten(tree, [v + scale * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])


def test_class_conditional_self_conditioned_variant_trains_on_single_objects_with_a_null_class():
    # Class conditioning and self-conditioning in one model, one compiled step. A learning rate of 1e-2 (the tiny
    # config's 1e-3 moves the loss less than its step-to-step noise in 8 steps).
    cfg = load_config("configs/ddpm_shapes.py:tiny,class", ["--config.optimizer.learning_rate=1e-2",
                                                             "--config.diffusion.self_condition=True"])
    task, mesh = loop.build(cfg, None, devices=jax.devices()[:1])
    task.setup()
    batch = {k: v for k, v in next(task.train_loader(0, (0, cfg.batch_size))).items() if not k.startswith("_")}
    assert set(batch) >= {"image", "label"} and "text" not in batch
    _, shardings, groups, init_state = loop.abstract_state(task, cfg, mesh)
    state = jax.jit(init_state, out_shardings=shardings)(jax.random.key(0))
    init_params = state.params["main"]
    embedding = np.asarray(init_params["denoiser"]["class_embedding"])
    assert embedding.shape[0] == 49  # 48 classes + the null class
    assert init_params["denoiser"]["conv_in"]["kernel"].shape[2] == 6  # [x_t, x0 estimate]

    # Self-conditioning: the estimate's input weights get gradient exactly on the batches that ran the first pass
    # (an input of zeros gives none): about half of them. On perturbed weights: zero-initialized output layers block
    # every gradient path at init.
    params = perturbed(init_params, 0.05)
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}

    class Ctx:
        step, model_state, carry = jnp.int32(0), {}, {}
    grad = jax.jit(jax.grad(lambda p, r: task.loss_fn({"main": p}, device_batch, r, Ctx()).loss))
    reads = [float(jnp.abs(grad(params, jax.random.key(i))["denoiser"]["conv_in"]["kernel"][:, :, 3:]).max()) > 0
             for i in range(12)]
    assert 2 <= sum(reads) <= 10, reads

    # Eight steps on one batch: the loss falls from the zero-initialized output's 1.0 by far more than the 0.01
    # its noise draws move it, and exactly the batch's classes and the null class (conditioning dropout) learn.
    state, losses = train(loop.jit_train_step(task, groups, shardings), state, mesh, [batch] * 8)
    assert max(losses[-2:]) < min(losses[:2]) - 0.05, losses
    moved = np.flatnonzero(np.any(np.asarray(state.params["main"]["denoiser"]["class_embedding"]) != embedding, -1))
    assert moved.tolist() == sorted({*batch["label"].tolist(), 48})
    assert task.encode_prompts(["a large red circle"])["label"].tolist() == [0]
    with pytest.raises(ValueError, match="names none of 48 classes"):
        task.encode_prompts(["a red thing"])
    # The sampler feeds the previous step's estimate back in.
    images = task.generate(state.params["main"], ["a large red circle"] * 2, jax.random.key(3))
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="conditioning dropout"):
        loop.build(load_config(DDPM, ["--config.conditioning.dropout=0"]), None, devices=jax.devices()[:1])
    with pytest.raises(ConfigError, match="conditional model"):
        loop.build(load_config(DDPM, ["--config.conditioning.kind=none"]), None, devices=jax.devices()[:1])
    with pytest.raises(ConfigError, match="schedule has 100"):
        loop.build(load_config(DDPM, ["--config.sample.steps=500"]), None, devices=jax.devices()[:1])
    with pytest.raises(ConfigError, match=r"zero_terminal_snr .* set diffusion.prediction='v'"):
        loop.build(load_config(DDPM, ["--config.diffusion.zero_terminal_snr=True"]), None, devices=jax.devices()[:1])
    with pytest.raises(ConfigError, match=r"sample: guidance_rescale=2.0 is a mixing weight"):
        loop.build(load_config(DDPM, ["--config.sample.guidance_rescale=2.0"]), None, devices=jax.devices()[:1])
    cfg = load_config("configs/ddpm_shapes.py:tiny,class", ["--config.eval.inception_weights=/nowhere/inception.npz"])
    task, _ = loop.build(cfg, None, devices=jax.devices()[:1])
    with pytest.raises(ConfigError, match=r"eval.inception_weights: .*do not exist.*np\.savez"):
        task.setup()  # checked before training starts, with the conversion one-liner


def test_unet_starts_at_zero_and_checks_its_inputs():
    net = UNet(out_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), num_heads=2, context_dim=16)
    x, t = jnp.ones((2, 8, 8, 3)), jnp.array([0, 5])
    ctx, mask = jnp.ones((2, 4, 16)), jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    params = net.init(jax.random.key(0), x, t, context=ctx, context_mask=mask)["params"]
    np.testing.assert_array_equal(net.apply({"params": params}, x, t, context=ctx, context_mask=mask), 0.0)
    with pytest.raises(ValueError, match="divisible by 2"):
        net.apply({"params": params}, jnp.ones((2, 7, 7, 3)), t, context=ctx, context_mask=mask)
    with pytest.raises(ValueError, match="pass `context`"):
        net.apply({"params": params}, x, t)


def test_pooled_context_reaches_the_time_embedding():
    x = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    mask = jnp.array([[1, 1, 0], [0, 0, 0]], bool)
    np.testing.assert_allclose(masked_mean(x, mask), [[1.0, 2.0], [0.0, 0.0]])  # padding ignored; none valid -> 0
    net = UNet(out_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(), num_heads=2, context_dim=4,
               pooled_context=True)
    x_t, t = jnp.ones((2, 8, 8, 3)), jnp.array([0, 5])
    ctx, mask = jax.random.normal(jax.random.key(1), (2, 3, 4)), jnp.ones((2, 3), bool)
    # Jitted throughout: op by op, a UNet's init and gradient compile each primitive alone (about 3x slower).
    params = jax.jit(net.init)(jax.random.key(0), x_t, t, context=ctx, context_mask=mask)["params"]
    assert params["pooled_context"]["kernel"].value.shape == (4, 32)  # context width -> the time embedding's
    out = jax.jit(lambda p, c: net.apply({"params": p}, x_t, t, context=c, context_mask=mask))
    # The pooled prompt moves every ResBlock: on perturbed weights (zero-initialized output layers block every path
    # at init) with the only cross-attention (the middle block's) switched off, the prompt still changes the output.
    params = perturbed(nn.unbox(params), 0.1)
    params["mid_attn"]["cross_attn"]["out"]["kernel"] = jnp.zeros_like(params["mid_attn"]["cross_attn"]["out"]["kernel"])
    g = jax.jit(jax.grad(lambda p: out(p, ctx).sum()))(params)
    assert float(jnp.abs(g["pooled_context"]["kernel"]).max()) > 0
    assert float(jnp.abs(out(params, ctx) - out(params, ctx + 1.0)).max()) > 1e-4
    with pytest.raises(ConfigError, match="pooled_context pools the prompt"):
        loop.build(load_config("configs/ddpm_shapes.py:tiny,class", ["--config.model.unet.pooled_context=True"]), None,
                   devices=jax.devices()[:1])


def test_dit_denoiser_in_the_task_starts_as_identity_blocks_and_learns():
    cfg = load_config("configs/ddpm_shapes.py:tiny,dit", [])
    task, _ = loop.build(cfg, None, devices=jax.devices()[:1])
    task.setup()
    params, _ = jax.jit(task.init)(jax.random.key(0))
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    batch = {k: jnp.asarray(v) for k, v in next(task.train_loader(0, (0, cfg.batch_size))).items() if k[0] != "_"}

    class Ctx:
        step, model_state, carry = jnp.int32(0), {}, {}
    loss = lambda p: task.loss_fn({"main": p}, batch, jax.random.key(1), Ctx()).loss  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(loss))(params["main"])
    assert value == pytest.approx(1.0, abs=0.2)  # predicts 0 for ε ~ N(0, I) at init
    g = grads["denoiser"]
    assert float(jnp.abs(g["final"]["kernel"]).max()) > 0      # the zero-initialized output layer learns first
    assert float(jnp.abs(g["block0"]["attn"]["query"]["kernel"]).max()) == 0  # gated off by adaLN-Zero at init


def test_prompt_classes_and_frechet_distance():
    assert _class_of("a single large Red circle") == 0 and _class_of("a red circle and a blue star") is None
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean shifted by (2, 0, 0): FD = 4
    assert frechet_distance(a, a + np.array([2.0, 0, 0])) == pytest.approx(4.0, abs=1e-6)
    # N(0, I) against N(0, 4I) in 3 dims: 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance(rng.normal(size=(200_000, 3)), 2 * rng.normal(size=(200_000, 3))) == pytest.approx(3.0, rel=0.02)


def test_a_frozen_contrastive_text_tower_is_the_prompt_model(reference_run):
    from jvlm.eval.contrastive_model import ContrastiveModel
    from jvlm.models.two_tower import l2_normalize
    judge, _ = reference_run
    cfg = load_config(DDPM, [f"--config.model.text.run={judge}"])
    task, _ = loop.build(cfg, None, devices=jax.devices()[:1])
    task.setup()
    params, _ = jax.jit(task.init)(jax.random.key(0))
    assert set(params["main"]) == {"denoiser"}  # the tower's parameters are constants, not trained state
    contrastive = ContrastiveModel.load(judge)
    prompts = ["a large red circle", "a small blue star"]
    tokens = task.encode_prompts(prompts)["text"]  # through the tower's own tokenizer
    np.testing.assert_array_equal(tokens, contrastive.tokenizer.encode_batch(prompts, cfg.data.max_text_len)[0])
    # The per-token features are the contrastive run's: pooled at EOS and projected, they are its text embedding.
    tower, tower_params = task.frozen_text
    pooled = tower.clone(pool="eos").apply({"params": tower_params}, tokens)
    proj = contrastive.params["txt_proj"]
    np.testing.assert_allclose(l2_normalize(pooled @ proj["kernel"] + proj["bias"]), contrastive.encode_text(prompts),
                               atol=1e-5)
    with pytest.raises(ConfigError, match="set data.max_text_len="):
        bad = load_config(DDPM, [f"--config.model.text.run={judge}", "--config.data.max_text_len=16"])
        loop.build(bad, None, devices=jax.devices()[:1])[0].setup()
    with pytest.raises(ConfigError, match="model.text.run: .*not a jvlm run directory"):
        bad = load_config(DDPM, ["--config.model.text.run=/nowhere"])
        loop.build(bad, None, devices=jax.devices()[:1])[0].setup()
