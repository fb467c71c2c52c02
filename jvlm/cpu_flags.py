"""XLA:CPU settings jvlm adds to XLA_FLAGS before JAX starts its backend (`import jvlm` does it).

jaxlib 0.10 hands every convolution to YNNPACK. On CPUs without AVX-512 its kernel-gradient
convolution runs at 2-3 GFLOP/s, against 50+ for XLA's own (Eigen) path: on a 2-core AVX2 machine the
shapes VAE's train step takes 1641 ms with YNNPACK convolutions and 599 ms without (the same program
otherwise; see README "Image autoencoders"). So jvlm turns that one YNN fusion type off.

Only on the jaxlib minor versions where the flag was checked to exist: XLA aborts the process on an
unknown flag. A user who sets the flag in XLA_FLAGS keeps their setting, and `JVLM_XLA_CPU_FLAGS=0`
leaves XLA_FLAGS untouched. The flags only reach XLA if set before JAX creates its CPU backend (the
first device query); importing jax earlier is fine.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# "-x" removes x from XLA's default list of YNN fusion types.
DEFAULT = f"{YNN_FUSION_FLAG}=-individual_convolution"
CHECKED_JAXLIB = ("0.10",)  # minor versions whose XLA knows the flag


def _jaxlib_minor() -> str:
    try:
        return ".".join(importlib.metadata.version("jaxlib").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return ""


def with_cpu_flags(environ: MutableMapping[str, str], jaxlib_minor: str | None = None) -> str | None:
    """Add DEFAULT to environ["XLA_FLAGS"] unless the user opted out or already chose; returns what was added."""
    if environ.get("JVLM_XLA_CPU_FLAGS", "1") == "0":
        return None
    flags = environ.get("XLA_FLAGS", "")
    if YNN_FUSION_FLAG in flags:
        return None
    if (jaxlib_minor if jaxlib_minor is not None else _jaxlib_minor()) not in CHECKED_JAXLIB:
        return None
    environ["XLA_FLAGS"] = f"{flags} {DEFAULT}".strip()
    return DEFAULT
