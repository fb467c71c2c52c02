"""experiments.plan: ahead-of-time compilation for N simulated devices, without running anything."""

import json
import os

import jax
import pytest
from helpers import run_cli

from experiments.plan import collectives, lower_step
from jvlm.config import load_config, to_dict
from jvlm.train import loop
from jvlm.train.checkpoint import Checkpointer


def test_plan_reports_per_device_memory_flops_and_collectives():
    proc = run_cli(["experiments.plan", "--config", "configs/siglip_shapes.py:tiny", "--devices", "4",
                    "--mesh", "data=1,fsdp=4", "--json"])  # plan replaces the suite's 8-device flag with its own 4
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 4 and r["mesh"] == {"data": 1, "fsdp": 4, "model": 1}
    assert r["compiler"].startswith("ESTIMATE from the XLA CPU compiler for 4 simulated devices")
    d = r["per_device"]
    full_params = 4 * r["params"]
    assert full_params / 4 <= d["params_bytes"] < full_params / 3  # FSDP: a quarter, plus a few replicated biases
    assert d["optimizer_bytes"] > 1.5 * d["params_bytes"]           # Adam's mu and nu, split like the parameters
    assert d["temporaries_bytes"] > 0 and d["total_bytes"] > d["params_bytes"] + d["optimizer_bytes"]
    assert r["flops_per_step"] > 1e6
    assert r["collectives"]["all-gather"]["count"] > 0  # FSDP gathers weights


def test_collective_parsing_counts_ops_and_result_bytes():
    hlo = """
  %all-gather.1 = f32[8,16]{1,0} all-gather(f32[2,16]{1,0} %p), channel_id=1, replica_groups=[1,4]<=[4]
  %ar = (bf16[4]{0}, f32[2,2]{1,0}) all-reduce(bf16[4]{0} %a, f32[2,2]{1,0} %b), to_apply=%add
  %cp = f32[3]{0} collective-permute-start(f32[3]{0} %c), source_target_pairs={{0,1}}
  %x = f32[9]{0} add(f32[9]{0} %y, f32[9]{0} %z)
"""
    assert collectives(hlo) == {"all-gather": {"count": 1, "bytes": 512}, "all-reduce": {"count": 1, "bytes": 24},
                                "collective-permute": {"count": 1, "bytes": 12}}


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """An untrained configs/vae_shapes.py:tiny run (its config.json and a step-0 checkpoint): all a latent
    diffusion config needs of its autoencoder to be planned. The tiny VAE halves 32x32 images to 16x16x4."""
    run = tmp_path_factory.mktemp("vae_run")
    cfg = load_config("configs/vae_shapes.py:tiny")
    task, mesh = loop.build(cfg, str(run), jax.devices()[:1])
    _, shardings, _, init_state = loop.abstract_state(task, cfg, mesh)
    ckpt = Checkpointer(os.path.join(run, "checkpoints"), keep=1, async_save=False)
    ckpt.save(0, jax.jit(init_state, out_shardings=shardings)(jax.random.PRNGKey(0)), {"next_step": 0})
    ckpt.close()
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    return run


def test_latent_diffusion_is_planned_with_its_latent_denoiser(vae_run, tmp_path):
    # Unconditional and with a given latent scale: no tokenizer to train and no scale to measure, the same
    # latent denoiser.
    cfg = load_config("configs/ldm_shapes.py:tiny,uncond",
                      [f"--config.latent.run={vae_run}", "--config.latent.scale=1.0"])
    task, _, abstract, _, lowered = lower_step(cfg, jax.devices()[:2], str(tmp_path))
    assert task.sample_shape == (16, 16, 4)
    assert abstract.params["main"]["denoiser"]["conv_in"]["kernel"].shape == (3, 3, 4, 8)  # 4 latent channels in
    # The denoiser's first convolution reads the global batch of 16 noisy latents (a pixel-space one would read
    # 16x32x32x3 images, as the VAE encoder's first convolution does here).
    assert "(tensor<16x16x16x4xf32>, tensor<3x3x4x8xf32>)" in lowered.as_text()
