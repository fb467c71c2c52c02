"""The XLA:CPU flag jvlm's commands add to XLA_FLAGS before JAX starts its backend: `apply()`.

jaxlib 0.10 hands every convolution to YNNPACK. On CPUs without AVX-512 (AVX2 only) its kernel-gradient
convolution runs at 2-3 GFLOP/s, against 50+ for XLA's own (Eigen) path: on a 2-core AVX2 machine the
shapes VAE's train step takes 1641 ms with YNNPACK convolutions and 599 ms without (the same program
otherwise), a ~3x convolution fix. So jvlm turns that one YNN fusion type off.

`import jvlm` leaves the process alone. The `experiments.*` commands call `apply()` in their `__main__`
blocks, as the test suite's conftest does; a library or notebook user calls it before the first device
query (the flags reach XLA only if set before JAX creates its CPU backend; importing jax earlier is fine):

    import jvlm.cpu_flags
    jvlm.cpu_flags.apply()
    import jax
    jax.devices()

The flag is added only on the jaxlib minor versions where it was checked to exist (XLA aborts the process
on an unknown flag). A user who sets the flag in XLA_FLAGS keeps their setting, and `JVLM_XLA_CPU_FLAGS=0`
leaves XLA_FLAGS untouched.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import warnings
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


def apply() -> str | None:
    """Adds jvlm's XLA:CPU flag to this process's XLA_FLAGS (see the module docstring); returns what was
    added. Call it before JAX creates its CPU backend: afterwards it warns that the flag comes too late."""
    added = with_cpu_flags(os.environ)
    if added and _backend_started():
        warnings.warn(f"jvlm.cpu_flags.apply(): JAX's backend already exists, so {added} takes effect only in "
                      f"processes started from this one; call apply() before the first device query.",
                      stacklevel=2)
    return added


def _backend_started() -> bool:
    if "jax" not in sys.modules:  # nothing has imported jax, so no backend exists
        return False
    try:
        from jax._src import xla_bridge  # no public API says whether the backends exist
        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        return False
