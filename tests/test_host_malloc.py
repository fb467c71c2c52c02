"""The experiment commands' relaunch with glibc's huge-page malloc tunable (jvlm/host_malloc.py)."""

import os
import subprocess
import sys

import pytest

from jvlm.host_malloc import SETTING, tunables_to_add


def test_the_tunable_is_added_once_and_joins_the_users_own():
    assert tunables_to_add({}, "linux") == SETTING
    assert tunables_to_add({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "linux") == \
        f"glibc.malloc.arena_max=2:{SETTING}"
    # Already chosen (by the relaunch itself or by the user, either way): no relaunch, so no loop.
    assert tunables_to_add({"GLIBC_TUNABLES": SETTING}, "linux") is None
    assert tunables_to_add({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "linux") is None


def test_opt_out_and_other_platforms_change_nothing():
    assert tunables_to_add({"JVLM_MALLOC_HUGETLB": "0"}, "linux") is None
    assert tunables_to_add({}, "darwin") is None
    assert tunables_to_add({}, "win32") is None


_PROBE = ("import os, sys; from jvlm.host_malloc import relaunch_with_hugepages; "
          "print('before', flush=True); relaunch_with_hugepages(); "
          "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


def _probe(env_extra: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JVLM_MALLOC_HUGETLB")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _PROBE, "--config.x=1"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return out.splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the relaunch is Linux-only")
def test_the_relaunch_runs_the_same_command_line_once_with_the_tunable():
    # "before" twice: the first process printed it, then was replaced by the second, which prints it again
    # and goes on with the tunable set and the same arguments.
    assert _probe({}) == ["before", "before", f"{SETTING} ['--config.x=1']"]
    assert _probe({"JVLM_MALLOC_HUGETLB": "0"}) == ["before", "None ['--config.x=1']"]
