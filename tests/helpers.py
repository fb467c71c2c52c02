"""Helpers shared by test modules (tests/ is on sys.path via conftest.py)."""

import fcntl
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import jax
import numpy as np

from jvlm import sharding
from jvlm.config import load_config
from jvlm.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "configs/siglip_shapes.py:tiny", "--config.eval_every=100"]


def devices_env(n: int) -> dict:
    """The test processes' XLA flags (conftest.py: the fast-compile settings) with n simulated devices, for a CLI
    subprocess. A family's end-to-end run needs no mesh (the sharded step is tested in process against one device),
    and a 1-device program compiles without the SPMD partitioner."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    return {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n}".strip()}


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


def shared_cli_run(tmp_path_factory, name, make_args, *, env=None):
    """A CLI run that every pytest-xdist worker of this session shares: the first worker to ask runs
    `make_args(workdir)`, the others wait on a file lock and reuse its workdir. Returns (workdir, output) with
    the output's stdout and stderr. Session-scoped fixtures alone would run it once per worker."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's folder, not older ones
    workdir, record = root / f"shared_{name}", root / f"shared_{name}.json"
    with open(root / f"shared_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            proc = run_cli(make_args(workdir), env=env)
            record.write_text(json.dumps({"stdout": proc.stdout, "stderr": proc.stderr}))
    return pathlib.Path(workdir), types.SimpleNamespace(**json.loads(record.read_text()))


def random_inception_weights(seed=0) -> dict:
    """pytorch-fid's Inception state dict (every key the features need) with random values: He-scaled
    convolutions and near-identity batch norms (running_var > 0), so features stay finite and depend on the
    input through all 94 layers."""
    from jvlm.eval.inception_fid import expected_shapes
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in expected_shapes().items():
        if k.endswith("conv.weight"):
            w = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
        elif k.endswith(("bn.weight", "running_var")):
            w = rng.uniform(0.5, 1.5, shape)
        else:
            w = rng.normal(0, 0.1, shape)
        out[k] = w.astype(np.float32)
    return out


def contrastive_setup(n_devices, *overrides):
    return step_setup("configs/siglip_shapes.py:tiny", n_devices, *overrides)


def step_setup(config_spec, n_devices, *overrides):
    """(jitted train step, fresh state, mesh) for a config on the first n_devices; overrides like 'a.b=1'."""
    cfg = load_config(config_spec, [f"--config.{o}" for o in overrides])
    task, mesh = loop.build(cfg, None, devices=jax.devices()[:n_devices])
    _, shardings, groups, init_state = loop.abstract_state(task, cfg, mesh)
    state = jax.jit(init_state, out_shardings=shardings)(jax.random.PRNGKey(0))
    return loop.jit_train_step(task, groups, shardings), state, mesh


def fake_batches(n, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
             "text": np.concatenate([rng.integers(3, 200, (batch, 10)), np.ones((batch, 1)),
                                     np.zeros((batch, 13))], 1).astype(np.int32)} for _ in range(n)]


def train(fn, state, mesh, batches):
    losses = []
    for b in batches:
        state, m = fn(state, sharding.global_batch(b, mesh))
        losses.append(float(m["loss"]))
    return state, losses
