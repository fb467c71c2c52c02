"""Train (or resume) an experiment.

    python -m experiments.train --config configs/siglip_shapes.py --workdir runs/siglip [--config.k=v ...]
"""

from __future__ import annotations

import sys

from experiments.common import parse


def main(argv=None) -> None:
    args, config = parse(__doc__, lambda p: p.add_argument("--workdir", required=True), argv)
    from jvlm.config import ConfigError
    from jvlm.train import loop

    try:
        loop.run(config, args.workdir)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except loop.TrainingDiverged as e:
        print(f"training stopped: {e}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    from jvlm import cpu_flags
    from jvlm.host_malloc import relaunch_with_hugepages

    relaunch_with_hugepages()  # huge pages for XLA:CPU's per-step buffers; see jvlm/host_malloc.py
    cpu_flags.apply()  # before JAX starts its CPU backend; see jvlm/cpu_flags.py
    main()
