"""A pod on a laptop: P processes on localhost forming one JAX runtime of P x D CPU devices.

    python -m launch.local --processes 2 --devices-per-process 4 -- \\
        python -m experiments.train --config configs/siglip_shapes.py:tiny --workdir /tmp/mp

Each process gets JVLM_COORDINATOR / JVLM_NUM_PROCESSES / JVLM_PROCESS_ID (read by
`jvlm.distributed.initialize`) and XLA_FLAGS with D host devices; collectives go through gloo.
Output lines are prefixed "[p0] ", "[p1] ", ... A leading `python`/`python3` in the command is
replaced by this interpreter, so the processes run in the same environment as the launcher.
SIGTERM/SIGINT are forwarded to every process (a simulated preemption); if one process fails,
the others are stopped (they would wait forever in a collective). The exit status is the first
non-zero one, else 0.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

GRACE_S = 30  # after a process fails, how long the others get before they are killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(base: dict, *, index: int, processes: int, devices: int, port: int) -> dict:
    """The environment of process `index`: coordinates, a CPU platform with `devices` devices."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", base.get("XLA_FLAGS", "")).split()
    return dict(base) | {
        "JVLM_COORDINATOR": f"localhost:{port}", "JVLM_NUM_PROCESSES": str(processes),
        "JVLM_PROCESS_ID": str(index), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
        "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
    }


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m launch.local --processes P --devices-per-process D -- COMMAND ...\n"
                         "(the command to run follows '--', e.g. python -m experiments.train --config ...)")
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--devices-per-process", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        parser.error("no command after '--'")
    if args.processes < 1 or args.devices_per_process < 1:
        parser.error("--processes and --devices-per-process must be at least 1")
    if command[0] in ("python", "python3"):
        command = [sys.executable] + command[1:]
    return args, command


def _pump(stream, prefix: str, out) -> None:
    for line in stream:  # text mode: "\r" progress updates arrive as separate lines
        out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
        out.flush()


def launch(processes: int, devices: int, command: list[str], *, port: int = 0, out=None) -> int:
    out = out or sys.stdout
    port = port or free_port()
    procs, pumps = [], []
    for i in range(processes):
        env = process_env(dict(os.environ), index=i, processes=processes, devices=devices, port=port)
        p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1, start_new_session=True)
        t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", out), daemon=True)
        t.start()
        procs.append(p)
        pumps.append(t)

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status, failed_at = 0, None
        while any(p.poll() is None for p in procs):
            for p in procs:
                rc = p.poll()
                if rc not in (None, 0) and status == 0:
                    status, failed_at = rc, time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
        for t in pumps:
            t.join(timeout=5)
        status = status or next((p.returncode for p in procs if p.returncode), 0)
        return status if status >= 0 else 128 - status  # killed by signal N -> 128 + N, as a shell reports it
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv=None) -> None:
    args, command = parse_args(argv)
    sys.exit(launch(args.processes, args.devices_per_process, command, port=args.port))


if __name__ == "__main__":
    main()
