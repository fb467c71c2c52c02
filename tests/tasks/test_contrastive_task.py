"""Contrastive training steps: feature-cache accumulation and the sharded losses inside a real step."""

import jax
import numpy as np
import pytest
from helpers import contrastive_setup, fake_batches, train
from test_step import lowered_step


def test_feature_cache_accumulation_equals_one_large_batch():
    # SGD: parameters after the step are linear in the gradient, so equality is tight.
    opt = ("optimizer.name=sgd", "optimizer.learning_rate=0.1", "batch_size=32")
    batches = fake_batches(2, batch=32)
    big, l_big = train(*contrastive_setup(8, *opt), batches)
    acc, l_acc = train(*contrastive_setup(8, *opt, "grad_accum_steps=4"), batches)
    np.testing.assert_allclose(l_big, l_acc, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(big.params), jax.tree.leaves(acc.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_naive_mean_accumulation_would_differ():
    # Guards the test above: averaging per-micro-batch losses sees fewer negatives and differs.
    from jvlm.objectives.contrastive import sigmoid_loss
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 8)), rng.normal(size=(32, 8))
    full = float(sigmoid_loss(x, y, 1.0, -2.0))
    naive = np.mean([float(sigmoid_loss(x[i::4], y[i::4], 1.0, -2.0)) for i in range(4)])
    assert abs(full - naive) > 1e-2


# What each loss_impl asks for in the lowered step, before XLA partitions it (FSDP's all-gathers come later):
# the ring passes text blocks with ppermute, the gathered loss all-gathers the features, the dense loss neither.
COLLECTIVES = {"dense": set(), "ring": {"collective_permute"}, "all_gather": {"all_gather"}}


def collectives(text: str) -> set[str]:
    return {op for op in ("collective_permute", "all_gather") if f"stablehlo.{op}" in text}


def run_with_program(overrides, batches):
    """(final state, losses, lowered text) of the tiny contrastive step on 8 devices."""
    fn, state, mesh = contrastive_setup(8, *overrides)
    step, text = lowered_step(fn, state, mesh, batches[0])
    return (*train(step, state, mesh, batches), text)


SHARDED_OPT = ("optimizer.name=sgd", "optimizer.learning_rate=0.1", "mesh.data=4", "mesh.fsdp=2")


@pytest.fixture(scope="module")
def dense_sigmoid_run():
    return run_with_program(SHARDED_OPT, fake_batches(2))


@pytest.mark.parametrize("impl", ["ring", "all_gather"])
def test_sharded_loss_inside_the_train_step_matches_dense(impl, dense_sigmoid_run):
    dense, l_dense, t_dense = dense_sigmoid_run
    sharded, l_sh, t_sh = run_with_program((*SHARDED_OPT, f"model.loss_impl={impl}"), fake_batches(2))
    assert collectives(t_dense) == COLLECTIVES["dense"] and collectives(t_sh) == COLLECTIVES[impl]
    np.testing.assert_allclose(l_dense, l_sh, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(dense.params), jax.tree.leaves(sharded.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_clip_softmax_with_gathered_loss_trains():
    batches = fake_batches(1) * 3  # one batch: the loss then moves by training alone (the first step's lr is 0)
    _, dense, t_dense = run_with_program(("model.loss=softmax",), batches)
    _, gathered, t_gathered = run_with_program(("model.loss=softmax", "model.loss_impl=all_gather"), batches)
    assert collectives(t_dense) == COLLECTIVES["dense"] and collectives(t_gathered) == COLLECTIVES["all_gather"]
    np.testing.assert_allclose(gathered, dense, rtol=1e-5)  # the same losses as the dense softmax, step by step
    assert gathered[-1] < 0.75 * gathered[0], gathered  # 3.85 -> 1.99 (with a learning rate near 0: 3.85)


def with_hard_negatives(batches, k=2, seed=1):
    """Adds k negative captions per example: the caption with its first token changed."""
    rng = np.random.default_rng(seed)
    out = []
    for b in batches:
        n = b["text"].shape[0]
        neg = np.repeat(b["text"][:, None], k, axis=1)
        neg[:, :, 0] = rng.integers(3, 200, (n, k))
        out.append(b | {"neg_text": neg.astype(np.int32), "neg_valid": rng.random((n, k)) < 0.8})
    return out


@pytest.mark.parametrize("overrides", [("grad_accum_steps=4",), ("model.loss_impl=ring", "mesh.data=4", "mesh.fsdp=2")])
def test_hard_negatives_through_accumulation_and_the_ring_match_one_dense_batch(overrides):
    opt = ("optimizer.name=sgd", "optimizer.learning_rate=0.1", "batch_size=32", "data.hard_negatives=2")
    batches = with_hard_negatives(fake_batches(2, batch=32))
    ref, l_ref = train(*contrastive_setup(8, *opt), batches)
    got, l_got = train(*contrastive_setup(8, *opt, *overrides), batches)
    np.testing.assert_allclose(l_ref, l_got, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # Guard: the negatives are in the loss. At SigLIP's initial bias (-10) each adds only ~e^-10, but
    # strictly positively: 51 valid slots / 32 images ~ 1e-4, far above float32 rounding at a loss of 10.
    _, l_plain = train(*contrastive_setup(8, *opt[:3]), batches[:1])
    assert l_ref[0] - l_plain[0] > 2e-5


def test_the_data_transform_makes_swapped_captions(tmp_path):
    from jvlm.config import load_config
    from jvlm.data import shapes
    from jvlm.train import loop
    cfg = load_config("configs/siglip_shapes.py:tiny", ["--config.data.hard_negatives=3"])
    task, _ = loop.build(cfg, str(tmp_path), devices=jax.devices()[:1])
    task.setup()
    src = shapes.ShapesSource("train", image_size=32)
    for i in range(5):
        ex = task.transform(src[i], np.random.default_rng(i))
        assert ex["neg_text"].shape == (3, cfg.data.max_text_len) and ex["neg_valid"].all()
        caption = task.tokenizer.decode(ex["text"])
        for neg in task.tokenizer.decode_batch(ex["neg_text"]):
            diff = [(a, b) for a, b in zip(caption.split(), neg.split()) if a != b]
            assert len(diff) == 1 and {w.rstrip(",") for w in diff[0]} <= set(shapes.SHAPES), (caption, neg)


@pytest.mark.parametrize("overrides, match", [
    (("data.hard_negatives=1", "data.swap_groups=()"), "swap_groups"),
    (("data.hard_negatives=-1",), ">= 0"),
    (("data.hard_negatives=1", "model.loss=softmax", "model.loss_impl=all_gather"), "loss_impl='dense'"),
])
def test_bad_hard_negative_settings_are_refused(overrides, match):
    from jvlm.config import ConfigError, load_config
    from jvlm.train import loop
    cfg = load_config("configs/siglip_shapes.py:tiny", [f"--config.{o}" for o in overrides])
    with pytest.raises(ConfigError, match=match):
        loop.build(cfg, None, devices=jax.devices()[:1])
