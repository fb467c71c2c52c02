"""FID Inception from a user's weights file: pytorch-fid's state-dict names and shapes, features and FID on a
file of random weights the test writes, and the errors for a missing file, a missing key and a wrong shape."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_inception_weights

from jvlm.eval.generation_metrics import frechet_distance, real_single_objects
from jvlm.eval.inception_fid import InceptionFID, expected_shapes, features_fid
from jvlm.models.inception import BasicConv2d, _avg_pool_3x3


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception_fid.npz"
    # extra keys a real checkpoint carries are ignored
    np.savez(path, **random_inception_weights(), **{"fc.weight": np.zeros((1008, 2048), np.float32),
                                                    "Conv2d_1a_3x3.bn.num_batches_tracked": np.int64(0)})
    return path


@pytest.fixture(scope="module")
def inception(weights_file):
    """The network, 8 noise and 8 single-object images (32x32 uint8) and their features: one compile."""
    net = InceptionFID(str(weights_file), batch_size=4)
    noise = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    shapes, _ = real_single_objects(8, 32, seed=0)
    feats = net.features(np.concatenate([noise, shapes]))
    return net, noise, shapes, feats


def test_state_dict_names_and_shapes_are_pytorch_fids():
    shapes = expected_shapes()
    assert len(shapes) == 94 * 5  # 94 BasicConv2d: conv weight + 4 batch-norm arrays each
    for key, shape in {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_1a_3x3.bn.running_var": (32,),
                       "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
                       "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
                       "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
                       "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
                       "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
                       "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
                       "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1), "Mixed_7c.branch_pool.bn.bias": (192,)
                       }.items():
        assert shapes[key] == shape, key
    assert not any(k.startswith(("fc.", "AuxLogits.")) for k in shapes)
    # Inception-v3's trainable parameters without the classifier and the aux head: 21,785,568
    learned = [k for k in shapes if k.endswith(("conv.weight", "bn.weight", "bn.bias"))]
    assert sum(int(np.prod(shapes[k])) for k in learned) == 21_785_568


def test_features_are_2048_wide_and_fid_separates_image_sets(inception):
    _, _, _, feats = inception
    assert feats.shape == (16, 2048) and np.isfinite(feats).all() and feats.std() > 0
    noise, shapes = feats[:8], feats[8:]
    assert features_fid(noise, noise) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(noise, rowvar=False)))
    within = max(features_fid(noise[:4], noise[4:]), features_fid(shapes[:4], shapes[4:]))
    assert 0 < within < features_fid(noise[:4], shapes[:4])


def test_fid_takes_uint8_or_unit_floats_and_refuses_other_ranges(inception):
    net, noise, shapes, feats = inception
    assert net.fid(shapes[:4] / 255.0, noise[:4]) == pytest.approx(features_fid(feats[8:12], feats[:4]), rel=1e-4)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        net.features(shapes.astype(np.float32))
    with pytest.raises(ValueError, match="RGB"):
        net.features(shapes[..., :1])


def test_features_fid_is_frechet_distance_in_fewer_dimensions():
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy: the singular covariances of fewer samples than dimensions
        for n_a, n_b in ((10, 12), (3, 30)):
            a = rng.normal(size=(n_a, 64)) @ rng.normal(size=(64, 64))
            b = rng.normal(size=(n_b, 64)) + 1
            assert features_fid(a, b) == pytest.approx(frechet_distance(a, b), rel=1e-6)


def test_a_loaded_layer_computes_torchs_conv_bn_relu(inception, weights_file):
    # Mixed_6b.branch7x7_2: a 1x7 kernel with padding (0, 3), so a swapped H/W or a wrong transpose shows
    net = inception[0]
    name, t = "Mixed_6b.branch7x7_2", np.load(weights_file)
    x = np.random.default_rng(2).normal(size=(2, 5, 9, 128)).astype(np.float32)
    ref = jax.lax.conv_general_dilated(x.transpose(0, 3, 1, 2), t[f"{name}.conv.weight"], (1, 1), ((0, 0), (3, 3)),
                                       dimension_numbers=("NCHW", "OIHW", "NCHW")).transpose(0, 2, 3, 1)
    ref = (ref - t[f"{name}.bn.running_mean"]) / np.sqrt(t[f"{name}.bn.running_var"] + 1e-3)
    ref = np.maximum(ref * t[f"{name}.bn.weight"] + t[f"{name}.bn.bias"], 0)
    layer = {c: net.variables[c]["Mixed_6b"]["branch7x7_2"] for c in ("params", "batch_stats")}
    out = BasicConv2d(128, (1, 7), padding=(0, 3)).apply(layer, x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_average_pools_leave_the_padding_out():
    # FID's pools average only real pixels (count_include_pad=False): ones stay ones at the border
    np.testing.assert_allclose(_avg_pool_3x3(jnp.ones((1, 4, 4, 2))), 1.0)


def test_errors_name_the_file_key_and_fix(weights_file, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.npz.*do not exist.*np\.savez"):
        InceptionFID(str(tmp_path / "nope.npz"))
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="not an .npz file"):
        InceptionFID(str(tmp_path / "text.npz"))
    weights = random_inception_weights()
    del weights["Mixed_6c.branch7x7dbl_3.bn.running_mean"]
    np.savez(tmp_path / "missing.npz", **weights)
    key = r"Mixed_6c\.branch7x7dbl_3\.bn\.running_mean"
    with pytest.raises(ValueError, match=rf"lacks 1 of the 470.*{key}.*torch\.load"):
        InceptionFID(str(tmp_path / "missing.npz"))
    weights["Mixed_6c.branch7x7dbl_3.bn.running_mean"] = np.zeros(160, np.float32)
    weights["Mixed_5d.branch5x5_2.conv.weight"] = np.zeros((5, 5, 48, 64), np.float32)  # HWIO, not torch's OIHW
    np.savez(tmp_path / "shape.npz", **weights)
    with pytest.raises(ValueError, match=r"Mixed_5d\.branch5x5_2\.conv\.weight has shape \(5, 5, 48, 64\), "
                                         r"expected \(64, 48, 5, 5\)"):
        InceptionFID(str(tmp_path / "shape.npz"))
