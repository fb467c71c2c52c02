"""Helpers shared by test modules (tests/ is on sys.path via conftest.py)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "configs/siglip_shapes.py:tiny", "--config.eval_every=100"]


def train_cmd(workdir, *extra):
    """`experiments.train` on the tiny config (20 steps, checkpoints at 10, 15, 20)."""
    return ["experiments.train", *TINY, "--workdir", str(workdir), *extra]


def run_cli(args, *, env=None, timeout=600, check=True):
    """Runs `python -m ...` from the repo root with the test environment; returns CompletedProcess."""
    full_env = dict(os.environ) | (env or {})
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
