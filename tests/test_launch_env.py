"""The environment handling of the launchers, without a cluster: what each process is told."""

import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

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


def bash(script, *args, env):
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")} | env
    return subprocess.run(["bash", os.path.join(REPO, "launch", script), *args], env=full, capture_output=True,
                          text=True, timeout=60)


def test_slurm_script_runs_one_srun_with_distributed_auto():
    per_gpu = bash("slurm.sbatch", "--config", "c.py", "--workdir", "/shared/run",
                   env={"DRY_RUN": "1", "SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "8"})
    assert per_gpu.returncode == 0, per_gpu.stderr
    assert per_gpu.stdout.split() == ["srun", "--kill-on-bad-exit=1", "env", "JVLM_DISTRIBUTED=auto", "python3",
                                      "-m", "experiments.train", "--config", "c.py", "--workdir", "/shared/run"]
    per_node = bash("slurm.sbatch", "--config", "c.py", "--workdir", "/shared/run",
                    env={"DRY_RUN": "1", "SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4"})
    assert r"JAX_LOCAL_DEVICE_IDS=0\,1\,2\,3" in per_node.stdout  # one process drives all 4 GPUs


@pytest.mark.parametrize("args, env, message", [
    (["--config", "c.py", "--workdir", "/w"], {}, "not inside a SLURM job"),
    (["--workdir", "/w"], {"SLURM_JOB_ID": "7"}, "missing --config"),
    (["--config", "c.py"], {"SLURM_JOB_ID": "7"}, "missing --workdir"),
    (["--config", "c.py", "--workdir", "/w"], {"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "1"}, "GPUS_PER_NODE"),
])
def test_slurm_script_names_what_is_missing(args, env, message):
    proc = bash("slurm.sbatch", *args, env=env | {"DRY_RUN": "1"})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


POD = {"DRY_RUN": "1", "TPU_NAME": "pod", "ZONE": "us-central2-b"}


def test_tpu_pod_script_creates_installs_mounts_and_runs_on_all_workers():
    proc = bash("tpu_pod.sh", "--config", "configs/siglip_shapes.py:B/16", "--workdir", "gs://bkt/runs/b16",
                "--config.total_steps=5", env=POD | {"ACCELERATOR_TYPE": "v4-32", "SPOT": "1"})
    assert proc.returncode == 0, proc.stderr
    create, archive, scp, setup, train = proc.stdout.strip().splitlines()
    assert create.startswith("gcloud compute tpus tpu-vm create pod --zone=us-central2-b --accelerator-type=v4-32")
    assert create.strip().endswith("--spot") and archive.startswith("git -C ")
    assert all("--worker=all" in line for line in (scp, setup, train))
    assert "gcsfuse --implicit-dirs bkt /gcs/bkt" in setup.replace("\\", "")
    assert train.replace("\\", "").endswith("JVLM_DISTRIBUTED=auto python3 -m experiments.train --config "
                                            "configs/siglip_shapes.py:B/16 --workdir /gcs/bkt/runs/b16 "
                                            "--config.total_steps=5")


def test_tpu_pod_script_reuses_a_slice_without_accelerator_type():
    proc = bash("tpu_pod.sh", "--config", "c.py", "--workdir=gs://bkt/r", env=POD)
    assert proc.returncode == 0 and " create " not in proc.stdout
    assert "--workdir=/gcs/bkt/r" in proc.stdout.replace("\\", "")


@pytest.mark.parametrize("args, env, message", [
    (["--config", "c.py", "--workdir", "gs://b/r"], {"TPU_NAME": ""}, "set TPU_NAME"),
    (["--config", "c.py", "--workdir", "gs://b/r"], {"ZONE": ""}, "set ZONE"),
    (["--config", "c.py", "--workdir", "/local/run"], {}, "must be a bucket path gs://BUCKET/PATH"),
    (["--workdir", "gs://b/r"], {}, "missing --config"),
])
def test_tpu_pod_script_names_what_is_missing(args, env, message):
    proc = bash("tpu_pod.sh", *args, env=POD | env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_slurm_environment_forms_one_runtime_through_jax_cluster_detection():
    # What srun gives each task, on localhost: JVLM_DISTRIBUTED=auto lets JAX's SLURM detection
    # find the coordinator (first node of the step), the process count and index.
    code = ("import jax; from jvlm import distributed; assert distributed.initialize(); "
            "from jax.experimental import multihost_utils as m; import numpy as np; "
            "print(jax.process_index(), jax.process_count(), m.process_allgather(np.array([jax.process_index()])).ravel().tolist())")
    job = str(1000 + os.getpid() % 3000)  # the coordinator port is derived from the job id
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ) | {
                                  "JVLM_DISTRIBUTED": "auto", "JAX_PLATFORMS": "cpu", "SLURM_JOB_ID": job,
                                  "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2", "SLURM_PROCID": str(i),
                                  "SLURM_LOCALID": str(i), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
             for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, err[-2000:]
        assert out.split("\n")[-2] == f"{i} 2 [0, 1]"
