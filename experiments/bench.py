"""Time N compiled train steps of an experiment and print one JSON line.

    python -m experiments.bench --config configs/siglip_shapes.py:tiny --steps 20 [--config.k=v ...]

Fields: examples_per_s, step_ms_median, compile_s, params, flops_per_step (global, from XLA's cost
analysis of the per-device program x devices), peak_flops and its source, mfu, devices, backend; for sequence
tasks (language models) also tokens_per_s and mfu_6nd from the analytic count (jvlm.train.flops).
On CPU the peak is measured here with a large f32 matmul on the whole machine; simulated CPU
devices share that one machine, so their peak is not multiplied by the device count.
The batch is one real batch from the experiment's loader, reused, so data loading is not timed.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

from experiments.common import parse


def main(argv=None) -> None:
    args, config = parse(__doc__, lambda p: p.add_argument("--steps", type=int, default=20), argv)
    import jax

    from jvlm import sharding
    from jvlm.data.pipeline import split_host_stats
    from jvlm.train import loop
    from jvlm.train.flops import device_peak

    workdir = tempfile.mkdtemp(prefix="jvlm_bench_")
    task, mesh = loop.build(config, workdir)
    task.setup()
    _, shardings, groups, init_state = loop.abstract_state(task, config, mesh)
    state = jax.jit(init_state, out_shardings=shardings)(jax.random.PRNGKey(config.seed))
    local, _ = split_host_stats(next(task.train_loader(0, sharding.process_rows(mesh, config.batch_size))))
    batch = sharding.global_batch(local, mesh)
    step_fn = loop.jit_train_step(task, groups, shardings)
    t = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) * jax.device_count()
    state, m = compiled(state, batch)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    peak, peak_source = device_peak()
    extra = {}
    tokens = task.tokens_per_example
    if tokens:  # sequence tasks: tokens/s, and MFU from the analytic count beside XLA's
        flops_per_token = task.flops_per_token(state.params)
        extra = {"tokens_per_s": config.batch_size * tokens / step_s, "flops_per_step_6nd": flops_per_token
                 * tokens * config.batch_size, "mfu_6nd": flops_per_token * tokens * config.batch_size / step_s / peak}
    print(json.dumps({
        "config": args.config, "backend": jax.default_backend(), "devices": jax.device_count(),
        "global_batch": config.batch_size, "steps": args.steps,
        "examples_per_s": config.batch_size / step_s, "step_ms_median": 1e3 * step_s, "compile_s": compile_s,
        "params": loop.count_params(state.params),
        "flops_per_step": flops, "peak_flops": peak, "peak_source": peak_source,
        "mfu": flops / step_s / peak, **extra,
    }))


if __name__ == "__main__":
    from jvlm import cpu_flags
    from jvlm.host_malloc import relaunch_with_hugepages

    relaunch_with_hugepages()  # huge pages for XLA:CPU's per-step buffers; see jvlm/host_malloc.py
    cpu_flags.apply()  # before JAX starts its CPU backend; see jvlm/cpu_flags.py
    main()
