"""Optimizers from config: schedules, per-parameter LR multipliers, weight-decay masks, errors."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jvlm.config import ConfigError, load_config
from jvlm.train import loop
from jvlm.train.optim import make_optimizer, make_schedule

PARAMS = {"enc": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "logit_scale": jnp.float32(2.0)}


def opt(**kw):
    base = dict(name="sgd", learning_rate=0.1, momentum=0.0, schedule="constant", warmup_steps=0)
    return ml_collections.ConfigDict(base | kw)


def one_update(o, grads=None):
    tx, _, _ = make_optimizer(o, PARAMS, total_steps=100)
    grads = grads or {"enc": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "logit_scale": jnp.float32(1.0)}
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    return updates


def test_lr_multipliers_scale_only_matching_parameters():
    u = one_update(opt(lr_mults=(("logit_.*", 10.0), ("enc/bias", 3.0))))
    assert float(u["logit_scale"]) == pytest.approx(-1.0)
    np.testing.assert_allclose(u["enc"]["bias"], -0.3)
    np.testing.assert_allclose(u["enc"]["kernel"], -0.1)


def test_weight_decay_mask():
    zero = {"enc": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}, "logit_scale": jnp.float32(0.0)}
    u = one_update(opt(name="adamw", weight_decay=0.5, wd_exclude=".*bias|logit_scale"), grads=zero)
    np.testing.assert_allclose(u["enc"]["kernel"], -0.1 * 0.5)  # decayed: -lr * wd * p
    np.testing.assert_allclose(u["enc"]["bias"], 0.0)           # excluded
    assert float(u["logit_scale"]) == 0.0


def test_warmup_then_cosine():
    s = make_schedule(opt(schedule="cosine", warmup_steps=10, end_lr_fraction=0.1), total_steps=110)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.05)
    assert float(s(10)) == pytest.approx(0.1) and float(s(60)) == pytest.approx(0.055)
    assert float(s(110)) == pytest.approx(0.01)


@pytest.mark.parametrize("override, match", [
    ("optimizer.lr_mults=(('logit_.*',),)", r"\(regex, multiplier\) pairs"),
    ("optimizer.lr_mults=(('logit_[', 2.0),)", r"not a valid regex"),
])
def test_bad_lr_mults(override, match):
    cfg = load_config("configs/siglip_shapes.py:tiny", [f"--config.{override}"])
    with pytest.raises(ConfigError, match=match):
        loop.build(cfg, None)


def test_lr_mults_matching_nothing_is_an_error():
    with pytest.raises(ConfigError, match="matches no parameter"):
        make_optimizer(opt(lr_mults=(("nope/.*", 2.0),)), PARAMS, 10)



def test_lr_mults_together_with_a_frozen_subset():
    u = one_update(opt(lr_mults=(("logit_.*", 10.0),), freeze="enc/bias"))
    assert float(u["logit_scale"]) == pytest.approx(-1.0)
    np.testing.assert_allclose(u["enc"]["bias"], 0.0)
    np.testing.assert_allclose(u["enc"]["kernel"], -0.1)
