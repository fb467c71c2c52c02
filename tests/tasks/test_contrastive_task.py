"""Contrastive training steps: feature-cache accumulation and the sharded losses inside a real step."""

import jax
import numpy as np
import pytest
from test_step import contrastive_setup, fake_batches, train


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


@pytest.mark.parametrize("impl", ["ring", "all_gather"])
def test_sharded_loss_inside_the_train_step_matches_dense(impl):
    opt = ("optimizer.name=sgd", "optimizer.learning_rate=0.1", "mesh.data=4", "mesh.fsdp=2")
    batches = fake_batches(2)
    dense, l_dense = train(*contrastive_setup(8, *opt), batches)
    sharded, l_sh = train(*contrastive_setup(8, *opt, f"model.loss_impl={impl}"), batches)
    np.testing.assert_allclose(l_dense, l_sh, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(dense.params), jax.tree.leaves(sharded.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_clip_softmax_with_gathered_loss_trains():
    opt = ("model.loss=softmax", "model.loss_impl=all_gather")
    _, losses = train(*contrastive_setup(8, *opt), fake_batches(3))
    assert all(np.isfinite(losses))
