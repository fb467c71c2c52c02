"""shapes: an embedded, procedurally generated captioned image dataset.

Every example is a pure function of (seed, split, index): example `idx` of `split` is drawn
from `np.random.default_rng((seed, SPLIT_ID[split], idx))` alone, so nothing is downloaded and
there is no global state. Images show one to three solid, anti-aliased objects (8 colours x
6 shapes x 3 sizes) on muted, smoothly textured backgrounds (gradients, soft stripes, low
frequency noise; never per-pixel noise). Captions name every object's size, colour and shape
and the relative position of objects, which is true for the rendered image: any two objects
are separated along their dominant displacement axis (their bounding squares do not overlap
on it), and that axis picks left/right/above/below.

Splits: "train", "validation", "test" (same distribution, disjoint seeds) never contain an
object whose (colour, shape) is in `UNSEEN_COMBOS`; "zeroshot_seen" and "zeroshot_unseen" hold
single objects of seen resp. unseen combinations, cycling through the classes by index
(balanced), for zero-shot classification with `class_names()`.

The scene (layout and caption) is sampled in resolution-independent coordinates before any
rendering, so the same example has the same layout and caption at every image size, and
`ShapesSource.caption(idx)` is cheap (no rendering).
"""

from __future__ import annotations

import operator
import re

import numpy as np

from jvlm.data import shapes_render

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (255, 125, 0), "yellow": (245, 215, 20), "green": (30, 170, 50),
    "cyan": (0, 200, 220), "blue": (30, 70, 230), "purple": (140, 50, 200), "pink": (255, 105, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_EXTENT = {"small": 0.10, "medium": 0.14, "large": 0.19}  # half extent, fraction of the side
# One held-out shape per colour (every shape is held out once or twice), so each colour still
# occurs with 4-5 shapes in training and each shape with 6-7 colours.
UNSEEN_COMBOS: frozenset[tuple[str, str]] = frozenset({
    ("red", "triangle"), ("orange", "cross"), ("yellow", "circle"), ("green", "star"),
    ("cyan", "diamond"), ("blue", "square"), ("purple", "triangle"), ("pink", "star"),
})
SPLITS: tuple[str, ...] = ("train", "validation", "test", "zeroshot_seen", "zeroshot_unseen")
SPLIT_ID = {name: i for i, name in enumerate(SPLITS)}
DEFAULT_NUM_EXAMPLES = {"train": 100_000, "validation": 2_000, "test": 2_000,
                        "zeroshot_seen": 2_000, "zeroshot_unseen": 2_000}
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, MAX_OBJECTS = 32, 256, 3

_COLOR_NAMES = tuple(COLORS)
_EDGE_MARGIN = 0.02  # objects keep this distance from the image border
_GAP = 0.03  # minimum gap between bounding squares along the dominant axis
_DOMINANCE = 1.25  # dominant |displacement| >= this * the other one, so relations are clear-cut
_PLACEMENT_TRIES = 64  # candidate positions per object; an object with no valid one is dropped


def class_names() -> list[str]:
    """All colour x shape class names ("red circle", ...), colour-major."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def class_index(color: str, shape: str) -> int:
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown class ({color!r}, {shape!r}); colour must be one of "
                         f"{_COLOR_NAMES} and shape one of {SHAPES}")
    return _COLOR_NAMES.index(color) * len(SHAPES) + SHAPES.index(shape)


def unseen_class_indices() -> list[int]:
    return sorted(class_index(c, s) for c, s in UNSEEN_COMBOS)


def seen_class_indices() -> list[int]:
    unseen = set(unseen_class_indices())
    return [i for i in range(len(COLORS) * len(SHAPES)) if i not in unseen]


# ---------------------------------------------------------------------------------------------
# Scene sampling. An object is (colour index, shape index, size index, centre x, centre y).

def relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where centre `a` is relative to centre `b`: "left", "right", "above" or "below"."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def _place(rng: np.random.Generator, combos: list[tuple[int, int, int]]) -> list[tuple]:
    """Places objects in order by vectorised rejection sampling, dropping any that do not fit."""
    placed: list[tuple] = []
    for ci, si, zi in combos:
        r = SIZE_EXTENT[SIZES[zi]]
        lo, hi = r + _EDGE_MARGIN, 1.0 - r - _EDGE_MARGIN
        cand = rng.uniform(lo, hi, size=(_PLACEMENT_TRIES, 2))
        if placed:
            p = np.array([(o[3], o[4]) for o in placed])
            pr = np.array([SIZE_EXTENT[SIZES[o[2]]] for o in placed])
            d = np.abs(cand[:, None, :] - p[None, :, :])  # [tries, placed, 2]
            dom, other = d.max(-1), d.min(-1)
            ok = ((dom >= r + pr[None] + _GAP) & (dom >= _DOMINANCE * other)).all(-1)
        else:
            ok = np.ones(_PLACEMENT_TRIES, bool)
        if ok.any():
            x, y = cand[int(np.argmax(ok))]
            placed.append((ci, si, zi, float(x), float(y)))
    return placed


_SEEN_TRIPLES = [(ci, si, zi) for ci, c in enumerate(COLORS) for si, s in enumerate(SHAPES)
                 if (c, s) not in UNSEEN_COMBOS for zi in range(len(SIZES))]


def _sample_objects(rng: np.random.Generator, split: str, idx: int, max_objects: int) -> list[tuple]:
    if split.startswith("zeroshot"):
        classes = seen_class_indices() if split == "zeroshot_seen" else unseen_class_indices()
        ci, si = divmod(classes[idx % len(classes)], len(SHAPES))
        return _place(rng, [(ci, si, int(rng.integers(len(SIZES))))])
    n = int(rng.integers(1, max_objects + 1))
    # Distinct (colour, shape, size) triples, so every description in a caption is unambiguous.
    chosen = rng.choice(len(_SEEN_TRIPLES), size=n, replace=False)
    return _place(rng, [_SEEN_TRIPLES[k] for k in chosen])


# ---------------------------------------------------------------------------------------------
# Captions: lower-case letters, spaces and commas only. "left"/"right" are only ever used as
# positions, so mirroring an image can swap them (see `flip_horizontal`).

_REL_WORDS = {"left": ("to the left of", "left of"), "right": ("to the right of", "right of"),
              "above": ("above",), "below": ("below", "beneath")}
_BG_WORDS = {"gradient": ("on a gradient background", "on a smooth background"),
             "stripes": ("on a striped background", "on stripes"),
             "noise": ("on a cloudy background", "on a blotchy background")}
_PREFIXES = ("", "a picture of ", "an image of ", "there is ", "a drawing of ", "a rendering of ")
_COUNT_PREFIXES = ("", "a picture of ", "an image of ", "there are ", "a drawing of ")
_LOCATIONS = {("low", "low"): "in the top left corner", ("mid", "low"): "at the top",
              ("high", "low"): "in the top right corner", ("low", "mid"): "on the left",
              ("mid", "mid"): "in the center", ("high", "mid"): "on the right",
              ("low", "high"): "in the bottom left corner", ("mid", "high"): "at the bottom",
              ("high", "high"): "in the bottom right corner"}


def _band(v: float) -> str | None:
    return "low" if v < 0.35 else "high" if v > 0.65 else "mid" if 0.42 < v < 0.58 else None


def location_phrase(x: float, y: float) -> str | None:
    """Absolute location of a centre, or None when it is too close to a region boundary."""
    bx, by = _band(x), _band(y)
    return None if bx is None or by is None else _LOCATIONS[(bx, by)]


def describe(obj: tuple) -> str:
    return f"{SIZES[obj[2]]} {_COLOR_NAMES[obj[0]]} {SHAPES[obj[1]]}"


def render_caption(objects: list[tuple], background_kind: str, rng: np.random.Generator) -> str:
    """A caption naming every object (in order) and true relative positions between them."""
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    d = [describe(o) for o in objects]
    a = ["a " + s for s in d]  # sizes come first, so the article is always "a"
    rel = lambda i, j: pick(_REL_WORDS[relation(objects[i][3:], objects[j][3:])])  # noqa: E731
    bg = " " + pick(_BG_WORDS[background_kind]) if rng.random() < 0.3 else ""
    prefix = pick(_PREFIXES)
    if len(objects) == 1:
        loc = location_phrase(*objects[0][3:])
        loc = " " + loc if loc and rng.random() < 0.7 else ""
        return pick((f"{prefix}{a[0]}{loc}{bg}", f"{prefix}a single {d[0]}{loc}{bg}",
                     f"{prefix}one shape, {a[0]}{loc}", f"{a[0]} is{loc}" if loc else f"{a[0]}{bg}"))
    if len(objects) == 2:
        return pick((f"{prefix}{a[0]} {rel(0, 1)} {a[1]}{bg}", f"{a[0]} is {rel(0, 1)} {a[1]}",
                     f"{pick(_COUNT_PREFIXES)}two shapes, {a[0]} {rel(0, 1)} {a[1]}",
                     f"{prefix}{a[0]} and {a[1]}, the {d[0]} is {rel(0, 1)} the {d[1]}"))
    k = int(rng.integers(2))  # which of the first two objects the third one is related to
    return pick((f"{prefix}{a[0]} {rel(0, 1)} {a[1]}, and {a[2]} {rel(2, k)} the {d[k]}",
                 f"{prefix}{a[0]} {rel(0, 1)} {a[1]}, which is {rel(1, 2)} {a[2]}",
                 f"{a[0]} is {rel(0, 1)} {a[1]} and {rel(0, 2)} {a[2]}",
                 f"{pick(_COUNT_PREFIXES)}three shapes, {a[0]} {rel(0, 1)} {a[1]}, which is "
                 f"{rel(1, 2)} {a[2]}",
                 f"{prefix}{a[0]}, {a[1]} and {a[2]}, with the {d[0]} {rel(0, 1)} the {d[1]} and "
                 f"the {d[2]} {rel(2, k)} the {d[k]}"))


# ---------------------------------------------------------------------------------------------

class _IndexOutOfRange(IndexError, ValueError):
    """A ValueError as documented, and an IndexError so that plain iteration stops."""


class ShapesSource:
    """grain random-access data source of captioned shape images (see the module docstring).

    Each example is a dict of numpy values: "image" uint8 [H, W, 3], "caption" str, "label"
    int32 (class index of the first object), "num_objects" int32, "obj_color"/"obj_shape"/
    "obj_size" int32 [3] (indices into COLORS/SHAPES/SIZES, -1 padded) and "obj_center"
    float32 [3, 2] ((x, y) in [0, 1], -1 padded). Objects are listed in caption order.
    """

    def __init__(self, split: str = "train", image_size: int = 64, seed: int = 0,
                 num_examples: int | None = None, max_objects: int = 3):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; split must be one of {SPLITS}")
        if not (isinstance(image_size, (int, np.integer))
                and MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
            raise ValueError(f"image_size must be an int in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], "
                             f"got {image_size!r}")
        if not isinstance(max_objects, (int, np.integer)) or not 1 <= max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        num_examples = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
        if not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
            raise ValueError(f"num_examples must be a non-negative int or None, got {num_examples!r}")
        self.split, self.image_size, self.seed = split, int(image_size), int(seed)
        self.num_examples, self.max_objects = int(num_examples), int(max_objects)

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (f"ShapesSource(split={self.split!r}, image_size={self.image_size}, seed={self.seed}, "
                f"num_examples={self.num_examples}, max_objects={self.max_objects})")

    def _scene(self, idx) -> tuple[list[tuple], dict, str]:
        try:
            i = operator.index(idx)
        except TypeError:
            raise TypeError(f"index must be an int, got {type(idx).__name__}") from None
        if not 0 <= i < self.num_examples:
            raise _IndexOutOfRange(f"index {i} out of range for {self!r}; valid indices are "
                                   f"0..{self.num_examples - 1} (raise num_examples for more)")
        rng = np.random.default_rng((self.seed, SPLIT_ID[self.split], i))
        objects = _sample_objects(rng, self.split, i, self.max_objects)
        background = shapes_render.sample_background(rng)
        return objects, background, render_caption(objects, background["kind"], rng)

    def caption(self, idx: int) -> str:
        """The caption of example `idx`, without rendering the image."""
        return self._scene(idx)[2]

    def __getitem__(self, idx) -> dict:
        objects, background, caption = self._scene(idx)
        drawn = [(SHAPES[si], COLORS[_COLOR_NAMES[ci]], x, y, SIZE_EXTENT[SIZES[zi]])
                 for ci, si, zi, x, y in objects]
        pad = MAX_OBJECTS - len(objects)
        column = lambda k: np.array([o[k] for o in objects] + [-1] * pad, np.int32)  # noqa: E731
        return {
            "image": shapes_render.render(self.image_size, background, drawn),
            "caption": caption,
            "label": np.int32(objects[0][0] * len(SHAPES) + objects[0][1]),
            "num_objects": np.int32(len(objects)),
            "obj_color": column(0), "obj_shape": column(1), "obj_size": column(2),
            "obj_center": np.array([o[3:] for o in objects] + [(-1.0, -1.0)] * pad, np.float32),
        }


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def flip_caption(caption: str) -> str:
    """Swaps the words "left" and "right" (every use of them in captions is positional)."""
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", caption)


def flip_horizontal(example: dict) -> dict:
    """Mirrors an example left-right, keeping its caption and object centres true.

    Works on single examples and on batches (image [..., H, W, 3]; caption str or array of str).
    """
    out = dict(example)
    out["image"] = np.ascontiguousarray(np.flip(np.asarray(example["image"]), axis=-2))
    if "caption" in example:
        cap = example["caption"]
        out["caption"] = (flip_caption(cap) if isinstance(cap, str)
                          else np.vectorize(flip_caption, otypes=[object])(cap))
    if "obj_center" in example:
        c = np.array(example["obj_center"], np.float32)
        valid = c[..., 0] >= 0  # padding rows are -1
        c[..., 0] = np.where(valid, 1.0 - c[..., 0], c[..., 0])
        out["obj_center"] = c
    return out
