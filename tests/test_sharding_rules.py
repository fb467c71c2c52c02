"""FSDP, tensor and sequence parallelism on 8 simulated devices: same results, less memory per device."""

import re

import jax
import numpy as np
import pytest
from helpers import contrastive_setup, fake_batches, train
from test_step import lowered_step

from jvlm import sharding
from jvlm.config import ConfigError

DATA_PARALLEL = ("mesh.data=8",)
FSDP = ("mesh.data=1", "mesh.fsdp=8")
SGD = ("optimizer.name=sgd", "optimizer.learning_rate=0.1")


def state_bytes_per_device(fn, state, mesh) -> int:
    """Parameter + optimizer state bytes on one device, from the compiled executable's memory analysis."""
    batch = sharding.global_batch(fake_batches(1)[0], mesh)
    args = fn.lower(state, batch).compile().memory_analysis().argument_size_in_bytes
    batch_bytes = sum(x.addressable_shards[0].data.nbytes for x in batch.values())
    return args - batch_bytes


def test_fsdp_divides_parameter_and_optimizer_memory_by_the_fsdp_factor():
    dp = state_bytes_per_device(*contrastive_setup(8, *DATA_PARALLEL))
    fsdp = state_bytes_per_device(*contrastive_setup(8, *FSDP))
    # Parameters without an "embed" dimension (a few biases, the logit scale) stay replicated.
    assert dp / fsdp > 7.0, (dp, fsdp)


@pytest.fixture(scope="module")
def data_parallel_run():
    state, losses = train(*contrastive_setup(8, *DATA_PARALLEL, *SGD), fake_batches(3))
    return jax.device_get(state), losses


def length_split_activations(text: str) -> set[str]:
    """Shapes of the [batch, length, embed] activations the lowered step constrains with length over `model`."""
    spec = r'<@mesh, \[\{[^}]*\}, \{"model"\}, \{\}\]>'  # [batch: any, length: model, embed: unsplit]
    return set(re.findall(r"sdy\.sharding_constraint [^\n]*" + spec + r" : tensor<(\w+)>", text))


@pytest.mark.parametrize("mesh, length_split", [
    (FSDP, set()),
    (("mesh.data=2", "mesh.fsdp=2", "mesh.model=2"), set()),                                    # FSDP x tensor parallel
    (("mesh.data=4", "mesh.model=2", "sharding_rules=(('length', 'model'),)"),                  # + sequence parallel:
     {"16x16x32xf32", "16x24x32xf32"}),                                      # the 16 patches and the 24 tokens split
], ids=["fsdp", "fsdp_tensor", "sequence"])
def test_fsdp_and_tensor_parallel_runs_match_the_data_parallel_run(mesh, length_split, data_parallel_run):
    ref_state, ref = data_parallel_run
    fn, state, m = contrastive_setup(8, *mesh, *SGD)
    batches = fake_batches(3)
    step, text = lowered_step(fn, state, m, batches[0])
    assert length_split_activations(text) == length_split  # the rule table reached the activations
    state, got = train(step, state, m, batches)
    np.testing.assert_allclose(got, ref, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    kernel = state.params["main"]["img"]["encoder"]["block0"]["mlp"]["fc1"]["kernel"]
    assert kernel.addressable_shards[0].data.size < kernel.size  # really split


def test_a_dimension_the_mesh_does_not_divide_is_named_before_compiling():
    with pytest.raises(ConfigError, match=r"dimension 2 is split over mesh axes \('model',\) of size 8"):
        contrastive_setup(8, "mesh.data=1", "mesh.model=8")


def test_bad_sharding_rules_are_named():
    with pytest.raises(ConfigError, match="unknown mesh axes"):
        contrastive_setup(8, "sharding_rules=(('length', 'tensor'),)")


def test_a_dcn_mesh_must_match_the_slices():
    with pytest.raises(ConfigError, match="DCN sizes must multiply to the number of processes"):
        sharding.make_mesh({"data": -1, "dcn": {"data": 2}})  # one process here, not two
    with pytest.raises(ConfigError, match="spans 3 slices, which does not divide the 8 devices"):
        sharding.resolve_mesh_shape({"data": -1, "dcn": {"data": 3}}, 8)
    assert sharding.resolve_mesh_shape({"data": -1, "fsdp": 2, "dcn": {"data": 2}}, 16) == \
        {"data": 8, "fsdp": 2, "model": 1}
