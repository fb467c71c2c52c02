"""Will a config fit? Compile its train step ahead of time for N devices and report per-device memory,
FLOPs and collectives, without the hardware.

    python -m experiments.plan --config configs/siglip_shapes.py:B/16 --devices 256 --mesh data=32,fsdp=8
    python -m experiments.plan --config configs/siglip_shapes.py:L/16 --topology v5e:16x16   # needs libtpu

libtpu compiles for a TPU topology on a machine without TPUs (pip install 'jax[tpu]'; set
TPU_WORKER_HOSTNAMES=localhost to quiet its start-up warnings). Topology names: v5e:16x16 (256 chips),
v4:8x8x4 (256), v5p:8x8x8 (512), ...

Without --topology, the step is compiled by XLA's CPU compiler for N simulated devices: the
sharding (SPMD partitioning), per-device shapes and collectives are the real ones, but layouts,
fusion, and bf16 handling differ from a TPU/GPU compiler, so the memory figures are an estimate
(the output says so). With --topology (libtpu installed), the step is compiled for that TPU
topology, as MaxText's ahead-of-time compilation does. Nothing is allocated or run either way.
Add --json for one machine-readable line.

The task is set up as for training, so the runs a config names must exist: a latent diffusion config's
autoencoder (`latent.run`, whose latents the denoiser reads), a VQ-GAN's perceptual network, a frozen text
tower, and the evaluation judge (`--config.eval.judge=''` plans without one: evaluation is not planned).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8}
# Memory per chip, to say whether a plan fits (device_kind as JAX reports it).
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5e": 16, "TPU v5p": 95, "TPU v6 lite": 32, "TPU v6e": 32,
           "NVIDIA H100": 80, "NVIDIA H200": 141, "NVIDIA A100": 80}
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {"count", "bytes"}} over the per-device program: static occurrences (an op inside a loop
    counts once) and the bytes of their results."""
    out = {}
    for match in _OP.finditer(hlo_text):
        op = match.group(2)
        nbytes = sum(_DTYPE_BYTES[d] * math.prod(int(x) for x in dims.split(",") if x)
                     for d, dims in _SHAPE.findall(match.group(1)))
        entry = out.setdefault(op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += nbytes
    return out


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * leaf.dtype.itemsize
    return total


def parse_mesh(text: str) -> dict[str, int]:
    mesh = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not value.lstrip("-").isdigit():
            raise SystemExit(f"--mesh {text!r}: write axis=size pairs, e.g. --mesh data=32,fsdp=8,model=1")
        mesh[key.strip()] = int(value)
    return mesh


def _preparse(argv):
    """--devices must be known before JAX starts its CPU backend."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--devices", type=int, default=0)
    parser.add_argument("--topology", default="")
    args, _ = parser.parse_known_args(argv)
    return args


def lower_step(config, devices, workdir: str):
    """(task, mesh, abstract state, abstract batch, lowered step): the train step `experiments.train` would
    run, lowered for `devices` (`.compile()` it). The task is set up as training sets it up (the step of a latent diffusion
    config depends on its autoencoder, a VQ-GAN's on its perceptual network); `workdir` takes what setup
    writes (a tokenizer, a latent scale)."""
    import jax

    from jvlm import sharding
    from jvlm.train import loop

    task, mesh = loop.build(config, workdir, devices)  # validates the config against this device count
    task.setup()
    abstract, shardings, groups, _ = loop.abstract_state(task, config, mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh, len(v.shape)))
             for k, v in task.abstract_batch(config.batch_size).items()}
    # The last phase runs every parameter group (e.g. a VQ-GAN after its discriminator starts): the largest.
    last_phase = max(g.start_step for g in groups)
    return task, mesh, abstract, batch, loop.jit_train_step(task, groups, shardings, last_phase).lower(abstract, batch)


def plan(config, devices, *, compiler_note: str) -> dict:
    """Compiles the train step of `config` for `devices`; returns the report as a dict."""
    from jvlm.train import loop

    with tempfile.TemporaryDirectory(prefix="jvlm_plan_") as workdir:
        _, mesh, abstract, batch, lowered = lower_step(config, devices, workdir)
    compiled = lowered.compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops_device = float(cost.get("flops", float("nan"))) if cost else float("nan")
    opt = per_device_bytes(abstract.opt_state)
    params = per_device_bytes(abstract.params)
    ema = per_device_bytes(abstract.ema_params) if abstract.ema_params is not None else 0
    report = {
        "config_batch_size": config.batch_size, "devices": len(devices), "mesh": dict(mesh.shape),
        "compiler": compiler_note, "platform": devices[0].platform, "device_kind": devices[0].device_kind,
        "device_memory_bytes": next((gib * 2**30 for kind, gib in HBM_GIB.items()
                                     if kind.lower() in devices[0].device_kind.lower()), None),
        "params": loop.count_params(abstract.params),
        "per_device": {
            "params_bytes": params, "optimizer_bytes": opt, "ema_bytes": ema,
            "batch_bytes": per_device_bytes(batch),
            "arguments_bytes": mem.argument_size_in_bytes, "outputs_bytes": mem.output_size_in_bytes,
            "aliased_bytes": mem.alias_size_in_bytes,
            "temporaries_bytes": mem.temp_size_in_bytes,  # activations kept for the backward pass + scratch
            "total_bytes": mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes,
        },
        "flops_per_step": flops_device * len(devices),
        "flops_per_device": flops_device,
        "collectives": collectives(compiled.as_text()),
    }
    return report


def _gib(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:8.2f} {unit}"
    return f"{n:8.0f} B  "


def format_report(r: dict) -> str:
    d = r["per_device"]
    lines = [
        f"{r['compiler']}",
        f"devices {r['devices']} ({r['platform']}), mesh {r['mesh']}, global batch {r['config_batch_size']}, "
        f"{r['params'] / 1e6:.1f}M parameters",
        "per device:",
        f"  parameters          {_gib(d['params_bytes'])}",
        f"  optimizer state     {_gib(d['optimizer_bytes'])}",
    ]
    if d["ema_bytes"]:
        lines.append(f"  EMA parameters      {_gib(d['ema_bytes'])}")
    lines += [
        f"  batch               {_gib(d['batch_bytes'])}",
        f"  temporaries         {_gib(d['temporaries_bytes'])}   (activations saved for backward + scratch)",
        f"  total               {_gib(d['total_bytes'])}   (arguments + outputs - donated + temporaries)",
        *([f"  fits in the {_gib(r['device_memory_bytes']).strip()} of a {r['device_kind']}: "
           f"{'yes' if d['total_bytes'] <= r['device_memory_bytes'] else 'NO'}"] if r["device_memory_bytes"] else []),
        f"FLOPs per step {r['flops_per_step']:.3e} ({r['flops_per_device']:.3e} per device, XLA cost analysis)",
        "collectives in the per-device program (static count, result bytes):",
    ]
    for op, c in sorted(r["collectives"].items()):
        lines.append(f"  {op:<20}{c['count']:>5} x  {_gib(c['bytes'])} total")
    if not r["collectives"]:
        lines.append("  none")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = _preparse(argv)
    if pre.topology:
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no TPU VM metadata on this machine
    else:
        if pre.devices < 1:
            raise SystemExit("--devices N (the number of accelerators to plan for) is required without --topology")
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={pre.devices}".strip()
        os.environ["JAX_PLATFORMS"] = "cpu"

    from experiments.common import parse
    from jvlm.config import ConfigError

    def extra(p):
        p.add_argument("--devices", type=int, default=0, help="simulated devices (CPU compiler)")
        p.add_argument("--topology", default="", help="TPU topology, e.g. v5e:16x16 (needs libtpu)")
        p.add_argument("--mesh", default="", help="axis sizes, e.g. data=32,fsdp=8,model=1 (overrides config.mesh)")
        p.add_argument("--json", action="store_true", help="print one JSON line")

    args, config = parse(__doc__, extra, argv)
    import jax

    if args.mesh:
        mesh = parse_mesh(args.mesh)
        for axis in ("data", "fsdp", "model"):  # per-slice sizes; DCN sizes stay --config.mesh.dcn.*
            config.mesh[axis] = mesh.pop(axis, 1)
        if mesh:
            raise SystemExit(f"--mesh: unknown axes {sorted(mesh)}; use data, fsdp, model "
                             f"(and --config.mesh.dcn.AXIS=N for sizes across slices)")
    if args.topology:
        from jax.experimental import topologies
        try:
            devices = topologies.get_topology_desc(topology_name=args.topology, platform="tpu").devices
        except Exception as e:  # noqa: BLE001 - no libtpu, or an unknown topology name
            raise SystemExit(f"--topology {args.topology}: could not describe the TPU topology ({e}). It needs "
                             f"libtpu (pip install 'jax[tpu]'); without it, use --devices N for a CPU-compiler estimate.")
        note = f"compiled for TPU topology {args.topology} (libtpu): per-device figures are the TPU compiler's"
    else:
        devices = jax.devices()
        if len(devices) != args.devices:
            raise SystemExit(f"expected {args.devices} CPU devices, JAX has {len(devices)}: run plan in a fresh process")
        note = (f"ESTIMATE from the XLA CPU compiler for {args.devices} simulated devices (no libtpu/accelerator): "
                f"sharding, FLOPs and collectives are real; memory is pessimistic (the CPU compiler neither "
                f"schedules for memory nor keeps remat savings) -- use --topology with libtpu for TPU figures")
    try:
        report = plan(config, devices, compiler_note=note)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(report) if args.json else format_report(report))


if __name__ == "__main__":
    from jvlm import cpu_flags

    cpu_flags.apply()  # before JAX starts its CPU backend; see jvlm/cpu_flags.py
    main()
