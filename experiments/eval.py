"""Evaluate a run's newest checkpoint with its task's evaluators; print JSON and append to metrics.jsonl.

    python -m experiments.eval --config configs/siglip_shapes.py --workdir runs/siglip_shapes
"""

from __future__ import annotations

import json
import os
import sys

from experiments.common import parse


def main(argv=None) -> None:
    args, config = parse(__doc__, lambda p: p.add_argument("--workdir", required=True), argv)
    import jax

    from jvlm.config import ConfigError
    from jvlm.train import loop
    from jvlm.train.checkpoint import Checkpointer
    from jvlm.train.metrics import MetricsWriter

    try:
        if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
            raise ConfigError(f"{args.workdir} has no checkpoints/ to evaluate; train it first.")
        task, mesh = loop.build(config, args.workdir)
        task.setup()
        abstract, *_ = loop.abstract_state(task, config, mesh)
        restored = Checkpointer(os.path.join(args.workdir, "checkpoints"), keep=config.keep_checkpoints)
        found = restored.restore_latest(abstract)
        if found is None:
            raise ConfigError(f"no restorable checkpoint in {args.workdir}/checkpoints.")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    step, state, _ = found
    metrics = task.evaluate(state, mesh)
    if jax.process_index() == 0:
        writer = MetricsWriter(args.workdir, start_step=None)
        writer.write(step, metrics)
        writer.close()
        print(json.dumps({"step": step} | metrics))


if __name__ == "__main__":
    from jvlm import cpu_flags
    from jvlm.host_malloc import relaunch_with_hugepages

    relaunch_with_hugepages()  # huge pages for XLA:CPU's per-step buffers; see jvlm/host_malloc.py
    cpu_flags.apply()  # before JAX starts its CPU backend; see jvlm/cpu_flags.py
    main()
