"""experiments.bench prints one JSON line with the fields a user compares runs by."""

import json

import jax
import numpy as np
from helpers import run_cli

from jvlm.config import load_config
from jvlm.train import loop


def tiny_param_count():
    cfg = load_config("configs/siglip_shapes.py:tiny")
    task, mesh = loop.build(cfg, None)
    abstract, *_ = loop.abstract_state(task, cfg, mesh)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))


def test_bench_reports_throughput_flops_and_mfu():
    proc = run_cli(["experiments.bench", "--config", "configs/siglip_shapes.py:tiny", "--steps", "3"])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("examples_per_s", "step_ms_median", "compile_s", "params", "flops_per_step", "mfu", "peak_flops"):
        assert key in out, key
    assert out["devices"] == 8 and out["global_batch"] == 16 and out["params"] == tiny_param_count()
    assert out["flops_per_step"] > 0 and out["peak_flops"] > 0 and 0 < out["mfu"] < 1
    assert abs(out["examples_per_s"] - 16 / (out["step_ms_median"] / 1e3)) < 1e-6 * out["examples_per_s"]
    assert "measured" in out["peak_source"]
