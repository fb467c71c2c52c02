"""jvlm's XLA:CPU flag: added once, only where checked, never over a user's own choice."""

import subprocess
import sys

from jvlm import cpu_flags


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


def test_importing_jvlm_sets_it_and_the_installed_xla_accepts_it():
    code = ("import os, jvlm, jax; print(os.environ.get('XLA_FLAGS', '')); "
            "print(float(jax.jit(lambda x: x.sum())(jax.numpy.ones(3))))")
    env = {"PATH": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    flags, value = out.stdout.split("\n")[:2]
    assert value == "3.0"
    if cpu_flags._jaxlib_minor() in cpu_flags.CHECKED_JAXLIB:
        assert cpu_flags.DEFAULT in flags
