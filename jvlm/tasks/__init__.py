"""Task registry: `config.task` names the module that builds a family's model, losses and evaluators."""

from __future__ import annotations

import importlib

TASKS = {
    "contrastive": "jvlm.tasks.contrastive:ContrastiveTask",
    "diffusion": "jvlm.tasks.diffusion:DiffusionTask",
    "dvae": "jvlm.tasks.dvae:DVAETask",
    "lm": "jvlm.tasks.lm:LMTask",
    "vae": "jvlm.tasks.vae:VAETask",
    "vqvae": "jvlm.tasks.vqvae:VQVAETask",
    "vqgan": "jvlm.tasks.vqgan:VQGANTask",
}


def get_task_class(name: str):
    from jvlm.config import ConfigError

    if name not in TASKS:
        raise ConfigError(f"config.task={name!r} is unknown; registered tasks: {', '.join(sorted(TASKS))}.")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
