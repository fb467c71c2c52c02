"""Frozen image feature networks for perceptual losses, from one of two places:

- `from_run(workdir)`: an image encoder this project trained (a contrastive run's image tower, or a
  VQ-VAE/VQ-GAN encoder), read from the run's config.json and newest checkpoint; the features are
  the outputs of its blocks.
- `from_file(path)`: a plain convolutional network (3x3 convolutions with ReLU, 2x2 max pools) whose
  weights a user stored in an .npz file. VGG16 fits this format, so LPIPS's usual backbone can be
  converted once offline:

      conv{i}/kernel  [3, 3, in, out] (HWIO)     conv{i}/bias [out]     for i = 0, 1, ...
      pool_after      int indices i of convolutions followed by a 2x2 max pool
      taps            int indices i whose ReLU outputs are the features
      mean, std       optional [3]: input normalization of pixels in [0, 1] (ImageNet's for VGG)

  e.g. from torchvision's vgg16().features: kernel = weight.permute(2, 3, 1, 0), taps (1, 3, 6, 9, 12)
  for relu1_2 ... relu5_3, pool_after (1, 3, 6, 9).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np



class FeatureNet(NamedTuple):
    features: Callable[[Any, jax.Array], list]   # (params, images [B, H, W, 3] in [-1, 1]) -> feature maps
    params: Any
    description: str


def from_file(path: str) -> FeatureNet:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"perceptual feature network weights {path!r} do not exist; give an .npz file "
                                f"in the format described in jvlm/models/feature_nets.py")
    with np.load(path) as f:
        data = dict(f)
    n = sum(1 for k in data if re.fullmatch(r"conv\d+/kernel", k))
    missing = [k for k in ("taps", "pool_after", *(f"conv{i}/{w}" for i in range(n) for w in ("kernel", "bias")))
               if k not in data]
    if n == 0 or missing:
        raise ValueError(f"{path} is not a conv feature network file: missing {missing or ['conv0/kernel']}; "
                         f"see the format in jvlm/models/feature_nets.py")
    params = [(jnp.asarray(data[f"conv{i}/kernel"], jnp.float32), jnp.asarray(data[f"conv{i}/bias"], jnp.float32))
              for i in range(n)]
    in_ch = 3
    for i, (k, b) in enumerate(params):
        if k.ndim != 4 or k.shape[2] != in_ch or b.shape != (k.shape[3],):
            raise ValueError(f"{path}: conv{i}/kernel has shape {tuple(k.shape)} and bias {tuple(b.shape)}; expected "
                             f"[kh, kw, {in_ch}, out] and [out] (HWIO kernels, each layer reading the previous one)")
        in_ch = k.shape[3]
    taps, pools = {int(t) for t in data["taps"]}, {int(t) for t in data["pool_after"]}
    if not taps or max(taps) >= n:
        raise ValueError(f"{path}: taps {sorted(taps)} must name convolutions 0..{n - 1}")
    mean = jnp.asarray(data.get("mean", np.zeros(3)), jnp.float32)
    std = jnp.asarray(data.get("std", np.ones(3)), jnp.float32)

    def features(p, images):
        x = ((images + 1.0) / 2.0 - mean) / std
        out = []
        for i in range(max(taps) + 1):
            k, b = p[i]
            x = jax.nn.relu(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + b)
            if i in taps:
                out.append(x)
            if i in pools:
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return out

    return FeatureNet(features, params, f"conv net from {path} ({n} convolutions, taps {sorted(taps)})")


# Which modules' outputs are the features, per task that trains an image encoder.
_RUN_TAPS = {
    "contrastive": (r"img/(stem\d+|patch_embed|encoder/block\d+)", "encode_image"),
    "vqvae": (r"enc/(down\d+_block\d+|mid_block\d)", "encode"),
    "vqgan": (r"enc/(down\d+_block\d+|mid_block\d)", "encode"),
}


def from_run(workdir: str) -> FeatureNet:
    from jvlm.tasks import get_task_class
    from jvlm.train.run_loader import load_run

    run = load_run(workdir, tuple(_RUN_TAPS), "perceptual features need a trained image encoder: give "
                   f"the workdir of a {' / '.join(_RUN_TAPS)} run")
    config = run.config
    pattern, method = _RUN_TAPS[config.task]
    model = get_task_class(config.task)(config, None, None).model
    size = config.data.image_size
    regex = re.compile(pattern)

    def features(p, images):
        if images.shape[1:3] != (size, size):  # the encoder's own training resolution
            images = jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear")
        _, state = model.apply({"params": p}, images, method=method, mutable=["intermediates"],
                               capture_intermediates=lambda m, name: name == "__call__"
                               and bool(regex.fullmatch("/".join(m.path))))
        return [v for v in jax.tree.leaves(state["intermediates"])]

    return FeatureNet(features, run.params["main"], f"{config.task} image encoder of {workdir} (step {run.step})")
