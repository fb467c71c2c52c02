"""The real CLI on the tiny config, 8 simulated devices: outputs, SIGKILL + resume, refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import REPO, TINY, run_cli, train_cmd

from jvlm.config import load_config
from jvlm.train import loop
from jvlm.train.checkpoint import Checkpointer
from jvlm.train.metrics import read_metrics

CONSTANT_LR = ("--config.optimizer.schedule=constant",)


def final_params(workdir):
    cfg = load_config("configs/siglip_shapes.py:tiny")
    task, mesh = loop.build(cfg, None)
    abstract, *_ = loop.abstract_state(task, cfg, mesh)
    step, state, _ = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3).restore_latest(abstract)
    return step, jax.device_get(state)


def test_outputs_of_a_run(reference_run):
    workdir, proc = reference_run
    assert json.load(open(workdir / "config.json"))["batch_size"] == 16
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == list(range(2, 21, 2))
    for key in ("loss", "learning_rate", "examples_per_s", "grad_norm", "param_norm"):
        assert all(key in r for r in rows), key
    assert "eval/zeroshot_top1" in rows[-1]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [10, 15, 20]
    assert "step 20/20 (100%)" in proc.stderr and "ex/s" in proc.stderr and "ETA" in proc.stderr


def test_sigkill_and_restart_reproduces_the_uninterrupted_run_bitwise(reference_run, tmp_path):
    ref_dir, _ = reference_run
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", *train_cmd(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckdir = tmp_path / "checkpoints"
    deadline = time.time() + 300
    while not (ckdir / "10").exists():  # a finished checkpoint, then kill mid-training
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [int(s) for s in os.listdir(ckdir) if s.isdigit()]
    assert max(done) < 20, "the run finished before it was killed; the test proves nothing"
    resumed = run_cli(train_cmd(tmp_path))
    assert "resumed from checkpoint at step" in resumed.stderr

    ref_step, ref = final_params(ref_dir)
    step, got = final_params(tmp_path)
    assert ref_step == step == 20
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        assert np.array_equal(a, b)
    ref_rows, rows = read_metrics(ref_dir), read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]  # each step once
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


def test_restart_with_a_different_config_is_refused(reference_run, tmp_path):
    ref_dir, _ = reference_run
    proc = run_cli(train_cmd(ref_dir, "--config.optimizer.learning_rate=0.5", "--config.seed=3"), check=False)
    assert proc.returncode == 2
    assert "refusing to resume" in proc.stderr
    assert "optimizer.learning_rate: 0.002 -> 0.5" in proc.stderr and "seed: 0 -> 3" in proc.stderr


def test_nonfinite_losses_stop_training_with_a_clear_message(tmp_path):
    proc = run_cli(train_cmd(tmp_path, "--config.optimizer.learning_rate=1e30", "--config.optimizer.grad_clip_norm=0.0",
                             "--config.max_nonfinite_steps=2"), check=False)
    assert proc.returncode == 3, proc.stderr
    assert "steps were skipped because the loss or gradients were not finite" in proc.stderr


def test_training_on_a_users_jsonl_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = []
    for i in range(24):
        colour = ["red", "green", "blue"][i % 3]
        pixels = np.zeros((40, 50, 3), np.uint8)
        pixels[..., i % 3] = 200 + rng.integers(0, 50)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"a {colour} picture number {i}"}))
    lines.append(json.dumps({"image": "missing.png", "caption": "dropped and counted"}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    workdir = tmp_path / "run"
    # The reference run's shapes and schedule: the same compiled programs (from the persistent cache).
    proc = run_cli(train_cmd(workdir, "--config.data.source=folder", f"--config.data.path={tmp_path / 'data.jsonl'}",
                             "--config.profile.start_step=1", "--config.profile.num_steps=2"))
    rows = read_metrics(workdir)
    assert rows[-1]["step"] == 20 and np.isfinite(rows[-1]["loss"])
    output = proc.stdout + proc.stderr  # the record without an image: dropped, counted, and said once
    assert output.count("dropped 1 of 25 records (missing_image=1); kept 24") == 1, output[-3000:]
    assert (workdir / "tokenizer.model").exists()
    traces = [f for _, _, files in os.walk(workdir / "profile") for f in files]
    assert any(f.endswith((".xplane.pb", ".trace.json.gz")) for f in traces), traces


def test_sigterm_saves_a_checkpoint_and_the_restart_resumes(tmp_path):
    # A constant learning rate: the long run and the short restart are one compiled program (a cosine schedule
    # bakes total_steps into the step).
    proc = subprocess.Popen([sys.executable, "-m", *train_cmd(tmp_path, "--config.total_steps=2000",
                                                               "--config.checkpoint_every=1000", *CONSTANT_LR)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "SIGTERM: saved checkpoint at step" in err
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert len(steps) == 1 and 0 < steps[0] < 1000
    resumed = run_cli(train_cmd(tmp_path, f"--config.total_steps={steps[0] + 2}", *CONSTANT_LR))
    assert f"resumed from checkpoint at step {steps[0]}" in resumed.stderr


def test_standalone_eval_appends_zero_shot_and_retrieval_metrics(reference_run, tmp_path):
    workdir = tmp_path / "run"  # a copy: the shared reference run stays as training left it
    shutil.copytree(reference_run[0], workdir)
    before = len(read_metrics(workdir))
    proc = run_cli(["experiments.eval", *TINY, "--workdir", str(workdir)])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["step"] == 20
    for key in ("eval/zeroshot_top1", "eval/zeroshot_top5", "eval/zeroshot_unseen_top1", "eval/i2t_recall@1",
                "eval/i2t_recall@5", "eval/t2i_recall@1", "eval/t2i_recall@5"):
        assert 0.0 <= out[key] <= 1.0, key
    assert out["eval/zeroshot_top5"] >= out["eval/zeroshot_top1"]
    rows = read_metrics(workdir)
    assert len(rows) == before + 1 and rows[-1]["eval/t2i_recall@5"] == out["eval/t2i_recall@5"]
    # matches the evaluation the training run logged at the same step (same params, same data)
    logged = [r for r in rows[:-1] if r["step"] == 20 and "eval/zeroshot_top1" in r]
    assert logged and logged[0]["eval/zeroshot_top1"] == out["eval/zeroshot_top1"]


def test_inference_api_reproduces_the_logged_zero_shot_accuracy(reference_run):
    from PIL import Image

    from jvlm.data import shapes
    from jvlm.eval.contrastive_model import ContrastiveModel

    workdir, _ = reference_run
    model = ContrastiveModel.load(str(workdir))
    assert model.step == 20 and model.image_size == 32
    src = shapes.ShapesSource("zeroshot_seen", image_size=32)
    images = np.stack([src[i]["image"] for i in range(64)])
    labels = np.array([src[i]["label"] for i in range(64)])
    probs = model.zero_shot(images, shapes.class_names(), templates=tuple(model.config.eval.templates))
    assert probs.shape == (64, 48) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    logged = [r for r in read_metrics(workdir) if "eval/zeroshot_top1" in r and r["step"] == 20][0]
    assert float(np.mean(probs.argmax(1) == labels)) == logged["eval/zeroshot_top1"]
    assert model.template_reduce == "max"  # the run's rule; CLIP's prompt ensembling is logged beside it
    mean = model.zero_shot(images, shapes.class_names(), tuple(model.config.eval.templates), reduce="mean_embedding")
    assert float(np.mean(mean.argmax(1) == labels)) == logged["eval/zeroshot_top1_mean_embedding"]
    # other sizes and PIL images go through the run's own preprocessing
    big = [Image.fromarray(shapes.ShapesSource("test", image_size=96)[i]["image"]) for i in range(3)]
    emb = model.encode_image(big)
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert model.encode_text(["a small red circle"]).shape == (1, 32)
