"""The generic training loop: `run(config, workdir)` is importable and usable from a notebook.

Load priority: the workdir's own latest good checkpoint -> fresh init. A restart whose config
differs from the saved config.json (beyond run length and logging cadence) is refused.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jvlm import config as config_lib
from jvlm import sharding
from jvlm.data.pipeline import split_host_stats
from jvlm.tasks import get_task_class
from jvlm.train.checkpoint import Checkpointer
from jvlm.train.init_from import apply_init_from
from jvlm.train.metrics import MetricsWriter, Progress
from jvlm.train.state import TrainState
from jvlm.train.step import active_groups, make_train_step, phase_starts


class TrainingDiverged(RuntimeError):
    pass


def build(config: ml_collections.ConfigDict, workdir: str | None, devices=None):
    """Validates the config and builds (task, mesh). Nothing is compiled yet."""
    devices = list(devices) if devices is not None else jax.devices()
    config_lib.validate_common(config, len(devices))
    mesh = sharding.make_mesh(config.mesh, devices)
    task = get_task_class(config.task)(config, workdir, mesh)
    unknown = set(config.keys()) - set(config_lib.COMMON_KEYS) - set(task.optional_keys)
    if unknown:
        raise config_lib.ConfigError(
            f"unknown top-level config keys {sorted(unknown)}; the {config.task!r} task reads "
            f"{sorted(set(config_lib.COMMON_KEYS) | set(task.optional_keys))}.")
    task.validate()
    return task, mesh


def abstract_state(task, config, mesh):
    """(abstract TrainState with shardings, shardings, param groups): nothing is materialized."""
    rng = jax.random.PRNGKey(config.seed)
    boxed_params, _ = jax.eval_shape(task.init, rng)
    param_shardings = sharding.logical_shardings(boxed_params, mesh, sharding.rules_from_config(config))
    params = _unbox(boxed_params)
    sharding.check_divisible(params, param_shardings, mesh)
    groups = task.param_groups(params)

    def init_state(rng):
        boxed, model_state = task.init(rng)
        p = _unbox(boxed)
        opt = {g.name: g.tx.init(p[g.name]) for g in groups}
        return TrainState.create(p, opt, model_state, rng, use_ema=config.get("ema_decay", 0.0) > 0)

    abstract = jax.eval_shape(init_state, rng)
    rep = sharding.replicated(mesh)
    shardings = TrainState(
        step=rep, params=param_shardings,
        opt_state={g: sharding.shard_like_params(abstract.opt_state[g], params[g], param_shardings[g], mesh)
                   for g in abstract.opt_state},  # per group: optimizer trees hold group-relative paths
        model_state=jax.tree.map(lambda _: rep, abstract.model_state),
        ema_params=param_shardings if abstract.ema_params is not None else None,
        rng=rep, nonfinite_count=rep)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings, groups, init_state


def make_step(task, groups, at_step: int = 0):
    """The task's train step for the phase of the run that contains `at_step` (the groups started by
    then); accumulation is left to tasks whose loss couples examples."""
    config = task.config
    accum = 1 if task.handles_grad_accum else config.get("grad_accum_steps", 1)
    return make_train_step(groups, grad_accum_steps=accum, ema_decay=config.get("ema_decay", 0.0),
                           active=active_groups(groups, at_step))


def _unbox(tree):
    from flax.core import meta
    return meta.unbox(tree)


def _prepare_workdir(config, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    current = config_lib.to_dict(config)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        diffs = config_lib.config_differences(saved, current)
        if diffs:
            raise config_lib.ConfigError(
                f"{workdir} holds a run with a different config; refusing to resume it. Differences "
                f"(saved -> now):\n  " + "\n  ".join(diffs) +
                f"\nUse a new --workdir, or restore the original settings. Only "
                f"{', '.join(config_lib.RESUMABLE_DIFFERENCES)} may change on resume.")
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


class _StopFlag:
    """SIGTERM (preemption notice) -> save a checkpoint at a step boundary and exit.

    With several processes, each may see the signal at a different step, and a checkpoint is a
    collective: JAX's preemption service (it owns SIGTERM once `jax.distributed` is up) agrees on
    one step for all of them, `multihost_utils.reached_preemption_sync_point`.
    """

    def __init__(self):
        self.requested = False
        self._multi = jax.process_count() > 1
        if self._multi:
            return
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside a notebook worker)
            pass

    def _handle(self, *_):
        self.requested = True

    def check(self, step: int) -> bool:
        """Called by every process after every step; True when all should save and stop now."""
        if self._multi:
            from jax.experimental import multihost_utils
            self.requested = multihost_utils.reached_preemption_sync_point(step)
        return self.requested


def jit_train_step(task, groups, shardings, at_step: int = 0):
    """The compiled step for the phase containing `at_step` (see `ParamGroup.start_step`): step keys are
    fold_in(state.rng, state.step); the state is donated."""
    train_step = make_step(task, groups, at_step)
    rules = sharding.rules_from_config(task.config)

    def step_fn(state, batch):
        with sharding.activation_rules(task.mesh, rules):  # activations follow the same rule table
            return train_step(state, batch, jax.random.fold_in(state.rng, state.step))

    return jax.jit(step_fn, in_shardings=(shardings, None), out_shardings=(shardings, None), donate_argnums=0)


def initial_state(config, ckpt, abstract, shardings, init_state, mesh, primary):
    """(start step, state): the workdir's newest good checkpoint, else a fresh init (plus `init_from`)."""
    restored = ckpt.restore_latest(abstract)
    if restored is not None:
        start_step, state, data_state = restored
        if data_state.get("next_step") != start_step:
            raise RuntimeError(f"checkpoint {start_step}: data iterator state {data_state} does not match the step.")
        _say(primary, f"resumed from checkpoint at step {start_step} in {ckpt.directory}, mesh {dict(mesh.shape)}")
        return start_step, state
    state = jax.jit(init_state, out_shardings=shardings)(jax.random.PRNGKey(config.seed))
    _say(primary, f"starting fresh: {count_params(state.params):,} parameters, mesh {dict(mesh.shape)}")
    init = config.get("init_from", None)
    if init is not None and init.checkpoint:
        params, copied = apply_init_from(state.params, init.checkpoint, init.params)
        ema = jax.tree.map(jnp.copy, params) if state.ema_params is not None else None  # no aliasing: donated
        state = state.replace(params=params, ema_params=ema)
        _say(primary, f"initialized {copied} parameter arrays matching {init.params!r} from {init.checkpoint}")
    return 0, state


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the experiment in `workdir`; returns the last logged metrics."""
    task, mesh = build(config, workdir)
    primary = jax.process_index() == 0
    name = os.path.basename(os.path.normpath(workdir))
    _prepare_workdir(config, workdir)
    task.setup()

    abstract, shardings, groups, init_state = abstract_state(task, config, mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                        async_save=config.get("checkpoint_async", True))
    start_step, state = initial_state(config, ckpt, abstract, shardings, init_state, mesh, primary)
    # One program per phase (a phase starts where a group starts, e.g. a GAN's discriminator), each
    # compiled when first used.
    phases = {s: jit_train_step(task, groups, shardings, s) for s in phase_starts(groups)}
    loader = task.train_loader(start_step, sharding.process_rows(mesh, config.batch_size))
    writer = MetricsWriter(workdir, start_step=start_step, enabled=primary)
    progress = Progress(config.total_steps, name, enabled=primary and config.get("progress", True))
    stop = _StopFlag()
    profile = config.get("profile", None)
    if profile is not None and profile.start_step < 0:
        profile = None
    max_nonfinite = config.get("max_nonfinite_steps", 20)
    last, t_log, step_log, paused = {}, time.perf_counter(), start_step, 0.0
    host_total, host_window = {}, {}  # the loader's host-side counters (batch keys starting with '_')
    flops_per_example = None
    if task.tokens_per_example:  # sequence tasks report tokens/s and MFU (jvlm.train.flops)
        from jvlm.train.flops import device_peak
        flops_per_example = task.flops_per_token(state.params) * task.tokens_per_example
        peak = device_peak()[0]
    try:
        for step in range(start_step, config.total_steps):
            if profile is not None and step == profile.start_step:
                jax.profiler.start_trace(os.path.join(workdir, "profile"))
            local, host = split_host_stats(next(loader))
            for k, v in host.items():
                v = np.sum(v)
                host_total[k], host_window[k] = host_total.get(k, 0) + v, host_window.get(k, 0) + v
            state, metrics = phases[max(s for s in phases if s <= step)](state, sharding.global_batch(local, mesh))
            done = step + 1
            if profile is not None and done == profile.start_step + profile.num_steps:
                jax.profiler.stop_trace()
            if step == start_step or step in phases:  # exclude compilation from throughput
                jax.block_until_ready(state.step)
                progress.start(done)
                t_log, step_log, paused = time.perf_counter(), done, 0.0
            row = {}
            if done % config.log_every == 0 or done == config.total_steps:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                rate = (done - step_log) * config.batch_size / (now - t_log - paused) if done > step_log else float("nan")
                t_log, step_log, paused = now, done, 0.0
                row = {k: float(np.asarray(v)) for k, v in metrics.items()}
                row["examples_per_s"] = rate
                row["nonfinite_count"] = int(jax.device_get(state.nonfinite_count))
                row.update(task.host_metrics(host_total, host_window))
                host_window = {}
                if flops_per_example is not None:
                    row["tokens_per_s"] = rate * task.tokens_per_example
                    row["mfu"] = rate * flops_per_example / peak
                progress.show(done, row, rate)
                if row["nonfinite_count"] > max_nonfinite:
                    writer.write(done, row)
                    raise TrainingDiverged(
                        f"{row['nonfinite_count']} steps were skipped because the loss or gradients were not "
                        f"finite (max_nonfinite_steps={max_nonfinite}). Lower optimizer.learning_rate, set "
                        f"optimizer.grad_clip_norm, or train in float32 (model.dtype).")
            stopping = stop.check(done)
            t_pause = time.perf_counter()  # evaluation and checkpointing are not training throughput
            if done % config.eval_every == 0 or done == config.total_steps:
                evals = task.evaluate(state, mesh)
                row.update(evals)
                if evals:
                    _say(primary, "  ".join(f"{k}={v:.4g}" for k, v in evals.items()))
            if row:
                writer.write(done, row)
                last.update(row)
            if done % config.checkpoint_every == 0 or done == config.total_steps or stopping:
                ckpt.save(done, state, loader.get_state())
            paused += time.perf_counter() - t_pause
            if stopping:
                _say(primary, f"SIGTERM: saved checkpoint at step {done}; exiting.")
                break
    finally:
        ckpt.close()
        writer.close()
    return last


def count_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _say(primary: bool, msg: str) -> None:
    if primary:
        print(msg, file=sys.stderr, flush=True)

