"""Experiment configs: load `configs/X.py[:arg]`, apply `--config.k=v` overrides, validate.

Every experiment config is an `ml_collections.ConfigDict` with the same common top-level
names (COMMON_KEYS). Errors are raised as `ConfigError` before anything is compiled, and
always name the offending key and how to fix it.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import re
from typing import Any, Sequence

import ml_collections

from jvlm.errors import ConfigError  # raised here, and importable from here as it always was

COMMON_KEYS = {
    "task": str,
    "total_steps": int,
    "batch_size": int,
    "seed": int,
    "log_every": int,
    "eval_every": int,
    "checkpoint_every": int,
    "keep_checkpoints": int,
    "mesh": ml_collections.ConfigDict,
    "optimizer": ml_collections.ConfigDict,
    "data": ml_collections.ConfigDict,
    "model": ml_collections.ConfigDict,
}

# Keys that may differ between a checkpoint's config and the config of a resumed run.
RESUMABLE_DIFFERENCES = (
    "total_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "profile", "progress", "max_nonfinite_steps", "init_from",  # init_from only matters for a fresh start
    "mesh", "sharding_rules",  # checkpoints restore onto any mesh (a bigger or smaller pod slice)
)

# The data keys of the user-data sources (jvlm.data.sources), by source: configs whose task reads no user
# data lack them, and an override of one gets a hint saying so instead of a bare "unknown key".
USER_DATA_KEYS = {"path": "folder", "tfds_name": "tfds", "tfds_split": "tfds", "tfds_data_dir": "tfds",
                  "caption_key": "tfds"}

OPTIMIZERS = ("adamw", "adam", "sgd", "lion", "adafactor")
SCHEDULES = ("cosine", "constant", "linear", "rsqrt")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "nothing_saveable")


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py` or `path.py:arg`, then applies `config.a.b=value` overrides."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no config file at {path!r}. Pass a path like configs/siglip_shapes.py[:tiny].")
    module_spec = importlib.util.spec_from_file_location(f"_jvlm_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(); every config file must.")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}:get_config() returned {type(config).__name__}, expected ml_collections.ConfigDict.")
    for item in overrides:
        apply_override(config, item)
    return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Applies one `config.a.b=value` (or `a.b=value`) override, keeping the field's type."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} has no '='; write it as --config.KEY=VALUE.")
    key = key.removeprefix("--").removeprefix("config.")
    parent, name = _resolve_parent(config, key)
    old = parent[name]
    parent[name] = _coerce(key, raw, old)


def _resolve_parent(config, key):
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "the top level"
            choices = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, choices, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            if parts[:i] == ["data"] and part in USER_DATA_KEYS:
                hint = (f" data.{part} belongs to data.source={USER_DATA_KEYS[part]!r} (user data), which "
                        f"config.task={config.get('task')!r} does not read yet: it trains on its built-in data only.")
            raise ConfigError(
                f"unknown config key {key!r}: {where} has no {part!r}.{hint} "
                f"Valid keys there: {', '.join(sorted(choices))}.")
        if i < len(parts) - 1:
            node = node[part]
    return node, parts[-1]


def _coerce(key: str, raw: str, old: Any) -> Any:
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a group; override one of its fields, e.g. --config.{key}.<field>=...")
    if isinstance(old, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key {key!r} is a bool; got {raw!r}. Use true or false.")
    if isinstance(old, str) or old is None:
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ConfigError(f"config key {key!r} expects {type(old).__name__}; could not parse {raw!r}.") from None
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(old)(value)
    if type(value) is not type(old):
        raise ConfigError(
            f"config key {key!r} expects {type(old).__name__} (currently {old!r}); got {raw!r} "
            f"({type(value).__name__}).")
    return value


def validate_common(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks the settings shared by every experiment. Raises ConfigError."""
    for key, typ in COMMON_KEYS.items():
        if key not in config:
            raise ConfigError(f"config has no {key!r}; every experiment config must set it (see configs/siglip_shapes.py).")
        if not isinstance(config[key], typ):
            raise ConfigError(f"config.{key} must be {typ.__name__}, got {type(config[key]).__name__} ({config[key]!r}).")
    for key in ("total_steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if config[key] < 1:
            raise ConfigError(f"config.{key} must be >= 1, got {config[key]}.")
    accum = config.get("grad_accum_steps", 1)
    if accum < 1:
        raise ConfigError(f"config.grad_accum_steps must be >= 1, got {accum}.")
    from jvlm import sharding  # local: config must stay importable without touching devices
    shape = sharding.resolve_mesh_shape(config.mesh, num_devices)
    dp = sharding.data_parallel_size(shape)
    if config.batch_size % (dp * accum):
        raise ConfigError(
            f"config.batch_size={config.batch_size} is not divisible by data-parallel size {dp} "
            f"(mesh {dict(shape)}) x grad_accum_steps {accum} = {dp * accum}. "
            f"Use a batch_size that is a multiple of {dp * accum}.")
    opt = config.optimizer
    check_choice("optimizer.name", opt.name, OPTIMIZERS)
    check_choice("optimizer.schedule", opt.get("schedule", "constant"), SCHEDULES)
    if opt.get("warmup_steps", 0) > config.total_steps:
        raise ConfigError(
            f"config.optimizer.warmup_steps={opt.warmup_steps} exceeds total_steps={config.total_steps}; lower it.")
    if opt.learning_rate <= 0:
        raise ConfigError(f"config.optimizer.learning_rate must be > 0, got {opt.learning_rate}.")
    for pattern_key in ("freeze",):
        pattern = opt.get(pattern_key, "")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"config.optimizer.{pattern_key}={pattern!r} is not a valid regex: {e}.") from None
    init = config.get("init_from", None)
    if init is not None and init.get("required", False) and not init.checkpoint:
        raise ConfigError("this variant starts from a pretrained run: set --config.init_from.checkpoint=WORKDIR "
                          "(a run's workdir or its checkpoints/ folder).")
    for rule in opt.get("lr_mults", ()):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[1], (int, float))):
            raise ConfigError(f"config.optimizer.lr_mults entries are (regex, multiplier) pairs; got {rule!r}.")
        try:
            re.compile(rule[0])
        except re.error as e:
            raise ConfigError(f"config.optimizer.lr_mults: {rule[0]!r} is not a valid regex: {e}.") from None
    check_choice("model.dtype", config.model.get("dtype", "float32"), DTYPES)
    check_choice("model.remat", config.model.get("remat", "none"), REMAT_POLICIES)


def load_run_config(workdir: str, tasks: Sequence[str], hint: str) -> ml_collections.ConfigDict:
    """The saved config of a run (WORKDIR/config.json), which must be one of `tasks`; `hint` tells the user
    which run to give instead."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir!r} is not a jvlm run directory (no config.json); {hint}")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.task not in tasks:
        raise ValueError(f"{workdir} holds a {config.task!r} run; {hint}")
    return config


def check_data_source(config: ml_collections.ConfigDict, supported: Sequence[str], reader: str) -> None:
    """Refuses a config.data.source that `reader` (e.g. "the vqgan task") does not read: one it ignored
    would train on other data without a word."""
    source = config.data.get("source", "shapes")
    if source in supported:
        return
    message = f"config.data.source={source!r}: {reader} reads only data.source={' or '.join(map(repr, supported))}"
    if tuple(supported) == ("shapes",):  # the families that do not read user data yet
        message += (" for now; so far only the contrastive task reads user data ('folder', 'tfds'): drop the "
                    "override, or train a contrastive config (configs/siglip_shapes.py) on your data")
    raise ConfigError(message + ".")


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r} is not one of {', '.join(map(repr, choices))}.")


def to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def config_differences(saved: dict, current: dict, ignore: Sequence[str] = RESUMABLE_DIFFERENCES) -> list[str]:
    """Lists `key: saved -> current` for every leaf that differs, except keys in `ignore`."""
    out = []

    def walk(a, b, prefix):
        keys = sorted(set(a) | set(b)) if isinstance(a, dict) and isinstance(b, dict) else None
        if keys is None:
            if a != b:
                out.append(f"{prefix}: {a!r} -> {b!r}")
            return
        for k in keys:
            path = f"{prefix}.{k}" if prefix else k
            if path in ignore:
                continue
            walk(a.get(k, "<absent>"), b.get(k, "<absent>"), path)

    walk(saved, current, "")
    return out
