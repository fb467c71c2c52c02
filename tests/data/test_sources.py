"""Tests for jvlm.data.sources and jvlm.data.tfds_source (no network, no TensorFlow needed)."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jvlm.data import decoding, sources, tfds_source
from jvlm.data.sources import (
    SKIP_REASONS,
    SOURCES,
    ImageTextFolderSource,
    make_source,
)
from jvlm.data.tfds_source import TfdsNotPreparedError, TfdsSource

S = 16  # output image size used throughout


def _zero_skips(**nonzero):
    out = {r: 0 for r in SKIP_REASONS}
    out.update(nonzero)
    return out


def _solid(color, size=(20, 20), mode="RGB"):
    return Image.new(mode, size, color)


def _bands(width=60, height=20):
    """Three vertical bands: red | green | blue (equal widths)."""
    arr = np.zeros((height, width, 3), np.uint8)
    w = width // 3
    arr[:, :w] = (255, 0, 0)
    arr[:, w : 2 * w] = (0, 255, 0)
    arr[:, 2 * w :] = (0, 0, 255)
    return Image.fromarray(arr)


def _write_pair(folder, stem, image, caption, ext=".png", **save_kw):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, stem + ext)
    image.save(path, **save_kw)
    if caption is not None:
        with open(os.path.join(folder, stem + ".txt"), "w", encoding="utf-8") as f:
            f.write(caption)
    return path


def _close(a, color, tol=3):
    return np.all(np.abs(a.astype(int) - np.asarray(color, int)) <= tol)


# ---------------------------------------------------------------------------
# load_image / preprocessing
# ---------------------------------------------------------------------------


def test_center_crop_keeps_middle_of_wide_and_tall_images():
    wide = sources.load_image(np.asarray(_bands(60, 20)), S)
    assert wide.shape == (S, S, 3) and wide.dtype == np.uint8
    # The centre square of a red|green|blue image is the green band.
    assert _close(wide[:, 2 : S - 2], (0, 255, 0), tol=8), wide[S // 2]
    tall = sources.load_image(np.asarray(_bands(60, 20).rotate(90, expand=True)), S)
    assert _close(tall[2 : S - 2, :], (0, 255, 0), tol=8)


def test_shorter_side_resize_upscales_small_images():
    # 4x8 checker (left half black, right half white) -> crop centre 4x4 -> 16x16.
    arr = np.zeros((4, 8), np.uint8)
    arr[:, 4:] = 255
    out = sources.load_image(arr, S)
    assert out.shape == (S, S, 3)
    assert _close(out[:, : S // 2 - 3], 0, tol=10) and _close(out[:, S // 2 + 3 :], 255, tol=10)


def test_mode_conversions():
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[:, :10] = (0, 0, 255, 255)  # left: opaque blue; right: fully transparent
    out = sources.load_image(rgba, S)
    assert _close(out[:, :4], (0, 0, 255), tol=6)
    assert _close(out[:, -4:], (255, 255, 255), tol=6)  # transparency -> white

    pal = _solid((10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert _close(sources.load_image(buf.getvalue(), S), (10, 200, 30), tol=2)

    # Palette PNG with a transparent colour: transparent pixels become white.
    pal_t = np.zeros((8, 16), np.uint8)
    pal_t[:, 8:] = 1
    pimg = Image.fromarray(pal_t, "P")
    pimg.putpalette([200, 0, 0, 0, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    pimg.save(buf, format="PNG", transparency=1)
    out = sources.load_image(buf.getvalue(), S)
    assert _close(out[:, :5], (200, 0, 0), tol=4) and _close(out[:, -5:], (255, 255, 255), tol=4)

    # 16-bit grayscale is scaled to 8 bits (not clipped).
    gray16 = Image.fromarray(np.full((8, 8), 32896, np.uint16))
    buf = io.BytesIO()
    gray16.save(buf, format="PNG")
    assert _close(sources.load_image(buf.getvalue(), S), 128, tol=1)
    assert _close(sources.load_image(np.full((4, 4), 32896, np.uint16), S), 128, tol=1)

    assert _close(sources.load_image(np.full((5, 5, 1), 0.5, np.float32), S), 128, tol=1)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # stored: left red, right blue
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, format="JPEG", quality=95, exif=exif)
    out = sources.load_image(path, S)
    # Displayed upright the image is tall: red on top, blue at the bottom.
    assert _close(out[1, 2 : S - 2], (255, 0, 0), tol=40) and _close(out[-2, 2 : S - 2], (0, 0, 255), tol=40)


def test_large_jpeg_reduced_decode_matches_full_decode(tmp_path):
    yy, xx = np.mgrid[0:300, 0:500]
    arr = np.stack([xx * 255 // 499, yy * 255 // 299, (xx + yy) * 255 // 798], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(arr).save(path, format="JPEG", quality=95)
    fast = sources.load_image(path, 32).astype(int)  # uses PIL draft (decodes at 1/8 scale)
    with Image.open(path) as img:
        full = decoding._resize_center_crop(img.convert("RGB"), 32).astype(int)
    assert fast.shape == full.shape == (32, 32, 3)
    assert np.abs(fast - full).mean() < 3.0
    assert not np.array_equal(fast, full)  # the reduced-resolution decode was used


# ---------------------------------------------------------------------------
# ImageTextFolderSource: folder of images + .txt
# ---------------------------------------------------------------------------


def test_folder_source_reads_modes_sizes_and_strips_captions(tmp_path):
    root = tmp_path / "data"
    _write_pair(root, "a_rgba", _solid((0, 0, 255, 255), (40, 30), "RGBA"), "  blue square \n")
    _write_pair(root, "b_gray", _solid(100, (20, 50), "L"), "gray\n", ext=".jpg", quality=95)
    _write_pair(root, "c_bands", _bands(60, 20), "bands", ext=".bmp")
    _write_pair(root / "sub", "d_small", _solid((250, 5, 5), (8, 8)), "red", ext=".WEBP", lossless=True)
    (root / "notes.txt").write_text("a caption file with no image is ignored")

    src = ImageTextFolderSource(str(root), image_size=S)
    assert len(src) == 4
    assert src.skipped == _zero_skips()
    items = [src[i] for i in range(len(src))]
    for it in items:
        assert set(it) == {"image", "caption"}
        assert it["image"].shape == (S, S, 3) and it["image"].dtype == np.uint8
        assert it["image"].flags.writeable
        assert isinstance(it["caption"], str)
    # Sorted by relative path; captions stripped.
    assert [it["caption"] for it in items] == ["blue square", "gray", "bands", "red"]
    assert _close(items[0]["image"], (0, 0, 255), tol=2)
    assert _close(items[1]["image"], (100, 100, 100), tol=3)
    assert _close(items[2]["image"][:, 2 : S - 2], (0, 255, 0), tol=8)
    assert _close(items[3]["image"], (250, 5, 5), tol=2)
    assert repr(src).startswith("ImageTextFolderSource(") and "num_records=4" in repr(src)
    # Negative indices and out-of-range indices behave like a sequence.
    assert src[-1]["caption"] == "red"
    with pytest.raises(IndexError):
        src[4]


def test_folder_source_drops_and_counts_bad_records(tmp_path, caplog):
    root = tmp_path / "data"
    _write_pair(root, "01_ok", _solid((255, 0, 0)), "first")
    _write_pair(root, "02_nocaption", _solid((0, 255, 0)), None)
    _write_pair(root, "03_empty", _solid((0, 0, 255)), "   \n\t")
    _write_pair(root, "04_badutf8", _solid((0, 0, 0)), None)
    (root / "04_badutf8.txt").write_bytes(b"\xff\xfe\xfa not utf-8 \xc3")
    _write_pair(root, "05_ok", _solid((255, 255, 0)), "last")
    _write_pair(root, ".hidden", _solid((9, 9, 9)), "hidden files are ignored")

    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        src = ImageTextFolderSource(root, image_size=S)
    assert src.skipped == _zero_skips(missing_caption=1, empty_caption=1, unreadable_caption=1)
    assert [src[i]["caption"] for i in range(len(src))] == ["first", "last"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 3 of 5" in warnings[0].getMessage()


# ---------------------------------------------------------------------------
# ImageTextFolderSource: JSONL
# ---------------------------------------------------------------------------


def test_jsonl_source_policy(tmp_path, caplog):
    img_dir = tmp_path / "imgs"
    red = _write_pair(img_dir, "red", _solid((255, 0, 0), (30, 20)), None)
    _write_pair(img_dir, "green", _solid((0, 255, 0), (20, 30), "RGB"), None, ext=".jpg", quality=95)
    abs_blue = _write_pair(tmp_path / "elsewhere", "blue", _solid((0, 0, 255)), None)
    lines = [
        json.dumps({"image": "imgs/red.png", "caption": "  red  "}),  # ok (relative)
        "{not json",  # malformed
        "",  # blank line: ignored, not counted
        json.dumps(["imgs/red.png", "a list"]),  # malformed (not an object)
        json.dumps({"caption": "no image key"}),  # malformed
        json.dumps({"image": "imgs/red.png", "caption": 3}),  # malformed (caption not str)
        json.dumps({"image": "imgs/red.png"}),  # missing caption
        json.dumps({"image": "imgs/red.png", "caption": None}),  # missing caption
        json.dumps({"image": "imgs/red.png", "caption": " \n "}),  # empty caption
        json.dumps({"image": "imgs/nope.png", "caption": "gone"}),  # missing image
        json.dumps({"image": "imgs/green.jpg", "caption": "green", "extra": 1}),  # ok
        json.dumps({"image": abs_blue, "caption": "blue\n"}),  # ok (absolute)
    ]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        src = make_source("folder", path=str(jsonl), image_size=S)
    assert isinstance(src, ImageTextFolderSource)
    assert src.skipped == _zero_skips(malformed_line=4, missing_caption=2, empty_caption=1, missing_image=1)
    assert len(src) == 3
    got = [src[i] for i in range(3)]
    assert [g["caption"] for g in got] == ["red", "green", "blue"]
    assert _close(got[0]["image"], (255, 0, 0), tol=2)
    assert _close(got[1]["image"], (0, 255, 0), tol=4)
    assert _close(got[2]["image"], (0, 0, 255), tol=2)
    assert os.path.samefile(src._records[0][0], red)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 8 of 11" in warnings[0].getMessage()


# ---------------------------------------------------------------------------
# Corrupt images at read time
# ---------------------------------------------------------------------------


def test_corrupt_image_is_substituted_by_next_record(tmp_path, caplog):
    root = tmp_path / "data"
    _write_pair(root, "0", _solid((255, 0, 0)), "zero")
    (root / "1.png").write_bytes(b"this is not a png at all" * 10)
    (root / "1.txt").write_text("one")
    _write_pair(root, "2", _solid((0, 255, 0)), "two")
    # A truncated PNG (valid header, cut short) in the last slot: wraps to record 0.
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "3.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "3.txt").write_text("three")

    src = ImageTextFolderSource(root, image_size=S)
    assert len(src) == 4  # corrupt files are not detected at construction
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        one = src[1]
        again = src[1]
        three = src[3]
    assert one["caption"] == "two" and _close(one["image"], (0, 255, 0), tol=2)
    assert again["caption"] == "two" and np.array_equal(again["image"], one["image"])
    assert three["caption"] == "zero" and _close(three["image"], (255, 0, 0), tol=2)
    assert src[0]["caption"] == "zero" and src[2]["caption"] == "two"
    assert src.num_substituted == 3
    assert sorted(src.unreadable) == [f"image {root / '1.png'}", f"image {root / '3.png'}"]
    bad_logs = [r for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(bad_logs) == 2  # once per bad file, not once per read


def test_known_bad_images_are_not_decoded_again(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _write_pair(root, "0", _solid((255, 0, 0)), "zero")
    (root / "1.png").write_bytes(b"garbage")
    (root / "1.txt").write_text("one")
    src = ImageTextFolderSource(root, image_size=S)
    calls = []
    real = decoding.load_image
    monkeypatch.setattr(decoding, "load_image", lambda p, s: calls.append(os.path.basename(p)) or real(p, s))
    for _ in range(3):
        assert src[1]["caption"] == "zero"
    assert calls == ["1.png", "0.png", "0.png", "0.png"]
    assert src.num_substituted == 3


def test_bad_file_listed_twice_is_logged_once(tmp_path, caplog):
    _write_pair(tmp_path, "ok", _solid((0, 0, 255)), None)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    lines = [{"image": "bad.png", "caption": "a"}, {"image": "bad.png", "caption": "b"}, {"image": "ok.png", "caption": "c"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    src = ImageTextFolderSource(tmp_path / "d.jsonl", image_size=S)
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        assert [src[i]["caption"] for i in range(3)] == ["c", "c", "c"]
    assert sum("unreadable image" in r.getMessage() for r in caplog.records) == 1
    assert list(src.unreadable) == [f"image {tmp_path / 'bad.png'}"]


def test_all_images_corrupt_raises_clear_error_on_read(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(b"garbage")
        (root / f"{i}.txt").write_text(f"caption {i}")
    src = ImageTextFolderSource(root, image_size=S)
    with pytest.raises(RuntimeError, match=r"3 consecutive records starting at index 0 are unreadable.*0\.jpg"):
        src[0]


# ---------------------------------------------------------------------------
# Construction errors, pickling, factory
# ---------------------------------------------------------------------------


def test_clear_errors(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match="does_not_exist.*does not exist"):
        ImageTextFolderSource(missing, image_size=S)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no usable image-caption records in folder .*empty.*no image files"):
        ImageTextFolderSource(empty, image_size=S)

    all_bad = tmp_path / "all_bad"
    _write_pair(all_bad, "a", _solid((1, 2, 3)), "   ")
    _write_pair(all_bad, "b", _solid((1, 2, 3)), None)
    with pytest.raises(ValueError, match=r"all_bad.*all 2 records were dropped.*missing_caption=1.*empty_caption=1"):
        ImageTextFolderSource(all_bad, image_size=S)

    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text("nope\n[1]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*malformed_line=2"):
        ImageTextFolderSource(jsonl, image_size=S)

    other = tmp_path / "data.csv"
    other.write_text("image,caption\n")
    with pytest.raises(ValueError, match="not a .jsonl file"):
        ImageTextFolderSource(other, image_size=S)

    with pytest.raises(ValueError, match="image_size must be positive"):
        ImageTextFolderSource(all_bad, image_size=0)


def test_folder_source_pickles_and_works_with_grain(tmp_path):
    import grain  # a dependency: its absence is a failure, not a skip
    root = tmp_path / "data"
    for i in range(3):
        _write_pair(root, f"{i}", _solid((i * 80, 0, 0)), f"c{i}")
    src = ImageTextFolderSource(root, image_size=S)
    clone = pickle.loads(pickle.dumps(src))
    for i in range(3):
        assert clone[i]["caption"] == src[i]["caption"]
        assert np.array_equal(clone[i]["image"], src[i]["image"])
    ds = grain.MapDataset.source(src)
    assert len(ds) == 3 and ds[2]["caption"] == "c2"


def test_make_source_registry():
    assert set(SOURCES) >= {"folder", "tfds"}
    assert SOURCES["folder"] is ImageTextFolderSource and callable(SOURCES["tfds"])
    with pytest.raises(ValueError, match=r"Unknown data source kind 'nope'; valid kinds: .*folder.*tfds"):
        make_source("nope", path="x")


def test_importing_sources_does_not_load_tfds():
    code = (
        "import sys, jvlm.data.sources; "
        "print([m for m in ('jvlm.data.tfds_source', 'tensorflow_datasets') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_contrastive_run_reads_a_users_jsonl_through_one_source(tmp_path, caplog):
    """The tokenizer pass (setup) and the training loader share the source: its drop warning and its
    unreadable-image warning each appear once per run, with the right count."""
    import jax

    from jvlm.config import load_config
    from jvlm.train import loop

    lines = []
    for i in range(24):
        _write_pair(tmp_path, str(i), _solid((10 * i, 0, 0)), None)
        lines.append({"image": f"{i}.png", "caption": f"picture number {i}"})
    (tmp_path / "bad.png").write_bytes(b"garbage")
    lines += [{"image": "bad.png", "caption": "unreadable, substituted"},
              {"image": "missing.png", "caption": "dropped and counted"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = load_config("configs/siglip_shapes.py:tiny", ["--config.data.source=folder", "--config.data.vocab_size=64",
                                                         f"--config.data.path={tmp_path / 'data.jsonl'}"])
    task, _ = loop.build(cfg, str(tmp_path / "run"), devices=jax.devices()[:1])
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        task.setup()  # trains the tokenizer on every caption: reads every record, the bad image too
        loader = task.train_loader(0, (0, cfg.batch_size))
        for _ in range(2):  # 32 positions: every record of the first epoch
            next(loader)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("dropped 1 of 26 records (missing_image=1); kept 25" in m for m in messages) == 1, messages
    assert sum("unreadable image" in m and "bad.png" in m for m in messages) == 1, messages


# ---------------------------------------------------------------------------
# TfdsSource (built locally into tmp, without TensorFlow)
# ---------------------------------------------------------------------------

_N_TRAIN = 4
_LABEL_NAMES = ["golden_retriever", "tabby_cat"]


def _png_bytes(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _color(i):
    return (40 * i + 20, 255 - 40 * i, 100)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """Builds `jvlm_tiny_caps` (array_record) with a builder that needs no TF.

    Images are passed to `tfds.features.Image` as *encoded bytes*: passing numpy
    arrays would make TFDS call `tf.image.encode_png` (needs TensorFlow).
    """
    import tensorflow_datasets as tfds  # a dependency, as grain
    data_dir = tmp_path_factory.mktemp("tfds")

    class JvlmTinyCaps(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "gray": tfds.features.Image(shape=(None, None, 1)),
                        "pixels": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
                        "caption": tfds.features.Text(),
                        "captions": tfds.features.Sequence(tfds.features.Text()),
                        "label": tfds.features.ClassLabel(names=_LABEL_NAMES),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(False), "corrupt": self._generate_examples(True)}

        def _generate_examples(self, corrupt):
            n = 3 if corrupt else _N_TRAIN
            for i in range(n):
                rgb = np.empty((12 + 4 * i, 20, 3), np.uint8)  # non-square, varying sizes
                rgb[:] = _color(i)
                image = _png_bytes(rgb) if i % 2 == 0 else _png_bytes(rgb, "JPEG")
                if corrupt and i == 1:
                    image = b"\x89PNG\r\n\x1a\n definitely not a real png"
                yield i, {
                    "image": image,
                    "gray": _png_bytes(np.full((10, 14), 10 * i, np.uint8)),
                    "pixels": np.full((6, 9, 3), 7 * i, np.uint8),
                    "caption": f"  caption {i} \n",
                    "captions": [f"first {i}", f"second {i}"],
                    "label": i % 2,
                }

    builder = JvlmTinyCaps(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return str(data_dir)


def _index_of_caption(src, i):
    return next(j for j in range(len(src)) if src[j]["caption"] == f"caption {i}")


def test_tfds_source_reads_images_and_captions(tfds_dir):
    src = TfdsSource("jvlm_tiny_caps", "train", S, data_dir=tfds_dir)
    assert len(src) == _N_TRAIN
    assert "jvlm_tiny_caps" in repr(src) and "num_records=4" in repr(src)
    seen = set()
    for j in range(len(src)):
        ex = src[j]
        assert set(ex) == {"image", "caption"}
        assert ex["image"].shape == (S, S, 3) and ex["image"].dtype == np.uint8
        i = int(ex["caption"].split()[-1])  # captions are stripped: "caption {i}"
        assert ex["caption"] == f"caption {i}"
        assert _close(ex["image"], _color(i), tol=4), (i, ex["image"][0, 0])
        seen.add(i)
    assert seen == set(range(_N_TRAIN))


def test_tfds_source_labels_and_label_captions(tfds_dir):
    src = make_source("tfds", name="jvlm_tiny_caps", split="train", image_size=S, data_dir=tfds_dir,
                      caption_key=None, label_key="label")
    assert isinstance(src, TfdsSource)
    by_label = {}
    for j in range(len(src)):
        ex = src[j]
        assert set(ex) == {"image", "caption", "label"}
        assert isinstance(ex["label"], np.int32)
        by_label[int(ex["label"])] = ex["caption"]
    assert by_label == {0: "a photo of a golden retriever", 1: "a photo of a tabby cat"}

    both = TfdsSource("jvlm_tiny_caps", "train", S, data_dir=tfds_dir, label_key="label")
    ex = both[_index_of_caption(both, 3)]
    assert ex["caption"] == "caption 3" and ex["label"] == 1


def test_tfds_source_other_image_and_caption_features(tfds_dir):
    # Grayscale Image feature (encoded bytes, 1 channel) and a Tensor feature that
    # TFDS decodes to a numpy array; caption from a Sequence(Text) -> first caption.
    gray = TfdsSource("jvlm_tiny_caps", "train", S, data_dir=tfds_dir, image_key="gray", caption_key="captions")
    pixels = TfdsSource("jvlm_tiny_caps", "train", S, data_dir=tfds_dir, image_key="pixels", caption_key="captions")
    for j in range(len(gray)):
        g, p = gray[j], pixels[j]
        i = int(g["caption"].split()[-1])
        assert g["caption"] == f"first {i}" == p["caption"]
        assert g["image"].shape == p["image"].shape == (S, S, 3)
        assert _close(g["image"], 10 * i, tol=0) and _close(p["image"], 7 * i, tol=0)


def test_tfds_source_substitutes_corrupt_image(tfds_dir, caplog):
    src = TfdsSource("jvlm_tiny_caps", "corrupt", S, data_dir=tfds_dir)
    with caplog.at_level(logging.WARNING, logger=tfds_source.__name__):
        out = [src[j] for j in range(len(src))]  # must not raise
    # Reading another image feature of the same records is unaffected by the
    # corrupt (unused, never decoded) "image" feature.
    gray = TfdsSource("jvlm_tiny_caps", "corrupt", S, data_dir=tfds_dir, image_key="gray")
    bad = _index_of_caption(gray, 1)
    assert gray.num_substituted == 0 and not gray.unreadable
    nxt = (bad + 1) % len(src)
    assert out[bad]["caption"] == out[nxt]["caption"] != "caption 1"
    assert np.array_equal(out[bad]["image"], out[nxt]["image"])
    assert src.num_substituted == 1 and list(src.unreadable) == [f"record {bad}"]
    assert sum(f"unreadable record {bad}" in r.getMessage() for r in caplog.records) == 1


def test_tfds_source_substitutes_records_tfds_fails_to_read(tfds_dir):
    src = TfdsSource("jvlm_tiny_caps", "train", S, data_dir=tfds_dir)
    real = src._source()

    class Flaky:  # stands in for a record TFDS cannot parse/decode
        def __len__(self):
            return len(real)

        def __getitem__(self, j):
            if j == 2:
                raise ValueError("cannot parse record")
            return real[j]

    src._ds = Flaky()
    assert src[2]["caption"] == real[3]["caption"].decode().strip()
    assert src.unreadable == {"record 2": "ValueError: cannot parse record"}


def test_tfds_source_pickles_and_reopens(tfds_dir):
    src = TfdsSource("jvlm_tiny_caps", "train", S, data_dir=tfds_dir, label_key="label")
    clone = pickle.loads(pickle.dumps(src))
    assert clone._ds is None  # re-opened lazily in the worker
    assert len(clone) == len(src)
    for j in range(len(src)):
        a, b = src[j], clone[j]
        assert a["caption"] == b["caption"] and a["label"] == b["label"]
        assert np.array_equal(a["image"], b["image"])


def test_tfds_source_clear_errors(tfds_dir, tmp_path):
    # Registered dataset, not prepared in data_dir: never downloads, says how to build.
    with pytest.raises(TfdsNotPreparedError, match=r"'mnist' is not prepared .*tfds build mnist") as e:
        TfdsSource("mnist", "train", S, data_dir=str(tmp_path / "empty"))
    assert isinstance(e.value, FileNotFoundError)
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").rglob("*.array_record*"))

    with pytest.raises(TfdsNotPreparedError, match=r"'no_such_dataset_xyz' was not found .*tfds build"):
        TfdsSource("no_such_dataset_xyz", "train", S, data_dir=str(tmp_path))

    # Prepared only as TFRecord (simulated by editing the metadata of a copy).
    copy_dir = tmp_path / "tfrec"
    shutil.copytree(tfds_dir, copy_dir)
    info_path = copy_dir / "jvlm_tiny_caps" / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(TfdsNotPreparedError, match=r"prepared as tfrecord.*array_record"):
        TfdsSource("jvlm_tiny_caps", "train", S, data_dir=str(copy_dir))

    with pytest.raises(ValueError, match=r"image_key='img' is not a feature"):
        TfdsSource("jvlm_tiny_caps", "train", S, data_dir=tfds_dir, image_key="img")
    with pytest.raises(ValueError, match="give caption_key, or label_key"):
        TfdsSource("jvlm_tiny_caps", "train", S, data_dir=tfds_dir, caption_key=None)
    with pytest.raises(ValueError, match="must be a ClassLabel"):
        TfdsSource("jvlm_tiny_caps", "train", S, data_dir=tfds_dir, caption_key=None, label_key="caption")
