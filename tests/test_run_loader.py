"""Loading a finished run: only the weights are read (never the optimizer state), EMA or not, into the
caller's shardings, from a run of the task the caller expects."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jvlm.train.checkpoint import Checkpointer
from jvlm.train.run_loader import load_run, load_weights
from jvlm.train.state import TrainState

MiB = 1 << 20


def write_run(workdir, params, *, opt_state, ema_params=None, model_state=None, task="vqvae", step=7):
    """A run directory as experiments.train leaves it: config.json and one checkpoint of a TrainState."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps({"task": task, "data": {"image_size": 32}}))
    state = TrainState(step=jnp.int32(step), params=params, opt_state=opt_state, model_state=model_state or {},
                       ema_params=ema_params, rng=jnp.zeros(2, jnp.uint32), nonfinite_count=jnp.int32(0))
    ck = Checkpointer(str(workdir / "checkpoints"), keep=1, async_save=False)
    ck.save(step, state, {"next_step": step})
    ck.close()


def random_params(rng, n_arrays, floats_each):
    return {"main": {f"w{i}": jnp.asarray(rng.standard_normal(floats_each, dtype=np.float32))
                     for i in range(n_arrays)}}


_MEASURE = """
import json, sys
from jvlm.train.run_loader import load_run

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

load_run(sys.argv[1], ("vqvae",), "")  # first use: imports, TensorStore's threads and caches
before = status("VmRSS:")
run = load_run(sys.argv[2], ("vqvae",), "", ema=True)
print(json.dumps({"rise": status("VmHWM:") - before, "ema": run.ema,
                  "sums": {k: float(v.sum(dtype="float64")) for k, v in run.params["main"].items()}}))
"""


def test_loading_for_inference_reads_neither_the_optimizer_state_nor_the_raw_parameters(tmp_path):
    rng = np.random.default_rng(0)
    # 16 MiB of parameters (and as much EMA), 160 MiB of optimizer state: reading all of it would raise the
    # peak RSS by 12x the parameters; the EMA alone raises it by about 1.5x (TensorStore's read buffers).
    params = random_params(rng, 4, MiB)
    ema = jax.tree.map(lambda x: x + 1.0, params)
    opt = {"main": {f"mu{i}": jnp.full(MiB, float(i), jnp.float32) for i in range(40)}}  # compressible: fast to write
    write_run(tmp_path / "big", params, opt_state=opt, ema_params=ema)
    small = jax.tree.map(lambda x: x[:64], params)
    write_run(tmp_path / "small", small, opt_state=jax.tree.map(lambda x: x[:64], opt), ema_params=small)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    assert sum(x.nbytes for x in jax.tree.leaves(opt)) >= 10 * param_bytes

    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "small"), str(tmp_path / "big")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ema"] and out["sums"] == pytest.approx(
        {k: float(np.asarray(v).sum(dtype=np.float64)) for k, v in ema["main"].items()}, rel=1e-9)
    assert out["rise"] < 2 * param_bytes, (
        f"peak RSS rose by {out['rise'] / MiB:.1f} MiB loading {param_bytes / MiB:.0f} MiB of parameters")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with parameters, a different EMA, an EMA codebook in the model state, and an optimizer state."""
    rng = np.random.default_rng(1)
    params = {"main": {"kernel": jnp.asarray(rng.standard_normal((16, 8), dtype=np.float32)),
                       "bias": jnp.asarray(rng.standard_normal(8, dtype=np.float32))}}
    ema = jax.tree.map(lambda x: x * 0.5, params)
    workdir = tmp_path_factory.mktemp("run")
    write_run(workdir, params, opt_state={"main": jax.tree.map(jnp.zeros_like, params)}, ema_params=ema,
              model_state={"codebook": jnp.arange(24.0).reshape(4, 6)})
    return workdir, params, ema


def assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_ema_parameters_when_kept_and_asked_for(run, tmp_path):
    workdir, params, ema = run
    with_ema = load_run(str(workdir), ("vqvae",), "hint")
    assert with_ema.ema and with_ema.step == 7
    assert_tree_equal(with_ema.params, ema)
    assert_tree_equal(with_ema.model_state, {"codebook": np.arange(24.0).reshape(4, 6)})
    without = load_run(str(workdir), ("vqvae",), "hint", ema=False)
    assert not without.ema
    assert_tree_equal(without.params, params)
    assert all(type(x) is np.ndarray for x in jax.tree.leaves((without.params, without.model_state)))
    # A run that kept no EMA gives its parameters even when the EMA is asked for, and an empty model state.
    write_run(tmp_path / "no_ema", params, opt_state={})
    plain = load_weights(str(tmp_path / "no_ema" / "checkpoints"), ema=True)
    assert not plain.ema and plain.model_state == {}
    assert_tree_equal(plain.params, params)


def test_target_shardings_place_the_arrays(run):
    workdir, _, ema = run
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    want = {"main": {"kernel": NamedSharding(mesh, P("data", "model")), "bias": NamedSharding(mesh, P("model"))}}
    loaded = load_weights(str(workdir), ema=True, shardings=want)
    for name, sharding in want["main"].items():
        x = loaded.params["main"][name]
        assert isinstance(x, jax.Array) and x.sharding == sharding
        assert np.array_equal(np.asarray(x), np.asarray(ema["main"][name]))
    codebook = loaded.model_state["codebook"]  # the model state goes whole onto the parameters' devices
    assert codebook.sharding.is_fully_replicated and len(codebook.sharding.device_set) == 8
    # One mesh: everything replicated on it.
    on_mesh = load_weights(str(workdir), shardings=mesh)
    assert all(x.sharding == NamedSharding(mesh, P()) for x in jax.tree.leaves((on_mesh.params, on_mesh.model_state)))
    with pytest.raises(ValueError, match=r"a pytree of Shardings matching the run's parameters \(groups \['main'\]"):
        load_weights(str(workdir), shardings={"main": {"kernel": want["main"]["kernel"]}})


def test_a_run_of_another_task_or_no_run_is_named_with_the_hint(run, tmp_path):
    workdir, _, _ = run
    with pytest.raises(ValueError, match=r"holds a 'vqvae' run; give the workdir of a contrastive run"):
        load_run(str(workdir), ("contrastive",), "give the workdir of a contrastive run")
    with pytest.raises(FileNotFoundError, match=r"not a jvlm run directory \(no config.json\); give a run"):
        load_run(str(tmp_path), ("vqvae",), "give a run")
    with pytest.raises(FileNotFoundError, match="no checkpoints under"):
        load_weights(str(tmp_path))


def test_the_config_check_runs_before_any_array_is_read_and_the_tokenizer_is_the_runs(run, tmp_path):
    workdir, _, _ = run
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((workdir / "config.json").read_text())  # a config, no checkpoint

    def refuse(config):
        raise ValueError(f"image_size {config.data.image_size} refused")

    with pytest.raises(ValueError, match="image_size 32 refused"):
        load_run(str(bare), ("vqvae",), "", check=refuse)
    loaded = load_run(str(workdir), ("vqvae",), "")
    assert loaded.tokenizer_path is None
    with pytest.raises(FileNotFoundError, match=r"the vqvae run .* has no tokenizer"):
        loaded.tokenizer  # noqa: B018
