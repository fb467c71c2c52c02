"""DDPM in pixel space on the embedded shapes dataset: 32x32 images, a text-conditional UNet (captions
through a Transformer text encoder trained with it, cross-attention at 8x8), DDIM sampling with
classifier-free guidance.

    python -m experiments.train --config configs/ddpm_shapes.py --workdir runs/ddpm_shapes
    python -m experiments.sample --config configs/ddpm_shapes.py --workdir runs/ddpm_shapes \
        --prompt "a large red circle" --steps 50 --guidance 3

Variants (comma-separated, they compose): "" (default); "class" (class-conditional on single objects);
"uncond" (unconditional); "dit" (a DiT denoiser instead of the UNet); "tiny" (seconds, for tests).
`--config.eval.judge=runs/siglip_judge32` (a `configs/siglip_shapes.py:judge32` run) adds prompt accuracy
and the Fréchet distance in the judge's embedding space.
"""

from ml_collections import ConfigDict

from configs.diffusion_common import apply_common_variant, diffusion_config


def get_config(arg: str = "") -> ConfigDict:
    c = diffusion_config(total_steps=2000, batch_size=64, learning_rate=1e-3)
    for variant in filter(None, arg.split(",")):
        if not apply_common_variant(c, variant):
            raise ValueError(f"unknown variant {variant!r} for ddpm_shapes; use '', 'class', 'uncond', 'dit', 'tiny' "
                             f"(comma-separated to combine)")
    return c
