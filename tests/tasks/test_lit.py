"""LiT: the image tower comes from a pretrained run, stays bit-identical, and the text tower learns."""

import jax
import numpy as np
import pytest
from helpers import devices_env, run_cli
from flax.core import meta

from jvlm.config import ConfigError, load_config
from jvlm.tasks.contrastive import ContrastiveTask
from jvlm.train import loop
from jvlm.train.run_loader import load_weights


def test_lit_locks_the_pretrained_image_tower_and_trains_the_text_tower(reference_run, tmp_path):
    pretrained, _ = reference_run  # the tiny SigLIP run the suite trains once
    proc = run_cli(["experiments.train", "--config.eval_every=100", "--config", "configs/siglip_shapes.py:tiny,lit",
                    "--workdir", str(tmp_path / "lit"), "--config.total_steps=4",
                    f"--config.init_from.checkpoint={pretrained}"], env=devices_env(1))
    assert "initialized" in proc.stderr and "from" in proc.stderr
    pre = load_weights(str(pretrained)).params
    lit = load_weights(str(tmp_path / "lit"))
    step, lit = lit.step, lit.params
    assert step == 4
    for part in ("img", "img_proj"):
        for a, b in zip(jax.tree.leaves(pre["main"][part]), jax.tree.leaves(lit["main"][part])):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    cfg = load_config("configs/siglip_shapes.py:tiny")
    fresh = meta.unbox(ContrastiveTask(cfg, None, None).init(jax.random.PRNGKey(cfg.seed))[0])
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh["main"]["txt"]),
                                                        jax.tree.leaves(lit["main"]["txt"]))]
    assert all(changed)


def test_lit_without_a_checkpoint_is_a_clear_error():
    cfg = load_config("configs/siglip_shapes.py:tiny,lit")
    with pytest.raises(ConfigError, match=r"set --config.init_from.checkpoint=WORKDIR"):
        loop.build(cfg, None)
