"""A pod on localhost: launch.local runs 2 processes x 4 CPU devices (gloo) as one JAX runtime."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, devices_env, run_cli, train_cmd

from jvlm.train.metrics import read_metrics

TWO_BY_FOUR = ["launch.local", "--processes", "2", "--devices-per-process", "4", "--", "python", "-m"]
ONE_DEVICE = devices_env(1)


def losses(rows):
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def checkpoint_steps(workdir):
    return sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    # A hybrid mesh as on a multi-slice pod: data = 4 within a process (ICI) x 2 across processes (DCN).
    workdir = tmp_path_factory.mktemp("two_process")
    proc = run_cli(TWO_BY_FOUR + train_cmd(workdir, "--config.mesh.dcn.data=2"))
    return workdir, proc


def test_two_processes_by_four_devices_match_one_process_by_eight(two_process_run, reference_run):
    workdir, proc = two_process_run
    ref_rows, rows = read_metrics(reference_run[0]), read_metrics(workdir)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]  # process 0 alone writes metrics
    ref, got = losses(ref_rows), losses(rows)
    np.testing.assert_allclose([got[s] for s in ref], list(ref.values()), rtol=1e-5)
    for key in ("eval/zeroshot_top1", "eval/i2t_recall@5"):  # evaluation gathers across processes
        assert rows[-1][key] == pytest.approx(ref_rows[-1][key], abs=1e-6), key
    assert checkpoint_steps(workdir) == [10, 15, 20]
    assert "[p0] starting fresh" in proc.stdout and "[p1] " in proc.stdout  # prefixed, merged logs
    assert "mesh {'data': 8" in proc.stdout


def test_a_two_process_checkpoint_continues_on_one_device(two_process_run, reference_run, tmp_path):
    # As if the 2-process run had been stopped after step 10: keep only the checkpoint it wrote there.
    workdir = tmp_path / "run"
    shutil.copytree(two_process_run[0], workdir)
    for step in (15, 20):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    proc = run_cli(train_cmd(workdir), env=ONE_DEVICE)
    assert "resumed from checkpoint at step 10" in proc.stderr and "mesh {'data': 1, 'fsdp': 1" in proc.stderr
    ref, got = losses(read_metrics(reference_run[0])), losses(read_metrics(workdir))
    assert sorted(got) == sorted(ref)
    np.testing.assert_allclose([got[s] for s in ref], list(ref.values()), rtol=1e-4)  # 1 vs 8 devices


def test_sigterm_to_the_launcher_saves_one_agreed_checkpoint(tmp_path):
    cmd = TWO_BY_FOUR + train_cmd(tmp_path, "--config.total_steps=2000", "--config.checkpoint_every=1000")
    launcher = subprocess.Popen([sys.executable, "-m", *cmd], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text():
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()[0][-3000:]
        time.sleep(0.1)
    launcher.send_signal(signal.SIGTERM)  # forwarded to both processes, which see it at different steps
    out, _ = launcher.communicate(timeout=180)
    assert launcher.returncode == 0, out[-3000:]
    (step,) = checkpoint_steps(tmp_path)  # one step, agreed by JAX's preemption service
    assert 0 < step < 1000 and f"[p0] SIGTERM: saved checkpoint at step {step}" in out
    resumed = run_cli(train_cmd(tmp_path, f"--config.total_steps={step + 2}"), env=ONE_DEVICE)
    assert f"resumed from checkpoint at step {step}" in resumed.stderr
    assert read_metrics(tmp_path)[-1]["step"] == step + 2
