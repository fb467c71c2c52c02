"""Orbax checkpoints of the whole train state plus the data iterator state.

- Two items per step: `state` (the TrainState pytree, params/opt/rng/step) and `data` (JSON).
- Restore goes through an abstract state that carries the *current* shardings, so a checkpoint
  written on 8 devices restores on 1 and vice versa.
- A latest checkpoint that fails to restore (truncated, corrupt) is reported, moved aside to
  `checkpoints_corrupt/`, and the previous good one is used. Orbax refuses to write a step that
  already exists, so nothing is silently overwritten.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

# Orbax splits each replicated array across its replicas to write in parallel ("replica-parallel"). Each
# slice is a jitted op compiled per array shape and device: on 8 simulated CPU devices the first save of a
# tiny model compiled ~250 of them (~30 s). Small arrays gain nothing from splitting; large ones still do.
MIN_REPLICA_SLICE_BYTES = 4 << 20
_array_handler_registered = False


def _register_array_handler() -> None:
    global _array_handler_registered
    if not _array_handler_registered:
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        absl_log.setLevel(logging.ERROR)  # replacing the default handler is the point; no warning about it
        try:
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
                override=True)
        finally:
            absl_log.setLevel(level)
        _array_handler_registered = True


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        _register_array_handler()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict) -> None:
        if step in self._manager.all_steps():
            raise FileExistsError(
                f"a checkpoint for step {step} already exists in {self.directory}; refusing to overwrite it.")
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Newest restorable (step, state, data_state); None if there is no checkpoint."""
        for step in reversed(self.steps()):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                return step, restored["state"], dict(restored["data"])
            except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                self._quarantine(step, e)
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt", f"{step}-{int(time.time())}")
        msg = (f"checkpoint at step {step} could not be restored ({type(error).__name__}: "
               f"{str(error).splitlines()[0][:300] if str(error) else ''}); moved to {dst}; "
               f"falling back to the previous checkpoint.")
        log.error(msg)
        print(f"WARNING: {msg}", flush=True)
        if jax.process_index() == 0 and os.path.exists(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(src, dst)
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def find_checkpoint_dir(path: str) -> str:
    """A run's workdir or its checkpoints/ folder -> the checkpoints folder."""
    for candidate in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(candidate) and any(d.isdigit() for d in os.listdir(candidate)):
            return os.path.abspath(candidate)
    raise FileNotFoundError(f"no checkpoints under {path!r}: give a run's workdir or its checkpoints/ folder.")


def load_params(path: str, *, ema: bool = False) -> tuple[int, dict[str, Any]]:
    """(step, params by group) from the newest checkpoint of a run, as host numpy arrays.

    For initializing from another run (LiT, fine-tuning) and for inference; restored without
    a target, so the saving run's mesh does not matter.
    """
    step, params, _ = load_for_inference(path, ema=ema)
    return step, params


def load_for_inference(path: str, *, ema: bool = False) -> tuple[int, dict[str, Any], Any]:
    """(step, params by group, model_state) of the newest checkpoint: everything a model needs to run
    (an EMA codebook lives in model_state); the optimizer state is not read into memory."""
    directory = find_checkpoint_dir(path)
    manager = ocp.CheckpointManager(directory, item_names=("state", "data"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    params = restored.get("ema_params") if ema and restored.get("ema_params") is not None else restored["params"]
    host = lambda tree: jax.tree.map(lambda x: jax.device_get(x), tree)  # noqa: E731
    return step, host(params), host(restored.get("model_state"))
