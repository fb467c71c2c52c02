"""Every test process sees 8 simulated CPU devices; single-device tests take jax.devices()[:1]."""

import os
import sys

# The suite's time is mostly XLA compiling tiny programs: a lower backend optimization level compiles them
# about 40% faster (the same ops; only the generated CPU code is less tuned), and XLA:CPU's older IR emitters
# instead of its MLIR fusion emitters another 20-50% (a tiny UNet's jitted init + gradient: 10.5 s -> 5.5 s).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                           " --xla_cpu_use_fusion_emitters=false").strip()
import jvlm.cpu_flags  # noqa: E402

jvlm.cpu_flags.apply()  # the experiment commands' XLA:CPU flag, before JAX creates its backend
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A persistent compilation cache shared by the test processes and the CLI subprocesses they start.
CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program: CLI runs share many
# The shapes tokenizer every short run trains (seconds of caption generation) is trained once per key.
os.environ.setdefault("JVLM_CACHE_DIR", CACHE)

import jax  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/helpers.py, shared test modules
from helpers import devices_env, shared_cli_run, train_cmd  # noqa: E402


def pytest_configure(config):
    assert jax.device_count() == 8, f"tests need 8 simulated devices, got {jax.device_count()}"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The tiny config trained by the real CLI, 1 process x 8 devices: (workdir, its output), trained once
    for all test workers. Read it, never write to it (copy it first)."""
    return shared_cli_run(tmp_path_factory, "reference", lambda workdir: train_cmd(workdir))


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory):
    """configs/vae_shapes.py:tiny trained by the CLI with a KL weight of 0.5, once for all test workers: the VAE
    task's end-to-end test and latent diffusion's frozen first stage. (workdir, its output); read only."""
    return shared_cli_run(tmp_path_factory, "vae", lambda workdir: [
        "experiments.train", "--config", "configs/vae_shapes.py:tiny", "--workdir", str(workdir),
        "--config.model.beta=0.5"], env=devices_env(1))


# The files that hold the long CLI runs start first, so that the many short in-process files fill the workers at
# the end instead of one long file running alone (pytest-xdist's loadfile hands files out in collection order).
LONG_FILES = ("tasks/test_diffusion_cli.py", "tasks/test_vqgan_task.py", "test_multiprocess.py",
              "tasks/test_vqvae_task.py", "tasks/test_diffusion_task.py", "test_train_e2e.py",
              "tasks/test_dvae_task.py", "tasks/test_lm_task.py", "tasks/test_vae_task.py",
              "tasks/test_contrastive_task.py", "test_plan.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES)
    items.sort(key=rank)  # stable: the order within a file and among the other files is kept
