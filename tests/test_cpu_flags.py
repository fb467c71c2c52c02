"""jvlm's XLA:CPU flag: added by apply() only, once, only where checked, never over a user's own choice."""

import subprocess
import sys

from helpers import REPO

from jvlm import cpu_flags


def python(code: str, **env: str) -> list[str]:
    """Runs `code` in a fresh interpreter from the repo root with only `env` set; its stdout lines."""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PATH": "", "JAX_PLATFORMS": "cpu", **env}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.splitlines()


def test_adds_the_flag_on_a_checked_jaxlib_and_keeps_other_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert cpu_flags.with_cpu_flags(env, jaxlib_minor="0.10") == cpu_flags.DEFAULT
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", cpu_flags.DEFAULT]
    assert cpu_flags.with_cpu_flags(env, jaxlib_minor="0.10") is None  # idempotent
    assert env["XLA_FLAGS"].count(cpu_flags.YNN_FUSION_FLAG) == 1


def test_leaves_xla_flags_alone_when_asked_chosen_or_unchecked():
    user = {"XLA_FLAGS": f"{cpu_flags.YNN_FUSION_FLAG}=+individual_convolution"}
    assert cpu_flags.with_cpu_flags(user, jaxlib_minor="0.10") is None
    assert user["XLA_FLAGS"] == f"{cpu_flags.YNN_FUSION_FLAG}=+individual_convolution"
    opted_out = {"JVLM_XLA_CPU_FLAGS": "0"}
    assert cpu_flags.with_cpu_flags(opted_out, jaxlib_minor="0.10") is None and "XLA_FLAGS" not in opted_out
    unknown = {}  # XLA aborts on flags it does not know: only versions checked to have it get it
    assert cpu_flags.with_cpu_flags(unknown, jaxlib_minor="0.99") is None and "XLA_FLAGS" not in unknown


def test_the_installed_jaxlib_is_one_the_flag_was_checked_on():
    # An upgrade fails here (check the flag still exists in its XLA, then add the version) instead of
    # silently running without the flag.
    assert cpu_flags._jaxlib_minor() in cpu_flags.CHECKED_JAXLIB


def test_importing_jvlm_leaves_the_environment_alone():
    code = "import os, jvlm, jvlm.train.loop; print(os.environ.get('XLA_FLAGS'))"
    assert python(code, XLA_FLAGS="--xla_cpu_enable_fast_math=false") == ["--xla_cpu_enable_fast_math=false"]
    assert python(code) == ["None"]


def test_apply_adds_the_flag_the_installed_xla_accepts_and_can_be_opted_out_of():
    code = ("import os, jvlm.cpu_flags; print(jvlm.cpu_flags.apply()); print(os.environ.get('XLA_FLAGS')); "
            "import jax; print(float(jax.jit(lambda x: x.sum())(jax.numpy.ones(3))))")
    assert python(code, XLA_FLAGS="--xla_cpu_enable_fast_math=false") == [
        cpu_flags.DEFAULT, f"--xla_cpu_enable_fast_math=false {cpu_flags.DEFAULT}", "3.0"]
    assert python(code, JVLM_XLA_CPU_FLAGS="0") == ["None", "None", "3.0"]


def test_apply_after_the_backend_exists_warns_that_it_is_too_late():
    code = ("import warnings, jax; jax.devices(); import jvlm.cpu_flags\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); jvlm.cpu_flags.apply()\n"
            "print([str(x.message) for x in w])")
    (line,) = python(code)
    assert "backend already exists" in line and "before the first device query" in line
