"""experiments.bench prints one JSON line with the fields a user compares runs by."""

import json

import jax
import numpy as np
from helpers import run_cli

from jvlm.config import load_config
from jvlm.train import loop

TINY = "configs/siglip_shapes.py:tiny"


def tiny_param_count(cfg):
    task, mesh = loop.build(cfg, None)
    abstract, *_ = loop.abstract_state(task, cfg, mesh)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))


def matmul_flops_per_step(cfg) -> float:
    """The tiny SigLIP step's matrix-multiply FLOPs counted by hand from the config: 2 per multiply-add, the
    backward pass twice the forward."""
    m, d = cfg.model, cfg.data
    img, txt, e = m.image, m.text, m.embed_dim
    assert (img.stem, img.pool, m.image_head, m.loss) == ("patch", "map", True, "sigmoid"), "the count assumes these"

    def block(n, w, mlp):  # q, k, v, out projections; scores and the weighted sum; the MLP
        return 2 * n * (4 * w * w + 2 * w * mlp) + 2 * 2 * n * n * w

    w, n = img.width, (d.image_size // img.patch_size) ** 2
    image = 2 * n * img.patch_size ** 2 * 3 * w + img.depth * block(n, w, img.mlp_dim)
    image += 2 * (2 * w * w + 2 * n * w * w) + 2 * 2 * n * w + 2 * 2 * w * img.mlp_dim  # MAP head: one query token
    text = txt.depth * block(d.max_text_len, txt.width, txt.mlp_dim)
    heads = 2 * (w + txt.width) * e                                                     # the two projections
    forward = cfg.batch_size * (image + text + heads) + 2 * cfg.batch_size ** 2 * e     # + the logits
    return 3 * forward


def test_bench_reports_throughput_flops_and_mfu():
    proc = run_cli(["experiments.bench", "--config", TINY, "--steps", "3"])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("examples_per_s", "step_ms_median", "compile_s", "params", "flops_per_step", "mfu", "peak_flops"):
        assert key in out, key
    cfg = load_config(TINY)
    assert out["devices"] == 8 and out["global_batch"] == 16 and out["params"] == tiny_param_count(cfg)
    # XLA's count of the whole step over all 8 devices: the matmuls counted by hand, plus the elementwise work
    # (norms, activations, the optimizer's update, replicated on every device), a fifth more here. A count of one
    # device's share, or one per example, would be 8 or 16 times too small.
    ratio = out["flops_per_step"] / matmul_flops_per_step(cfg)
    assert 1.0 < ratio < 1.5, ratio
    assert out["peak_flops"] > 0 and 0 < out["mfu"] < 1 and "measured" in out["peak_source"]
    step_s = out["step_ms_median"] / 1e3
    np.testing.assert_allclose(out["examples_per_s"], 16 / step_s, rtol=1e-6)
    np.testing.assert_allclose(out["mfu"], out["flops_per_step"] / step_s / out["peak_flops"], rtol=1e-6)
