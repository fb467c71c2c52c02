"""jvlm: a JAX/Flax training framework for vision-language and generative image models."""

import os as _os

from jvlm import cpu_flags as _cpu_flags

# Before anything creates JAX's CPU backend: see jvlm/cpu_flags.py for why and how to opt out.
_cpu_flags.with_cpu_flags(_os.environ)
