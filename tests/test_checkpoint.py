"""Checkpoints: cross-mesh restore, corrupt-latest fallback, no silent overwrite."""

import os

import jax
import numpy as np
import pytest

from jvlm.config import load_config
from jvlm.train import loop
from jvlm.train.checkpoint import Checkpointer


def state_on(n_devices, *overrides):
    cfg = load_config("configs/siglip_shapes.py:tiny", [f"--config.{o}" for o in overrides])
    task, mesh = loop.build(cfg, None, devices=jax.devices()[:n_devices])
    abstract, shardings, _, init_state = loop.abstract_state(task, cfg, mesh)
    return abstract, jax.jit(init_state, out_shardings=shardings)(jax.random.PRNGKey(3))


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("src, dst, mesh_overrides", [
    (8, 1, ()),
    (1, 8, ()),
    (8, 8, ("mesh.data=2", "mesh.fsdp=2", "mesh.model=2")),  # data-parallel -> FSDP + tensor parallel
])
def test_restore_on_a_different_mesh(tmp_path, src, dst, mesh_overrides):
    _, state = state_on(src)
    ck = Checkpointer(str(tmp_path / "ck"), keep=2, async_save=True)
    ck.save(4, state, {"next_step": 4})
    ck.close()
    abstract, _ = state_on(dst, *mesh_overrides)
    step, restored, data = Checkpointer(str(tmp_path / "ck"), keep=2).restore_latest(abstract)
    assert step == 4 and data["next_step"] == 4
    assert_same(state, restored)
    leaf = jax.tree.leaves(restored.params)[0]
    assert len(leaf.sharding.device_set) == dst
    if mesh_overrides:  # the restored arrays carry the new mesh's sharding
        kernel = restored.params["main"]["img"]["encoder"]["block0"]["mlp"]["fc1"]["kernel"]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")


def test_corrupt_latest_falls_back_to_previous_and_is_kept_aside(tmp_path, capsys):
    abstract, state = state_on(1)
    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=3, async_save=False)
    ck.save(1, state, {"next_step": 1})
    ck.save(2, state.replace(step=state.step + 2), {"next_step": 2})
    ck.close()
    # truncate every data file of the newest checkpoint, as a crash mid-copy would
    for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "state"):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(3)
    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    step, restored, _ = ck.restore_latest(abstract)
    assert step == 1 and int(restored.step) == 0
    assert "checkpoint at step 2 could not be restored" in capsys.readouterr().out
    assert os.listdir(tmp_path / "checkpoints_corrupt")  # moved aside, not deleted
    assert ck.steps() == [1]


def test_existing_step_is_never_overwritten(tmp_path):
    _, state = state_on(1)
    ck = Checkpointer(str(tmp_path / "ck"), keep=2, async_save=False)
    ck.save(3, state, {"next_step": 3})
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        ck.save(3, state, {"next_step": 3})
    ck.close()
