"""Orbax checkpoints of the whole train state plus the data iterator state.

- Two items per step: `state` (the TrainState pytree, params/opt/rng/step) and `data` (JSON).
- Restore goes through an abstract state that carries the *current* shardings, so a checkpoint
  written on 8 devices restores on 1 and vice versa.
- A latest checkpoint that fails to restore (truncated, corrupt) is reported in one line, moved aside
  to `checkpoints_corrupt/`, and the previous good one is used. Orbax refuses to write a step that
  already exists, so nothing is silently overwritten.
- Finished runs are read for inference (parameters only, no optimizer state) by `run_loader`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
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
        previous_hook, failed = _silence_stray_reads(), False
        try:
            for step in reversed(self.steps()):
                try:
                    restored = self._manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                    return step, restored["state"], dict(restored["data"])
                except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
                    failed = True
                    self._quarantine(step, e)
            return None
        finally:
            if not failed:  # a failed restore's stray reads may still finish later: keep them quiet
                sys.unraisablehook = previous_hook

    def _quarantine(self, step: int, error: Exception) -> None:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt", f"{step}-{int(time.time())}")
        msg = (f"checkpoint at step {step} could not be restored ({_root_cause(error)}); moved to {dst}; "
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


def _root_cause(error: BaseException) -> str:
    """'Type: first line' of the innermost cause: Orbax wraps a failed array read in an Exception whose
    text is a whole TensorStore spec; the TensorStore error under it names the file and what is wrong."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).splitlines()[0][:500] if str(error) else ""
    return f"{type(error).__name__}: {text}"


def _silence_stray_reads():
    """Installs an unraisable-exception hook that drops the echoes of a failed restore; returns the
    previous hook.

    When one array of a checkpoint fails to read, Orbax's restore raises and closes its event loop while
    TensorStore still reads the other arrays; as each read finishes, its callback finds the loop closed
    and Python prints 'RuntimeError: Event loop is closed' with a traceback, one per array (hundreds of
    lines after the one line that matters). Anything else goes to the previous hook.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_closed_loop_callback(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    return previous


def _is_closed_loop_callback(unraisable) -> bool:
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
            and tb is not None and tb.tb_frame.f_code.co_name == "_check_closed")

