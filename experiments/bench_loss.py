"""Time a contrastive loss + its gradient on all visible devices; print one JSON line.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
      python -m experiments.bench_loss --loss sigmoid --impl ring --global-batch 16384 --dim 256

Embeddings come from a fixed seed, so two implementations print the same loss. impl: ring |
all_gather (sharded, shard_map) | dense (the plain loss under jit; XLA decides the partitioning).
temp_bytes_per_device is the compiled executable's temporary memory (XLA memory analysis).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=("sigmoid", "softmax"), required=True)
    p.add_argument("--impl", choices=("ring", "all_gather", "dense"), required=True)
    p.add_argument("--global-batch", type=int, required=True)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.loss == "softmax" and args.impl == "ring":
        p.error("--impl ring exists for the sigmoid loss only: the softmax needs the whole batch's "
                "normalizer; use --impl all_gather or dense")

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jvlm import sharding
    from jvlm.objectives import contrastive as C

    mesh = sharding.make_mesh({"data": -1})
    n = jax.device_count()
    if args.global_batch % n:
        p.error(f"--global-batch {args.global_batch} is not divisible by the {n} devices")
    rng = np.random.default_rng(args.seed)
    x, y = (rng.standard_normal((args.global_batch, args.dim)).astype(np.float32) for _ in range(2))
    x, y = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (x, y))
    x, y = (jax.device_put(a, sharding.batch_sharding(mesh, 2)) for a in (x, y))
    t = jnp.float32(np.log(10.0) if args.loss == "sigmoid" else np.log(1 / 0.07))
    b = jnp.float32(-10.0)

    if args.loss == "sigmoid":
        fn = (C.sigmoid_loss if args.impl == "dense"
              else lambda x, y, t, b: C.sharded_sigmoid_loss(x, y, t, b, mesh=mesh, impl=args.impl))
    else:
        fn = (lambda x, y, t, b: C.softmax_contrastive_loss(x, y, t)) if args.impl == "dense" else (
            lambda x, y, t, b: C.sharded_softmax_contrastive_loss(x, y, t, mesh=mesh))
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
    t0 = time.perf_counter()
    compiled = step.lower(x, y, t, b).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    loss, grads = compiled(x, y, t, b)
    jax.block_until_ready(grads)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(x, y, t, b))
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "loss": float(loss), "loss_kind": args.loss, "impl": args.impl, "global_batch": args.global_batch,
        "dim": args.dim, "devices": n, "step_ms_median": 1e3 * statistics.median(times),
        "compile_s": compile_s, "temp_bytes_per_device": int(mem.temp_size_in_bytes) if mem else None,
    }))


if __name__ == "__main__":
    from jvlm import cpu_flags
    from jvlm.host_malloc import relaunch_with_hugepages

    relaunch_with_hugepages()  # huge pages for XLA:CPU's per-step buffers; see jvlm/host_malloc.py
    cpu_flags.apply()  # before JAX starts its CPU backend; see jvlm/cpu_flags.py
    main()
