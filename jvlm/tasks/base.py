"""What a model family provides to the generic loop. Tasks are the only place a family's pieces meet."""

from __future__ import annotations

import abc
import os
import tempfile
from typing import Any, Callable

import jax
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jvlm.config import ConfigError
from jvlm.data.pipeline import StepIndexedLoader
from jvlm.train.step import ParamGroup


class Task(abc.ABC):
    # Top-level config keys this task reads beyond jvlm.config.COMMON_KEYS.
    optional_keys: tuple[str, ...] = (
        "grad_accum_steps", "ema_decay", "max_nonfinite_steps", "profile", "eval", "checkpoint_async", "progress",
        "init_from", "sharding_rules")

    # The config.data.source values the task reads (validate checks with jvlm.config.check_data_source).
    data_sources: tuple[str, ...] = ("shapes",)

    # True when the task's own loss handles config.grad_accum_steps (losses that couple examples).
    handles_grad_accum: bool = False

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | None, mesh: Mesh):
        self.config, self.workdir, self.mesh = config, workdir, mesh

    @abc.abstractmethod
    def validate(self) -> None:
        """Task-specific config checks; raise jvlm.config.ConfigError naming the key and the fix."""

    def setup(self) -> None:
        """Host-side preparation before anything is traced (e.g. training a tokenizer)."""

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> tuple[dict[str, Any], Any]:
        """Pure: -> (params by group, with nn.LogicallyPartitioned leaves; model_state)."""

    @abc.abstractmethod
    def param_groups(self, params: dict[str, Any]) -> list[ParamGroup]:
        """One ParamGroup (loss + optimizer) per parameter group; `params` may be abstract."""

    @abc.abstractmethod
    def train_loader(self, start_step: int, rows: tuple[int, int]) -> StepIndexedLoader:
        """Batches for steps start_step.. ; this process reads rows [start, stop) of each global batch."""

    @abc.abstractmethod
    def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of one global training batch (device keys only): for AOT compilation."""

    def evaluate(self, state, mesh: Mesh) -> dict[str, float]:
        """Eval metrics named `eval/...`; default none."""
        return {}

    # Sequence tasks: tokens in one example (the loop and the bench then report tokens/s and MFU).
    tokens_per_example: int | None = None

    def flops_per_token(self, params) -> float:
        """The analytic training FLOPs per token (sequence tasks; jvlm.train.flops)."""
        raise NotImplementedError(f"{type(self).__name__} reports no FLOPs per token")

    def host_metrics(self, total: dict, window: dict) -> dict[str, float]:
        """Logged figures from the loader's host-side counters (batch keys starting with '_'), summed since the
        start of this process (`total`) and since the last log (`window`)."""
        return {"data/truncated_texts": int(total.get("_truncated", 0))}

    def setup_tokenizer(self, load: Callable[[str], Any], train: Callable[[str], Any]):
        """`load(path)` of config.data.tokenizer, else of WORKDIR/tokenizer.model, which process 0 first makes with
        `train(path)` if it does not exist (the file pins the tokenizer for resumed runs; without a workdir, e.g. in
        a notebook, it goes to a fresh temporary directory). Refused if it holds more ids than data.vocab_size."""
        d = self.config.data
        path = d.tokenizer
        if not path:
            path = os.path.join(self.workdir or tempfile.mkdtemp(prefix="jvlm_tokenizer_"), "tokenizer.model")
            if jax.process_index() == 0 and not os.path.exists(path):
                train(path)
            multihost_utils.sync_global_devices("jvlm_tokenizer")
        tokenizer = load(path)
        if tokenizer.vocab_size > d.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but config.data.vocab_size="
                              f"{d.vocab_size}; raise data.vocab_size to at least {tokenizer.vocab_size}.")
        return tokenizer
