"""FID with the Inception network FID is defined with, from weights the user provides (nothing is downloaded).

The weights are pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the TensorFlow FID graph ported to
torch) saved as an .npz with the state dict's own names and torch layouts. Where torch is installed:

    python -c "import numpy as np, torch; np.savez('inception_fid.npz', **{k: v.numpy() for k, v in torch.load('pt_inception-2015-12-05-6726825d.pth').items()})"

    from jvlm.eval.inception_fid import InceptionFID
    fid = InceptionFID("inception_fid.npz").fid(generated_uint8, real_uint8)

Features follow pytorch-fid: [0, 1] pixels resized bilinearly to 299x299, scaled to [-1, 1], the 2048-d
pool3 output; the distance is `generation_metrics.frechet_distance`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jvlm.eval.generation_metrics import frechet_distance
from jvlm.models.inception import FEATURES, InceptionV3

CHECKPOINT = "pt_inception-2015-12-05-6726825d.pth"
CONVERT = ("python -c \"import numpy as np, torch; np.savez('inception_fid.npz', **{k: v.numpy() for k, v in "
           f"torch.load('{CHECKPOINT}').items()}})\"")
HOW = (f"convert pytorch-fid's {CHECKPOINT} (github.com/mseitzer/pytorch-fid/releases) where torch is "
       f"installed: {CONVERT}")

# (Flax collection, variable) -> the torch state-dict suffix of the same array
_TORCH_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


@functools.cache
def _flax_to_torch() -> dict[tuple[str, ...], tuple[str, tuple[int, ...]]]:
    """Every Flax variable path -> (its state-dict name, its torch shape), read off the model itself."""
    variables = jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    out = {}
    for path, leaf in traverse_util.flatten_dict(variables).items():
        collection, *modules, name = path  # e.g. ("params", "Mixed_5b", "branch1x1", "conv", "kernel")
        shape = leaf.shape
        if name == "kernel":  # Flax HWIO <- torch OIHW
            shape = (shape[3], shape[2], shape[0], shape[1])
        out[path] = (".".join(modules + [_TORCH_LEAF[collection, name]]), shape)
    return out


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """The state-dict names pytorch-fid's weights need for the pool3 features, and their torch shapes."""
    return dict(_flax_to_torch().values())


def load_inception(path: str) -> dict:
    """The Flax variables ({"params", "batch_stats"}) from an .npz of pytorch-fid's state dict.

    Extra keys (fc.*, num_batches_tracked) are ignored. Raises FileNotFoundError / ValueError naming the
    problem before anything is compiled. To make the file, where torch is installed:

        python -c "import numpy as np, torch; np.savez('inception_fid.npz', **{k: v.numpy() for k, v in torch.load('pt_inception-2015-12-05-6726825d.pth').items()})"
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights {path!r} do not exist; expected an .npz of pytorch-fid's "
                                f"Inception state dict: {HOW}")
    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not an .npz file ({e}); {HOW}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):  # a single .npy array
        raise ValueError(f"{path} is one array, not an .npz of named weights; {HOW}")
    with data:
        expected = expected_shapes()
        missing = [k for k in expected if k not in data.files]
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} of the {len(expected)} Inception weights, e.g. "
                             f"{missing[:3]}; is it pytorch-fid's FID Inception? {HOW}")
        wrong = [(k, s, data[k].shape) for k, s in expected.items() if data[k].shape != s]
        if wrong:
            k, want, got = wrong[0]
            raise ValueError(f"{path}: {k} has shape {tuple(got)}, expected {want} (torch layout, conv weights "
                             f"[out, in, kh, kw]); {len(wrong)} array(s) have wrong shapes. {HOW}")
        flat = {}
        for fpath, (key, _) in _flax_to_torch().items():
            a = np.asarray(data[key], np.float32)
            flat[fpath] = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a  # OIHW -> HWIO
    return traverse_util.unflatten_dict(flat)


class InceptionFID:
    """pool3 features and FID of image sets, with one jitted forward per input size.

    Images: uint8 [N, H, W, 3] or floats in [0, 1]; batches are padded to `batch_size` so every call has
    one shape."""

    def __init__(self, path: str, batch_size: int = 50):
        self.variables = jax.device_put(load_inception(path))
        self.batch_size = batch_size
        # XLA's default optimization even where XLA_FLAGS lower it (the test suite does, to compile its many
        # small programs faster): this forward is compute-bound, 2.5x slower on CPU at level 0.
        self._forward = jax.jit(InceptionV3().apply, compiler_options={
            "xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False})

    def features(self, images) -> np.ndarray:
        """float32 [N, 2048]."""
        x = _as_unit_float(images)
        out = []
        for i in range(0, len(x), self.batch_size):
            batch = x[i:i + self.batch_size]
            n = len(batch)
            if n < self.batch_size:  # pad with copies: one compiled shape for every batch
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - n, axis=0)])
            out.append(np.asarray(self._forward(self.variables, batch))[:n])
        return np.concatenate(out) if out else np.zeros((0, FEATURES), np.float32)

    def fid(self, gen_images, real_images) -> float:
        """The Fréchet Inception distance between two image sets (at least 2 images each)."""
        return features_fid(self.features(gen_images), self.features(real_images))


def features_fid(a: np.ndarray, b: np.ndarray) -> float:
    """`frechet_distance` of two feature sets, measured in the span of their centred rows when that is smaller
    than the feature width: the distance is rotation-invariant and both Gaussians (and the mean difference)
    lie in that span, so the value is the same, but scipy's sqrtm of a 2048x2048 product takes about a minute
    on 2 cores and of a (Na+Nb+1)-wide one milliseconds."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == b.ndim == 2 and a.shape[1] == b.shape[1] and len(a) + len(b) + 1 < a.shape[1]:
        span = np.concatenate([a - a.mean(0), b - b.mean(0), a.mean(0, keepdims=True) - b.mean(0, keepdims=True)])
        q, _ = np.linalg.qr(span.T)  # [D, Na+Nb+1], orthonormal columns
        a, b = a @ q, b @ q
    return frechet_distance(a, b)


def _as_unit_float(images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] (RGB), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be uint8 or floats in [0, 1], got dtype {x.dtype}")
    if x.size and (x.min() < -1e-3 or x.max() > 1 + 1e-3):  # [-1, 1] or [0, 255] floats would skew FID silently
        raise ValueError(f"float images must be in [0, 1], got values in [{x.min():.3g}, {x.max():.3g}]; "
                         f"map [-1, 1] images with (x + 1) / 2, or pass uint8")
    return x.astype(np.float32)
