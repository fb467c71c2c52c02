"""Flag parsing shared by the experiment entry points: --config FILE[:arg] and --config.k=v overrides."""

from __future__ import annotations

import argparse
import sys

from jvlm import distributed
from jvlm.config import ConfigError, load_config


def parse(description: str, extra=None, argv=None):
    """Returns (args, config). Unknown `--config.*` flags are overrides; anything else is an error.

    Joins a multi-process runtime first when a launcher asked for one (`jvlm.distributed`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="configs/X.py or configs/X.py:variant")
    if extra:
        extra(parser)
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item!r}; config overrides look like --config.batch_size=64")
        overrides.append(item)
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        distributed.initialize()
    except distributed.DistributedConfigError as e:
        print(f"launch error: {e}", file=sys.stderr)
        sys.exit(2)
    return args, config
