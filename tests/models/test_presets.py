"""Size presets reproduce the published SigLIP parameter counts (jax.eval_shape: nothing is allocated)."""

import jax
import numpy as np
import pytest
from flax.core import meta

from jvlm.config import load_config
from jvlm.tasks.contrastive import ContrastiveTask

# Total parameters of the released SigLIP checkpoints (image + text towers, temperature and bias).
PUBLISHED = {"B/16": 203.16e6, "L/16": 652.15e6, "So400m/14": 877.4e6}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_parameter_count_matches_published(preset):
    cfg = load_config(f"configs/siglip_shapes.py:{preset}")
    boxed, _ = jax.eval_shape(ContrastiveTask(cfg, None, None).init, jax.random.PRNGKey(0))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(meta.unbox(boxed)))
    assert count == pytest.approx(PUBLISHED[preset], rel=1e-3)


def test_tiny_is_cpu_sized_and_presets_are_not():
    tiny = load_config("configs/siglip_shapes.py:tiny")
    assert tiny.model.image.width == 32 and tiny.batch_size == 16
    assert load_config("configs/siglip_shapes.py:B/16").model.image.width == 768


def test_peer_variant_has_the_agreed_sizes():
    c = load_config("configs/siglip_shapes.py:peer")
    assert (c.data.image_size, c.model.image.patch_size, c.batch_size, c.model.embed_dim) == (64, 8, 64, 256)
    for tower in (c.model.image, c.model.text):
        assert (tower.width, tower.depth, tower.num_heads, tower.mlp_dim) == (256, 6, 4, 1024)
    assert (c.data.max_text_len, c.data.vocab_size, c.optimizer.name) == (32, 8192, "adamw")
    boxed, _ = jax.eval_shape(ContrastiveTask(c, None, None).init, jax.random.PRNGKey(0))
    assert meta.unbox(boxed)["main"]["txt"]["token_embedding"].shape == (8192, 256)
