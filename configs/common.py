"""The run settings every experiment config shares (the spine's keys), with their defaults explained once.

An experiment's get_config starts from `run_config(task, ...)` and adds its own optimizer, data,
model and eval sections.
"""

from ml_collections import ConfigDict


def run_config(task: str, *, total_steps: int, batch_size: int, log_every: int, eval_every: int,
               checkpoint_every: int) -> ConfigDict:
    c = ConfigDict()
    c.task = task
    c.total_steps = total_steps
    c.batch_size = batch_size    # global, over all devices and processes
    c.seed = 0
    c.log_every = log_every
    c.eval_every = eval_every
    c.checkpoint_every = checkpoint_every
    c.keep_checkpoints = 3
    c.grad_accum_steps = 1
    c.ema_decay = 0.0            # > 0 keeps an EMA of the parameters, used for evaluation
    c.max_nonfinite_steps = 20   # skipped (non-finite) steps tolerated before training stops
    c.checkpoint_async = True
    c.progress = True
    c.profile = ConfigDict(dict(start_step=-1, num_steps=3))  # jax.profiler trace into WORKDIR/profile

    # data x fsdp x model devices; fsdp>1 shards parameters and optimizer state (ZeRO-3), model>1 is
    # tensor parallelism. dcn: sizes across slices (multi-slice TPU / hosts on a slower network); the
    # other sizes are then per slice. sharding_rules: (logical axis, mesh axes) overrides of
    # jvlm.sharding.LOGICAL_RULES, e.g. (("length", "model"),) for sequence parallelism.
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, model=1, dcn=ConfigDict(dict(data=1, fsdp=1, model=1))))
    c.sharding_rules = ()
    # Used only when the workdir has no checkpoint yet: copy params matching `params` ('group/path' regex).
    c.init_from = ConfigDict(dict(checkpoint="", params=".*", required=False))
    return c


def tiny_run(c: ConfigDict) -> None:
    """The run settings of every `:tiny` variant: 20 steps of 16 that log, evaluate and checkpoint often
    enough for tests to see each of them."""
    c.total_steps = 20
    c.batch_size = 16
    c.log_every = 2
    c.eval_every = 10
    c.checkpoint_every = 5
    c.optimizer.warmup_steps = 2
