"""The environment handling of the launchers, without a cluster: what each process is told."""

import re
import sys

import pytest

from jvlm.distributed import DistributedConfigError, init_args
from launch import local

LOCAL = {"JVLM_COORDINATOR": "localhost:1234", "JVLM_NUM_PROCESSES": "2", "JVLM_PROCESS_ID": "1"}


def test_no_launcher_means_a_single_process():
    assert init_args({}) is None


def test_launch_local_environment_gives_explicit_arguments():
    assert init_args(LOCAL) == dict(coordinator_address="localhost:1234", num_processes=2, process_id=1)


def test_auto_leaves_detection_to_jax():  # TPU pods and SLURM (launch/tpu_pod.sh, launch/slurm.sbatch)
    assert init_args({"JVLM_DISTRIBUTED": "auto", "SLURM_NTASKS": "4"}) == {}


@pytest.mark.parametrize("env, message", [
    ({"JVLM_COORDINATOR": "localhost:1234"}, "JVLM_NUM_PROCESSES, JVLM_PROCESS_ID missing"),
    (LOCAL | {"JVLM_PROCESS_ID": "2"}, "must be in [0, JVLM_NUM_PROCESSES=2)"),
    (LOCAL | {"JVLM_NUM_PROCESSES": "two"}, "must be integers"),
    (LOCAL | {"JVLM_COORDINATOR": "localhost"}, "must be host:port"),
    ({"JVLM_DISTRIBUTED": "slurm"}, "the only value is 'auto'"),
])
def test_bad_launcher_environments_are_named(env, message):
    with pytest.raises(DistributedConfigError, match=re.escape(message)):
        init_args(env)


def test_local_process_environment():
    env = local.process_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1", "HOME": "/h"},
                            index=1, processes=3, devices=4, port=5555)
    assert init_args(env) == dict(coordinator_address="localhost:5555", num_processes=3, process_id=1)
    assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=4"]
    assert env["JAX_PLATFORMS"] == "cpu" and env["HOME"] == "/h"


def test_local_arguments():
    args, cmd = local.parse_args(["--processes", "2", "--devices-per-process", "4", "--", "python", "-m", "x"])
    assert (args.processes, args.devices_per_process) == (2, 4)
    assert cmd == [sys.executable, "-m", "x"]  # the launcher's own interpreter
    with pytest.raises(SystemExit, match="the command to run follows '--'"):
        local.parse_args(["--processes", "2"])
    with pytest.raises(SystemExit):
        local.parse_args(["--processes", "0", "--", "true"])


def test_a_failing_process_fails_the_launch():
    code = "import os, sys; sys.exit(3 if os.environ['JVLM_PROCESS_ID'] == '1' else 0)"
    assert local.launch(2, 1, [sys.executable, "-c", code]) == 3
