"""Perceptual feature networks: from an .npz file a user writes, and from a trained jvlm run."""

import jax.numpy as jnp
import numpy as np
import pytest

from jvlm.models import feature_nets


def write_conv_net(path, channels=(3, 4, 6), seed=0):
    """A small VGG-format file: 3x3 convs, a pool after conv0, features from both convs."""
    rng = np.random.default_rng(seed)
    arrays = {"taps": np.array([0, 1]), "pool_after": np.array([0]),
              "mean": np.array([0.5, 0.5, 0.5]), "std": np.array([0.25, 0.25, 0.25])}
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        arrays[f"conv{i}/kernel"] = rng.normal(0, 0.3, (3, 3, cin, cout)).astype(np.float32)
        arrays[f"conv{i}/bias"] = np.zeros(cout, np.float32)
    np.savez(path, **arrays)
    return arrays


def test_conv_net_from_file_computes_its_definition(tmp_path):
    arrays = write_conv_net(tmp_path / "net.npz")
    net = feature_nets.from_file(str(tmp_path / "net.npz"))
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    f0, f1 = net.features(net.params, x)
    assert f0.shape == (2, 8, 8, 4) and f1.shape == (2, 4, 4, 6)
    # conv0 at an interior pixel, by hand: normalized input patch . kernel, then ReLU
    xn = ((np.asarray(x) + 1) / 2 - 0.5) / 0.25
    want = np.maximum(np.einsum("hwc,hwco->o", xn[0, 2:5, 3:6], arrays["conv0/kernel"]), 0)
    np.testing.assert_allclose(np.asarray(f0[0, 3, 4]), want, rtol=1e-4, atol=1e-5)


def test_bad_feature_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        feature_nets.from_file(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "empty.npz", taps=np.array([0]))
    with pytest.raises(ValueError, match="not a conv feature network file"):
        feature_nets.from_file(str(tmp_path / "empty.npz"))
    arrays = write_conv_net(tmp_path / "net.npz")
    arrays["conv1/kernel"] = arrays["conv1/kernel"][:, :, :3]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=r"conv1/kernel has shape \(3, 3, 3, 6\).*expected \[kh, kw, 4, out\]"):
        feature_nets.from_file(str(tmp_path / "bad.npz"))


def test_features_from_a_trained_contrastive_run(reference_run, tmp_path):
    workdir, _ = reference_run
    net = feature_nets.from_run(str(workdir))
    x = jnp.zeros((2, 64, 64, 3))  # resized to the run's own image size
    feats = net.features(net.params, x)
    assert len(feats) >= 2 and all(f.shape[0] == 2 for f in feats)
    assert "contrastive image encoder" in net.description
    with pytest.raises(FileNotFoundError, match="not a jvlm run directory"):
        feature_nets.from_run(str(tmp_path))
