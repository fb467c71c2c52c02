"""Tests for the procedural shapes dataset: determinism, captions true to the images, splits."""

import functools
import pickle
import re

import numpy as np
import pytest

from jvlm.data import shapes
from jvlm.data.shapes import (COLORS, SHAPES, SIZES, SPLITS, UNSEEN_COMBOS, ShapesSource, class_index,
                              class_names, flip_horizontal, seen_class_indices, unseen_class_indices)

COLOR_NAMES = list(COLORS)
REL = {"to the left of": "left", "left of": "left", "to the right of": "right", "right of": "right",
       "above": "above", "below": "below", "beneath": "below"}
TOKEN = re.compile(
    rf"\b(?P<desc>(?:{'|'.join(SIZES)}) (?:{'|'.join(COLORS)}) (?:{'|'.join(SHAPES)}))\b"
    rf"|\b(?P<rel>{'|'.join(sorted(REL, key=len, reverse=True))})\b")


@functools.lru_cache(maxsize=None)
def examples(split="train", size=64, n=300, seed=0):
    src = ShapesSource(split, image_size=size, seed=seed)
    return tuple(src[i] for i in range(n))


def descriptions(ex):
    n = int(ex["num_objects"])
    return [f"{SIZES[z]} {COLOR_NAMES[c]} {SHAPES[s]}"
            for c, s, z in zip(ex["obj_color"][:n], ex["obj_shape"][:n], ex["obj_size"][:n])]


def parse_relations(caption):
    """(subject description, relation, object description) triples stated in a caption.

    The subject of a relation is the last description before it, except right after "and"
    ("X is left of Y and above Z"), where it is the subject of the previous relation.
    """
    rels, pending, last_desc, last_subject = [], None, None, None
    for m in TOKEN.finditer(caption):
        if m.group("desc"):
            if pending:
                rels.append((*pending, m.group("desc")))
                pending = None
            last_desc = m.group("desc")
        else:
            assert pending is None, caption
            subject = last_subject if caption[: m.start()].rstrip().endswith(" and") else last_desc
            assert subject is not None, caption
            pending, last_subject = (subject, REL[m.group("rel")]), subject
    assert pending is None, caption
    return rels


def check_relations(ex, caption):
    descs = descriptions(ex)
    n = len(descs)
    extent = [shapes.SIZE_EXTENT[SIZES[z]] for z in ex["obj_size"][:n]]
    rels = parse_relations(caption)
    if n > 1:
        assert len(rels) >= n - 1, caption
        assert {d for r in rels for d in (r[0], r[2])} == set(descs), caption
    for subj, rel, obj in rels:
        i, j = descs.index(subj), descs.index(obj)
        (xi, yi), (xj, yj) = ex["obj_center"][i], ex["obj_center"][j]
        gap = extent[i] + extent[j]  # the two objects' bounding squares are disjoint on that axis
        ok = {"left": xj - xi >= gap, "right": xi - xj >= gap, "above": yj - yi >= gap,
              "below": yi - yj >= gap}[rel]
        assert ok, (caption, subj, rel, obj, ex["obj_center"])
    return rels


def check_location(ex, caption):
    """Location words of a single-object caption hold for its centre; returns how many."""
    if ex["num_objects"] != 1:
        return 0
    x, y = ex["obj_center"][0]
    rules = {"top": y < 0.4, "bottom": y > 0.6, "left": x < 0.4, "right": x > 0.6,
             "center": abs(x - 0.5) < 0.1 and abs(y - 0.5) < 0.1}
    found = [word for word in rules if re.search(rf"\b{word}\b", caption)]
    assert all(rules[word] for word in found), (caption, x, y)
    return len(found)


def check_caption(ex, caption):
    check_relations(ex, caption)
    check_location(ex, caption)


def test_class_names_and_indices():
    names = class_names()
    assert len(names) == len(COLORS) * len(SHAPES) == len(set(names))
    assert names[0] == "red circle" and names[class_index("blue", "star")] == "blue star"
    seen, unseen = seen_class_indices(), unseen_class_indices()
    assert sorted(seen + unseen) == list(range(len(names)))
    assert {names[i] for i in unseen} == {f"{c} {s}" for c, s in UNSEEN_COMBOS}
    assert 6 <= len(UNSEEN_COMBOS) <= 8
    # every colour and every shape still occurs in training
    assert {names[i].split()[0] for i in seen} == set(COLORS)
    assert {names[i].split()[1] for i in seen} == set(SHAPES)
    assert len(COLORS) >= 8 and len(SHAPES) >= 6 and len(SIZES) == 3
    with pytest.raises(ValueError, match="unknown class"):
        class_index("grey", "circle")


def test_deterministic():
    a, b = ShapesSource("train", 64, seed=3), ShapesSource("train", 64, seed=3)
    for i in (0, 7, 99_999):
        ea, eb = a[i], b[i]
        assert ea["image"].tobytes() == eb["image"].tobytes() and ea["caption"] == eb["caption"]
        for k in ea:
            np.testing.assert_array_equal(ea[k], eb[k])
    assert a[0]["image"].tobytes() != a[1]["image"].tobytes()
    assert a[0]["image"].tobytes() != ShapesSource("train", 64, seed=4)[0]["image"].tobytes()
    assert a[5]["image"].tobytes() != ShapesSource("validation", 64, seed=3)[5]["image"].tobytes()
    assert a[np.int64(7)]["caption"] == a[7]["caption"] == a.caption(7)
    c = pickle.loads(pickle.dumps(a))
    assert repr(c) == repr(a) and c[11]["image"].tobytes() == a[11]["image"].tobytes()


def test_layout_is_resolution_independent():
    small, large = ShapesSource("test", 32), ShapesSource("test", 128)
    for i in range(20):
        es, el = small[i], large[i]
        assert es["caption"] == el["caption"]
        np.testing.assert_array_equal(es["obj_center"], el["obj_center"])


@pytest.mark.parametrize("size", [32, 64, 256])
def test_dtypes_and_shapes(size):
    ex = ShapesSource("train", size)[1]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (size, size, 3)
    assert isinstance(ex["caption"], str)
    for k in ("label", "num_objects"):
        assert ex[k].dtype == np.int32 and ex[k].shape == ()
    for k in ("obj_color", "obj_shape", "obj_size"):
        assert ex[k].dtype == np.int32 and ex[k].shape == (3,)
    assert ex["obj_center"].dtype == np.float32 and ex["obj_center"].shape == (3, 2)
    n = int(ex["num_objects"])
    assert (ex["obj_color"][n:] == -1).all() and (ex["obj_center"][n:] == -1).all()
    assert ((ex["obj_center"][:n] > 0) & (ex["obj_center"][:n] < 1)).all()
    assert ex["label"] == class_index(COLOR_NAMES[ex["obj_color"][0]], SHAPES[ex["obj_shape"][0]])
    assert len(ShapesSource("train")) == 100_000 and len(ShapesSource("zeroshot_unseen")) == 2_000


def test_object_counts():
    counts = np.bincount([int(e["num_objects"]) for e in examples()], minlength=4)
    assert counts[0] == 0 and (counts[1:] > 50).all(), counts
    src = ShapesSource("train", 32, max_objects=1)
    assert all(src[i]["num_objects"] == 1 for i in range(50))


@pytest.mark.parametrize("split", ["train", "validation"])
def test_unseen_combos_never_in_training_splits(split):
    src = ShapesSource(split, 32)
    seen_pairs = set()
    for i in range(1500):
        ex = src[i]
        n = int(ex["num_objects"])
        pairs = {(COLOR_NAMES[c], SHAPES[s]) for c, s in zip(ex["obj_color"][:n], ex["obj_shape"][:n])}
        assert not pairs & UNSEEN_COMBOS, (i, pairs)
        seen_pairs |= pairs
    assert len(seen_pairs) == len(COLORS) * len(SHAPES) - len(UNSEEN_COMBOS)


@pytest.mark.parametrize("split,classes", [("zeroshot_unseen", unseen_class_indices),
                                           ("zeroshot_seen", seen_class_indices)])
def test_zeroshot_splits(split, classes):
    exs = examples(split, 32, 2 * len(classes()))
    labels = [int(e["label"]) for e in exs]
    assert sorted(set(labels)) == classes() and all(labels.count(c) == 2 for c in classes())
    names = class_names()
    for e in exs:
        assert e["num_objects"] == 1
        assert names[e["label"]] in e["caption"]


def test_captions_name_every_object_and_are_plain():
    for ex in examples():
        cap = ex["caption"]
        assert re.fullmatch(r"[a-z]+(,? [a-z]+)*", cap), cap
        descs = descriptions(ex)
        assert len(set(descs)) == len(descs)
        for d in descs:
            assert d in cap, (d, cap)
        count = {"two shapes": 2, "three shapes": 3, "one shape": 1, "a single": 1}
        for words, n in count.items():
            if words in cap:
                assert ex["num_objects"] == n, cap


def test_relations_match_object_centres():
    num_rels = sum(len(check_relations(ex, ex["caption"])) for ex in examples())
    assert num_rels > 200
    # the parser finds wrong statements: swapping left/right (or above/below) must break them
    broken = 0
    for ex in examples()[:100]:
        cap = ex["caption"]
        swapped = shapes.flip_caption(cap) if "left" in cap or "right" in cap else \
            re.sub(r"\b(above|below|beneath)\b", lambda m: "below" if m.group(1) == "above" else "above", cap)
        if swapped != cap:
            with pytest.raises(AssertionError):
                check_caption(ex, swapped)
            broken += 1
    assert broken > 30


def test_single_object_locations():
    checked = sum(check_location(ex, ex["caption"]) for ex in examples() + examples("zeroshot_seen", 64, 200))
    assert checked > 40


def test_objects_are_drawn_where_and_how_the_metadata_says():
    for ex in examples("train", 64, 100):
        img, n = ex["image"], int(ex["num_objects"])
        centres, extent = ex["obj_center"][:n], [shapes.SIZE_EXTENT[SIZES[z]] for z in ex["obj_size"][:n]]
        for k in range(n):
            x, y = centres[k]
            pixel = img[int(y * 64), int(x * 64)].astype(int)
            np.testing.assert_allclose(pixel, COLORS[COLOR_NAMES[ex["obj_color"][k]]], atol=2)
            for m in range(k):  # bounding squares never overlap
                assert np.abs(centres[k] - centres[m]).max() >= extent[k] + extent[m]


def test_rendered_sizes_match_size_words():
    areas = {}  # (shape, size) -> solid pixel areas of single objects at 64 px
    for ex in examples("zeroshot_seen", 64, 400):
        rgb = np.array(COLORS[COLOR_NAMES[ex["obj_color"][0]]])
        area = int((np.abs(ex["image"].astype(int) - rgb).max(-1) <= 3).sum())
        z = SIZES[ex["obj_size"][0]]
        ratio = area / (shapes.SIZE_EXTENT[z] * 64) ** 2  # between a star's and a circle's
        assert 0.7 < ratio < 3.3, (class_names()[ex["label"]], z, area)
        areas.setdefault((SHAPES[ex["obj_shape"][0]], z), []).append(area)
    for shape in SHAPES:
        small, medium, large = (np.median(areas[(shape, z)]) for z in SIZES)
        assert 1.4 * small < medium and 1.4 * medium < large, (shape, small, medium, large)


def test_colours_are_distinct():
    rgb = np.array(list(COLORS.values()), float)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 1e9 * np.eye(len(rgb))
    assert dist.min() > 80


def test_images_are_smooth_not_per_pixel_noise():
    def roughness(img):
        return np.abs(np.diff(img.astype(np.int16), axis=1)).mean()

    imgs = [e["image"] for e in examples()]
    mean = np.mean([roughness(im) for im in imgs])
    assert mean < 4.0, mean
    noise = np.random.default_rng(0).integers(-8, 9, imgs[0].shape)
    noisy = np.mean([roughness(np.clip(im + noise, 0, 255)) for im in imgs])
    assert noisy > 4.0  # the threshold would catch per-pixel noise of +-8 levels
    assert np.mean([im.std() for im in imgs]) > 15  # and images are not flat either


def test_flip_horizontal():
    assert shapes.flip_caption("a large red circle in the top left corner") == \
        "a large red circle in the top right corner"
    assert shapes.flip_caption("a small red star to the right of a large blue cross") == \
        "a small red star to the left of a large blue cross"
    for ex in examples()[:100]:
        f = flip_horizontal(ex)
        np.testing.assert_array_equal(f["image"], ex["image"][:, ::-1])
        n = int(ex["num_objects"])
        np.testing.assert_allclose(f["obj_center"][:n, 0], 1 - ex["obj_center"][:n, 0], atol=1e-6)
        np.testing.assert_array_equal(f["obj_center"][:, 1], ex["obj_center"][:, 1])
        assert (f["obj_center"][n:] == -1).all()
        if "left" in ex["caption"] or "right" in ex["caption"]:
            assert f["caption"] != ex["caption"]
        check_caption(f, f["caption"])
        g = flip_horizontal(f)
        assert g["caption"] == ex["caption"] and g["image"].tobytes() == ex["image"].tobytes()
        assert ex["label"] == f["label"]
    batch = {"image": np.stack([examples()[0]["image"]] * 2), "caption": np.array(["left", "top right"])}
    fb = flip_horizontal(batch)
    assert list(fb["caption"]) == ["right", "top left"]
    np.testing.assert_array_equal(fb["image"], batch["image"][:, :, ::-1])


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"split must be one of .*zeroshot_unseen"):
        ShapesSource("training")
    for size in (16, 257, 64.0):
        with pytest.raises(ValueError, match=r"image_size must be an int in \[32, 256\]"):
            ShapesSource("train", size)
    for k in (0, 4):
        with pytest.raises(ValueError, match="max_objects must be 1, 2 or 3"):
            ShapesSource("train", max_objects=k)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        ShapesSource("train", seed=-1)
    src = ShapesSource("validation", 32, num_examples=3)
    for i in (3, -1):
        with pytest.raises(ValueError, match=r"index .* out of range .* 0\.\.2"):
            src[i]
    assert len(list(src)) == 3  # plain iteration stops at the end (IndexError)
    with pytest.raises(TypeError, match="index must be an int"):
        src[1.5]
    assert set(SPLITS) == {"train", "validation", "test", "zeroshot_seen", "zeroshot_unseen"}


def test_works_as_grain_source():
    import grain  # a dependency (pyproject.toml): missing, the test fails rather than skips
    ds = grain.MapDataset.source(ShapesSource("train", 32, num_examples=8)).map(flip_horizontal)
    ex = ds[2]
    assert ex["image"].shape == (32, 32, 3)
    assert ex["caption"] == shapes.flip_caption(ShapesSource("train", 32).caption(2))
