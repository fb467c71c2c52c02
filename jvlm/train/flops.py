"""FLOP counts and device peaks for throughput and MFU figures.

- `lm_flops_per_token`: the analytic count of a decoder LM's training step per token (PaLM, appendix B):
  6 N for the weight matmuls (forward and backward) plus 12 * layers * heads * head_dim * sequence length for the
  attention scores and their weighted sums, counted over the full square as the papers do. N counts every weight
  used in a matmul: all parameters but the input embedding table (which a tied head does use).
- `device_peak`: the published dense bf16 peak of an accelerator, or on CPU the measured rate of a large float32
  matmul on this machine (simulated CPU devices share that one machine, so it is not multiplied by their number).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
              "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def lm_flops_per_token(transformer, vocab_size: int, num_params: int, seq_len: int, tied: bool) -> float:
    matmul_params = num_params - (0 if tied else vocab_size * transformer.width)
    attention = 12 * transformer.depth * transformer.num_heads * transformer.dim_per_head * seq_len
    return 6.0 * matmul_params + attention


def measure_cpu_peak(n: int = 2048, repeats: int = 10) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times)


_PEAK: tuple[float, str] | None = None


def device_peak() -> tuple[float, str]:
    """(FLOP/s of all devices together, where the figure comes from); measured once per process on CPU."""
    global _PEAK
    if _PEAK is None:
        dev = jax.devices()[0]
        if dev.platform == "cpu":
            _PEAK = measure_cpu_peak(), "measured: f32 2048x2048 matmul on this machine"
        else:
            peak = next((p for name, p in PEAK_FLOPS.items() if name.lower() in dev.device_kind.lower()), None)
            _PEAK = ((peak * jax.device_count(), f"published bf16 peak of {dev.device_kind} x {jax.device_count()}")
                     if peak else (float("nan"), f"unknown peak for {dev.device_kind}"))
    return _PEAK
