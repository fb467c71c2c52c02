"""Joining a multi-process JAX runtime, from the environment a launcher sets.

Entry points (`experiments.train`, `.eval`, `.plan`) call `initialize()` before anything touches
a device. What it does depends only on the environment:

- `JVLM_COORDINATOR`, `JVLM_NUM_PROCESSES`, `JVLM_PROCESS_ID` (set by `launch.local`): join the
  runtime at that address; on CPU, collectives go through gloo.
- `JVLM_DISTRIBUTED=auto` (set by `launch/tpu_pod.sh` and `launch/slurm.sbatch`):
  `jax.distributed.initialize()` with JAX's own cluster detection (TPU VM metadata; SLURM's
  SLURM_NTASKS/SLURM_PROCID/SLURM_STEP_NODELIST; one GPU per process unless
  JAX_LOCAL_DEVICE_IDS lists a node's GPUs).
- neither: a single process; nothing to do.
"""

from __future__ import annotations

import os
from typing import Mapping

_EXPLICIT = ("JVLM_COORDINATOR", "JVLM_NUM_PROCESSES", "JVLM_PROCESS_ID")


class DistributedConfigError(ValueError):
    pass


def init_args(env: Mapping[str, str]) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Pure (it only reads `env`), so launchers' environment handling is testable without a cluster.
    """
    present = [k for k in _EXPLICIT if env.get(k)]
    mode = env.get("JVLM_DISTRIBUTED", "")
    if present:
        missing = [k for k in _EXPLICIT if not env.get(k)]
        if missing:
            raise DistributedConfigError(
                f"{', '.join(present)} set but {', '.join(missing)} missing: a launcher must set all of "
                f"{', '.join(_EXPLICIT)} (launch.local does), or none of them.")
        try:
            num, pid = int(env["JVLM_NUM_PROCESSES"]), int(env["JVLM_PROCESS_ID"])
        except ValueError:
            raise DistributedConfigError(
                f"JVLM_NUM_PROCESSES={env['JVLM_NUM_PROCESSES']!r} and JVLM_PROCESS_ID={env['JVLM_PROCESS_ID']!r} "
                f"must be integers.") from None
        if not 0 <= pid < num:
            raise DistributedConfigError(f"JVLM_PROCESS_ID={pid} must be in [0, JVLM_NUM_PROCESSES={num}).")
        host, sep, port = env["JVLM_COORDINATOR"].rpartition(":")
        if not sep or not host or not port.isdigit():
            raise DistributedConfigError(
                f"JVLM_COORDINATOR={env['JVLM_COORDINATOR']!r} must be host:port, e.g. localhost:12355.")
        return dict(coordinator_address=env["JVLM_COORDINATOR"], num_processes=num, process_id=pid)
    if mode == "auto":
        return {}  # JAX detects the cluster (TPU pod, SLURM, Open MPI, Kubernetes)
    if mode:
        raise DistributedConfigError(f"JVLM_DISTRIBUTED={mode!r}: the only value is 'auto' (or leave it unset).")
    return None


def initialize(env: Mapping[str, str] | None = None) -> bool:
    """Joins the runtime the environment describes (see the module docstring); True if multi-process."""
    import jax

    env = os.environ if env is None else env
    args = init_args(env)
    if args is None:
        return False
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or "JVLM_COORDINATOR" in env:
        # CPU devices of several processes talk through gloo (the default has no cross-process collectives).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)
    return True
