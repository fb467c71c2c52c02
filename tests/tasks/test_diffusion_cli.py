"""Diffusion through the real CLIs: a tiny text-conditional DDPM judged by the tiny SigLIP reference run, latent
diffusion on the tiny VAE run, sampling from a checkpoint, and bad requests."""

import json
import math
import os

import numpy as np
import pytest
from helpers import devices_env, random_inception_weights, run_cli
from PIL import Image

from experiments import sample, train
from jvlm.train.metrics import read_metrics

DDPM, LDM = "configs/ddpm_shapes.py:tiny", "configs/ldm_shapes.py:tiny"


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory, reference_run):
    judge, _ = reference_run
    workdir = tmp_path_factory.mktemp("ddpm")
    inception = workdir / "inception_fid.npz"  # random weights: checks the wiring, not the value
    np.savez(inception, **random_inception_weights())
    # One evaluation, at the end (a second would run the same compiled programs again), after 12 steps; bits/dim
    # of two held-out images (100 denoiser passes each).
    run_cli(["experiments.train", "--config", DDPM, "--workdir", str(workdir), f"--config.eval.judge={judge}",
             f"--config.eval.inception_weights={inception}", "--config.eval_every=20", "--config.total_steps=12",
             "--config.eval.nll_examples=2"], env=devices_env(1))
    return workdir


def test_ddpm_trains_writes_sample_grids_and_is_judged(ddpm_run):
    rows = read_metrics(ddpm_run)
    assert rows[-1]["loss"] < rows[0]["loss"]
    last = rows[-1]
    for key in ("eval/prompt_accuracy", "eval/prompt_accuracy_seen", "eval/prompt_accuracy_unseen",
                "eval/judge_real_accuracy", "eval/fd_siglip", "eval/bits_per_dim", "eval/prompt_color_accuracy",
                "eval/prompt_shape_accuracy", "eval/judge_real_color_accuracy", "eval/judge_real_shape_accuracy"):
        assert key in last and math.isfinite(last[key]), key
    assert last["eval/prompt_accuracy"] <= min(last["eval/prompt_color_accuracy"], last["eval/prompt_shape_accuracy"])
    assert 0 <= last["eval/prompt_accuracy"] <= 1 and last["eval/fd_siglip"] > 0 and last["eval/bits_per_dim"] > 0
    assert math.isfinite(last["eval/fid_inception"]) and last["eval/fid_inception"] >= 0
    assert sorted(os.listdir(ddpm_run / "samples")) == ["samples_0000012.png"]
    assert Image.open(ddpm_run / "samples" / "samples_0000012.png").size[0] > 32


def test_sample_cli_writes_a_grid_once_and_refuses_bad_requests(ddpm_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    # The command's main() in this process: its flag parsing, loading and sampling are what the CLI runs.
    base = ["experiments.sample", "--config", DDPM, "--workdir", str(ddpm_run)]
    sample.main(base[1:] + ["--prompt", "a large red circle", "--prompt", "a small blue star", "--num", "3",
                            "--negative_prompt", "a green square", "--guidance_rescale", "0.7", "--out", str(out)])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["images"] == 6 and report["steps"] == 4 and report["s_per_image"] > 0
    assert report["guidance_rescale"] == 0.7
    assert Image.open(out).size == (3 * 34 + 2, 2 * 34 + 2)
    # The refusals come before anything compiles: the command's main() in this process, not six more processes.
    for flags, message in ((["--prompt", "a red circle", "--out", str(out)], "never overwritten"),
                           (["--prompt", "a red circle", "--steps", "101"], "schedule has 100"),
                           (["--prompt", "a red circle " * 40], "longer than the model's context"),
                           (["--prompt", "a red circle", "--sampler", "ddpm", "--steps", "50"], "takes all 100 steps"),
                           (["--prompt", "a red circle", "--guidance_rescale", "1.5"], "mixing weight"),
                           ([], "give at least one --prompt")):
        with pytest.raises(SystemExit) as e:
            sample.main(base[1:] + flags + (["--out", str(tmp_path / "x.png")] if "--out" not in flags else []))
        assert e.value.code != 0 and message in str(e.value.code), (flags, e.value.code)
    assert not (tmp_path / "x.png").exists()


def test_latent_diffusion_on_a_frozen_vae_run(vae_run, tmp_path, capsys):
    vae, _ = vae_run
    ldm = tmp_path / "ldm"
    run_cli(["experiments.train", "--config", LDM, "--workdir", str(ldm), f"--config.latent.run={vae}",
             "--config.eval_every=20"], env=devices_env(1))
    scale = json.load(open(ldm / "latent_scale.json"))["scale"]
    assert math.isfinite(scale) and scale > 0
    assert sorted(os.listdir(ldm / "samples")) == ["samples_0000020.png"]
    assert read_metrics(ldm)[-1]["x0_std"] == pytest.approx(1.0, abs=0.5)  # latents scaled to about unit variance
    with pytest.raises(SystemExit) as refused:  # before anything compiles: the command's main() in this process
        train.main(["--config", LDM, "--workdir", str(tmp_path / "bad"), f"--config.latent.run={vae}",
                    "--config.data.image_size=64"])
    assert refused.value.code == 2 and "trained on 32x32 images" in capsys.readouterr().err
