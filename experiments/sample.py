"""Generate images with a trained diffusion run and write them as one PNG grid (a row per prompt).

    python -m experiments.sample --config configs/ldm_shapes.py --workdir runs/ldm_shapes \
        --prompt "a large red circle" --prompt "a small blue star" --steps 50 --guidance 3 [--num 8]
        [--sampler ddim|dpm++2m|ddpm] [--eta 0] [--negative_prompt "..."] [--seed 0] [--out FILE]

The model is the run's own (WORKDIR/config.json, its newest checkpoint, EMA parameters when kept); the
whole sampling loop is one compiled program. Prints one JSON line: the file, compile time, and sampling
time per image (after compilation). An existing file is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import numpy as np

from experiments.common import parse


def _flags(p):
    p.add_argument("--workdir", required=True, help="the diffusion run's workdir")
    p.add_argument("--prompt", action="append", default=[], help="repeatable; ignored by unconditional models")
    p.add_argument("--negative_prompt", default=None, help="guide away from this instead of the empty prompt")
    p.add_argument("--num", type=int, default=8, help="images per prompt")
    p.add_argument("--steps", type=int, default=None, help="default: the run's sample.steps")
    p.add_argument("--guidance", type=float, default=None, help="default: the run's sample.guidance")
    p.add_argument("--guidance_rescale", type=float, default=None,
                   help="φ in [0, 1]: rescale the guided output to the conditional one's std (default: the run's)")
    p.add_argument("--sampler", default=None, help="ddim | dpm++2m | ddpm (default: the run's)")
    p.add_argument("--eta", type=float, default=None, help="DDIM's η (0: deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: WORKDIR/samples/<prompt>_<sampler><steps>_g<guidance>.png")


def main(argv=None) -> None:
    args, _ = parse(__doc__, _flags, argv)
    import jax

    from jvlm.config import load_run_config
    from jvlm.eval.image_metrics import save_grid
    from jvlm.objectives.diffusion_sampler import check_request
    from jvlm.tasks.diffusion import DiffusionTask, sampling_settings
    from jvlm.train.run_loader import load_weights

    try:
        config = load_run_config(args.workdir, ("diffusion",), "give the workdir of a diffusion run")
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    settings = sampling_settings(config.sample, args.sampler, args.steps, args.guidance, args.eta, args.guidance_rescale)
    conditional = config.conditioning.kind != "none"
    prompts = args.prompt or ([""] if not conditional else [])
    if not prompts:
        sys.exit("error: this model is conditional: give at least one --prompt")
    if args.num < 1:
        sys.exit(f"error: --num must be at least 1, got {args.num}")
    try:  # every check before anything compiles
        check_request(config.diffusion.num_train_steps, settings.sampler, settings.steps, settings.guidance,
                      conditional, settings.guidance_rescale)
        if settings.guidance != 1.0 and config.conditioning.dropout == 0.0:
            raise ValueError(f"guidance={settings.guidance} needs a model trained with conditioning dropout; this "
                             f"run's conditioning.dropout is 0: use --guidance 1")
        config.eval.judge = ""  # sampling needs no judge
        task = DiffusionTask(config, args.workdir, None)
        task.setup()
        task.encode_prompts(prompts + ([args.negative_prompt] if args.negative_prompt is not None else []))
    except ValueError as e:
        sys.exit(f"error: {e}")
    name = f"{_slug(prompts[0])}_{settings.sampler}{settings.steps}_g{settings.guidance:g}.png"
    out = args.out or os.path.join(args.workdir, "samples", name)
    if os.path.exists(out):
        sys.exit(f"error: {out} exists; remove it or pass --out (samples are never overwritten)")
    weights = load_weights(args.workdir, ema=True)
    step, params = weights.step, weights.params
    rng = jax.random.key(args.seed)
    kw = dict(negative_prompt=args.negative_prompt, **settings._asdict())
    all_prompts = [p for p in prompts for _ in range(args.num)]
    t0 = time.perf_counter()
    task.generate(params["main"], all_prompts[:1] * len(all_prompts), rng, **kw)  # compile (same shapes)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = task.generate(params["main"], all_prompts, rng, **kw)
    sample_s = time.perf_counter() - t0
    save_grid(out, [images[i * args.num:(i + 1) * args.num] for i in range(len(prompts))])
    print(json.dumps({"out": out, "checkpoint_step": step, **settings._asdict(), "images": len(images),
                      "compile_s": round(compile_s, 2), "sample_s": round(sample_s, 3),
                      "s_per_image": round(sample_s / len(images), 4), "backend": jax.default_backend()}))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "sample"


if __name__ == "__main__":
    from jvlm import cpu_flags
    from jvlm.host_malloc import relaunch_with_hugepages

    relaunch_with_hugepages()  # huge pages for XLA:CPU's per-step buffers; see jvlm/host_malloc.py
    cpu_flags.apply()  # before JAX starts its CPU backend; see jvlm/cpu_flags.py
    main()
