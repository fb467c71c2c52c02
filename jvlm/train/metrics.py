"""Metric writers (metrics.jsonl + TensorBoard events) and the one-line progress status.

Only process 0 writes. On resume from step s, entries after s are dropped from metrics.jsonl
(and TensorBoard purges them), so each step appears once even after a SIGKILL.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

import numpy as np


class MetricsWriter:
    def __init__(self, workdir: str, *, start_step: int | None, enabled: bool = True):
        """start_step: drop entries after it (a resumed run); None appends (a standalone evaluation)."""
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        if start_step is not None:
            self._truncate_after(start_step)
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(workdir, purge_step=start_step or None, flush_secs=10)
        except ImportError:  # TensorBoard events are optional; metrics.jsonl is the source of truth
            print("tensorboardX is not installed: no TensorBoard events will be written.", file=sys.stderr)

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError):
                pass  # a half-written last line from a killed run
        with open(self.path, "w") as f:
            f.writelines(keep)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)} | {k: _to_py(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _to_py(v):
    v = np.asarray(v)
    if v.size != 1:
        return v.tolist()
    v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """`step 120/1000 (12%) | loss 1.2345 | lr 1.0e-03 | 850 ex/s | ETA 2m13s` on stderr."""

    def __init__(self, total_steps: int, name: str, enabled: bool = True):
        self.total, self.name, self.enabled = total_steps, name, enabled
        self.t0 = None
        self.step0 = 0

    def start(self, step: int) -> None:
        """Call after the first (compiling) step so the rate excludes compilation."""
        self.t0, self.step0 = time.perf_counter(), step

    def rate(self, step: int) -> float:
        if self.t0 is None or step <= self.step0:
            return float("nan")
        return (step - self.step0) / (time.perf_counter() - self.t0)

    def show(self, step: int, metrics: Mapping[str, float], examples_per_s: float) -> None:
        if not self.enabled:
            return
        steps_per_s = self.rate(step)
        eta = (self.total - step) / steps_per_s if steps_per_s == steps_per_s and steps_per_s > 0 else float("nan")
        parts = [f"[{self.name}] step {step}/{self.total} ({100 * step // self.total}%)"]
        for key in ("loss", "learning_rate"):
            if key in metrics:
                parts.append(f"{'lr' if key == 'learning_rate' else key} {float(metrics[key]):.4g}")
        parts.append(f"{examples_per_s:.0f} ex/s")
        parts.append(f"ETA {_fmt_time(eta)}")
        print(" | ".join(parts), file=sys.stderr, flush=True)


def _fmt_time(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
