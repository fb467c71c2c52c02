"""Huge pages for XLA:CPU's per-step buffers: the experiment commands relaunch themselves once with
glibc's `glibc.malloc.hugetlb=1` tunable.

XLA:CPU allocates each execution's temporaries afresh (the ldm_shapes train step: one 190 MB buffer and
several of 38 MB). Blocks that large come from mmap, so every step the kernel maps, zero-fills and unmaps
~60k 4 KiB pages: a third of the process's CPU time was kernel time (page faults, clear_page, munmap).
With the tunable, glibc advises the kernel to back those mappings with transparent huge pages (where THP
is "madvise", the common default), and the same step took 126-132 ms instead of 155-189 (ldm_shapes on
2 cores, `experiments.bench`; README, "Choices where the issues were silent"). Elsewhere (THP "never",
other libcs, macOS) the tunable is ignored and nothing changes.

glibc reads tunables once, at process start, so setting them from Python cannot work; a relaunch
(`os.execve` of the same command line, same PID) can. `JVLM_MALLOC_HUGETLB=0` opts out, and a
GLIBC_TUNABLES that already sets `glibc.malloc.hugetlb` is left as it is.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"


def tunables_to_add(environ: Mapping[str, str], platform: str = sys.platform) -> str | None:
    """The GLIBC_TUNABLES value to relaunch with, or None when there is nothing to change."""
    if not platform.startswith("linux") or environ.get("JVLM_MALLOC_HUGETLB", "1") == "0":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return None
    return f"{current}:{SETTING}" if current else SETTING


def relaunch_with_hugepages() -> None:
    """Call first in a command's `__main__` block (never in a library or a test process): replaces the
    process with the same command line and the tunable set; returns at once when it is already set."""
    value = tunables_to_add(os.environ)
    if value is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, dict(os.environ, GLIBC_TUNABLES=value))
