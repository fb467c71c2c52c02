"""Optax optimizers from config: schedules, clipping, weight-decay masks, frozen subsets.

Regex policies over '/'-joined parameter paths (big_vision style):
  optimizer.freeze     = "img/.*"          frozen: no update and *no optimizer state*
  optimizer.wd_exclude = ".*(bias|scale)"  no weight decay
  optimizer.lr_mults   = (("logit_.*", 10.0),)  update x 10 for matching parameters (first match wins)
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import ml_collections
import optax

from jvlm.config import ConfigError


def param_path(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def path_mask(params: Any, pattern: str) -> Any:
    """Bool tree: True where the parameter's path fully matches `pattern` ('' matches nothing)."""
    if not pattern:
        return jax.tree.map(lambda _: False, params)
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.fullmatch(param_path(p))), params)


def lr_multipliers(params: Any, rules) -> Any:
    """Float tree: the multiplier of the first (regex, mult) rule matching each path, else 1."""
    compiled = [(re.compile(pattern), float(mult)) for pattern, mult in rules]

    def mult(path, _):
        name = param_path(path)
        return next((m for r, m in compiled if r.fullmatch(name)), 1.0)

    return jax.tree_util.tree_map_with_path(mult, params)


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    """Multiplies each update by a constant per leaf (per-parameter learning-rate multipliers)."""
    def scale(updates, params=None):
        masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731  (frozen leaves in multi_transform)
        return jax.tree.map(lambda u, m: u if masked(u) else u * m, updates, multipliers, is_leaf=masked)

    return optax.stateless(scale)


def make_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> Callable[[Any], Any]:
    lr = opt.learning_rate
    warmup = opt.get("warmup_steps", 0)
    kind = opt.get("schedule", "constant")
    end = lr * opt.get("end_lr_fraction", 0.0)
    decay_steps = max(total_steps - warmup, 1)
    if kind == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr)
    elif kind == "linear":
        main = optax.linear_schedule(lr, end, decay_steps)
    elif kind == "rsqrt":
        main = lambda s: lr * jax.lax.rsqrt(1.0 + s / max(warmup, 1))  # noqa: E731
    else:
        main = optax.constant_schedule(lr)
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return main


def make_optimizer(opt: ml_collections.ConfigDict, params: Any, total_steps: int):
    """Returns (tx, schedule, frozen_mask). `params` may be abstract (shapes only)."""
    schedule = make_schedule(opt, total_steps)
    name = opt.name
    wd = opt.get("weight_decay", 0.0)
    decay_mask = jax.tree.map(lambda m: not m, path_mask(params, opt.get("wd_exclude", "")))
    if name == "adamw":
        core = optax.adamw(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8),
                           weight_decay=wd, mask=decay_mask)
    elif name == "adam":
        core = optax.adam(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8))
    elif name == "lion":
        core = optax.lion(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.99), weight_decay=wd, mask=decay_mask)
    elif name == "adafactor":
        core = optax.adafactor(schedule, weight_decay_rate=wd or None)
    elif name == "sgd":
        core = optax.sgd(schedule, momentum=opt.get("momentum", 0.9) or None)
    else:
        raise ConfigError(f"config.optimizer.name={name!r} is unknown.")
    chain = []
    if opt.get("grad_clip_norm", 0.0):
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    chain.append(core)
    rules = tuple(opt.get("lr_mults", ()))
    if rules:
        mults = lr_multipliers(params, rules)
        if all(m == 1.0 for m in jax.tree.leaves(mults)):
            raise ConfigError(f"config.optimizer.lr_mults={rules!r} matches no parameter; paths look like "
                              f"{', '.join(list(_paths(params))[:4])}.")
        chain.append(scale_by_tree(mults))
    tx = optax.chain(*chain)

    frozen = path_mask(params, opt.get("freeze", ""))
    num_frozen = sum(jax.tree.leaves(frozen))
    if opt.get("freeze", "") and num_frozen == 0:
        raise ConfigError(
            f"config.optimizer.freeze={opt.freeze!r} matches no parameter; paths look like "
            f"{', '.join(list(_paths(params))[:4])}.")
    if num_frozen:
        # Frozen leaves get optax.set_to_zero, which keeps no state for them (masked out).
        labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule, frozen


def _paths(params):
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        yield param_path(path)
