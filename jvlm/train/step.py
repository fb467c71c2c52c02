"""The reusable train step: `train_step(state, batch, rng) -> (state, metrics)`.

It knows nothing about model families. A family supplies one or more `ParamGroup`s, each a
pure loss function with its own optimizer:

    loss_fn(params, batch, rng, ctx) -> LossOutput(loss, metrics, model_state)

`params` is the dict of *all* groups (the loss of group g is differentiated w.r.t. group g
only); `ctx` carries the step number (for GAN start steps, Gumbel temperatures, ...), the
non-gradient `model_state`, and `carry`: what the groups before this one returned in
`LossOutput.carry` this step (gradient-stopped), e.g. a GAN generator's reconstructions for its
discriminator, so a later group need not recompute them. Groups are updated in order within one
step, each seeing the parameters of the groups updated before it (a carry was computed with the
parameters before their update), or only every `every` steps, or only from `start_step` on: before it the
group's loss is not computed at all (one `lax.cond` around the group's whole forward and backward pass).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jvlm.train.state import TrainState


class StepContext(NamedTuple):
    step: jax.Array        # int32 scalar, the number of completed steps before this one
    model_state: Any       # non-gradient variables (read-only input; return updates in LossOutput)
    carry: dict = {}       # group name -> LossOutput.carry of the groups before this one, this step
    # The groups this compiled program updates, when the program was built for one phase of the run
    # (make_train_step(active=...)): a loss may then leave out terms of groups not yet started statically.
    # None: every group is in the program and started ones are chosen at run time.
    active: frozenset | None = None


class LossOutput(NamedTuple):
    loss: jax.Array
    metrics: dict = {}
    model_state: Any = None   # None: unchanged
    carry: Any = None         # handed to later groups as ctx.carry[this group's name]
    # The number of things `loss` and `metrics` average over (tokens of a cross-entropy). With it, gradient
    # accumulation weights each micro-batch by it (so the k micro-batches give the gradient of one batch's mean
    # over all its tokens, however unevenly they fall), and the step logs their sum as `tokens`. None: every
    # micro-batch counts the same (a per-example mean of equal-sized micro-batches).
    weight: Any = None


LossFn = Callable[[dict, dict, jax.Array, StepContext], LossOutput]


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    name: str
    loss_fn: LossFn
    tx: optax.GradientTransformation
    schedule: Callable[[Any], Any] | None = None   # for the learning_rate metric
    frozen: Any = None                              # bool tree like params[name]: never updated
    every: int = 1                                  # update this group every `every` steps
    # Before this step the group is neither computed nor updated (its metrics read 0), e.g. a GAN's
    # discriminator. The training loop compiles one program per phase (`make_train_step(active=...)`),
    # so no branch is needed: XLA:CPU runs kernel-gradient convolutions inside a lax.cond branch up to
    # 80x slower than outside one. Without `active`, a lax.cond around the group's value-and-grad decides.
    start_step: int = 0


def split_microbatches(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B/k, ...]. Row j*k+i goes to micro-batch i, so each device keeps its rows."""
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch dim {x.shape[0]} is not divisible by grad_accum_steps={k}")
        return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def merge_microbatches(x: jax.Array) -> jax.Array:
    """Inverse of split_microbatches for one array: [k, B/k, ...] -> [B, ...] in the original row order."""
    return jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _zeros_except_state(shapes, model_state):
    """What a group not yet started returns: zero loss, metrics, grads and carry; the model state unchanged."""
    loss, metrics, _, grads, carry = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return loss, metrics, model_state, grads, carry


def _tree_select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def phase_starts(groups: list[ParamGroup]) -> list[int]:
    """The steps at which the set of started groups changes (always including 0)."""
    return sorted({0} | {g.start_step for g in groups})


def active_groups(groups: list[ParamGroup], step: int) -> frozenset:
    """The names of the groups started by `step`."""
    return frozenset(g.name for g in groups if g.start_step <= step)


def make_train_step(groups: list[ParamGroup], *, grad_accum_steps: int = 1, ema_decay: float = 0.0,
                    active: frozenset | None = None):
    """Builds the pure train step. Wrap it in `jax.jit(..., donate_argnums=0)` with shardings.

    active: the names of the groups this program computes and updates (`active_groups(groups, step)` for
    the phase of the run the program serves); the others are left out at trace time and report zeros.
    None: all groups are traced and each one's `start_step` is checked at run time."""

    def group_grads(state: TrainState, params: dict, model_state, group: ParamGroup, batch, rng, carries):
        frozen = group.frozen if group.frozen is not None else jax.tree.map(lambda _: False, params[group.name])

        def loss_of(own):
            own = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, own, frozen)
            others = {k: jax.lax.stop_gradient(v) for k, v in params.items() if k != group.name}
            return others | {group.name: own}

        def micro(ms, mb, mrng, mcarries):
            def f(own):
                out = group.loss_fn(loss_of(own), mb, mrng, StepContext(state.step, ms, mcarries, active))
                return out.loss, out
            (loss, out), grads = jax.value_and_grad(f, has_aux=True)(params[group.name])
            new_ms = ms if out.model_state is None else out.model_state
            metrics = dict(out.metrics)
            if out.weight is not None:
                metrics["tokens"] = jnp.asarray(out.weight, jnp.float32)
            return loss, metrics, new_ms, grads, jax.lax.stop_gradient(out.carry)

        if grad_accum_steps == 1:
            return micro(model_state, batch, rng, carries)

        # Carries of earlier groups are stacked per micro-batch [k, ...]; each micro-batch reads its own.
        mbs = split_microbatches(batch, grad_accum_steps)
        first = jax.tree.map(lambda x: x[0], (mbs, carries))
        shapes = jax.eval_shape(micro, model_state, first[0], rng, first[1])
        weighted = "tokens" in shapes[1]
        metric_shapes = {k: v for k, v in shapes[1].items() if k != "tokens"}
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[0], metric_shapes, shapes[3]))

        def body(acc_ms, xs):
            i, mb, mcarries = xs
            (acc, tokens), ms = acc_ms
            loss, metrics, ms, grads, out_carry = micro(ms, mb, jax.random.fold_in(rng, i), mcarries)
            if weighted:  # each micro-batch's means times its tokens; divided by all the tokens below
                w = metrics.pop("tokens")
                acc, tokens = jax.tree.map(lambda a, x: a + x * w, acc, (loss, metrics, grads)), tokens + w
            else:
                acc = jax.tree.map(lambda a, x: a + x / grad_accum_steps, acc, (loss, metrics, grads))
            return ((acc, tokens), ms), out_carry

        (((loss, metrics, grads), tokens), model_state), out_carries = jax.lax.scan(
            body, ((zeros, jnp.zeros((), jnp.float32)), model_state), (jnp.arange(grad_accum_steps), mbs, carries))
        if weighted:
            total = jnp.maximum(tokens, 1e-9)
            loss, metrics, grads = jax.tree.map(lambda x: x / total, (loss, metrics, grads))
            metrics["tokens"] = tokens
        return loss, metrics, model_state, grads, out_carries

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        params, opt_state, model_state = dict(state.params), dict(state.opt_state), state.model_state
        metrics, all_ok, carries = {}, jnp.array(True), {}
        for gi, group in enumerate(groups):
            grng = jax.random.fold_in(rng, gi)
            compute = functools.partial(group_grads, state, params, model_state, group, batch, grng, dict(carries))
            started = state.step >= group.start_step
            skip = lambda: _zeros_except_state(jax.eval_shape(compute), model_state)  # noqa: E731
            if active is not None:  # decided when the program was built
                started = jnp.asarray(group.name in active)
                loss, gmetrics, new_ms, grads, carry = compute() if group.name in active else skip()
            elif group.start_step > 0:
                loss, gmetrics, new_ms, grads, carry = jax.lax.cond(started, compute, skip)
            else:
                loss, gmetrics, new_ms, grads, carry = compute()
            if carry is not None:
                carries[group.name] = carry
            grad_norm = optax.tree.norm(grads)
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(gmetrics)
            ok_update = ok & started
            if group.every > 1:
                ok_update = ok_update & (state.step % group.every == 0)
            updates, new_opt = group.tx.update(grads, opt_state[group.name], params[group.name])
            new_params = optax.apply_updates(params[group.name], updates)
            if group.frozen is not None:  # frozen leaves pass through untouched (bit-identical)
                new_params = jax.tree.map(lambda f, old, new: old if f else new,
                                          group.frozen, params[group.name], new_params)
            params[group.name] = _tree_select(ok_update, new_params, params[group.name])
            opt_state[group.name] = _tree_select(ok_update, new_opt, opt_state[group.name])
            model_state = _tree_select(ok, new_ms, model_state)
            all_ok = all_ok & ok
            prefix = "" if gi == 0 else f"{group.name}/"
            metrics[f"{prefix}loss"] = loss
            metrics[f"{prefix}grad_norm"] = grad_norm
            metrics[f"{prefix}param_norm"] = optax.tree.norm(params[group.name])
            if group.schedule is not None:
                metrics[f"{prefix}learning_rate"] = jnp.asarray(group.schedule(state.step), jnp.float32)
            metrics.update({f"{prefix}{k}": v for k, v in gmetrics.items()})

        ema = state.ema_params
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        skipped = (~all_ok).astype(jnp.int32)
        metrics["nonfinite_skipped"] = skipped
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
            ema_params=ema, nonfinite_count=state.nonfinite_count + skipped)
        return new_state, metrics

    return train_step
